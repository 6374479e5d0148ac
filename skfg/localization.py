"""``ObjectCropper``: ELoPE's lightweight localization module as a transformer (images -> crops).

elope.txt section 5: the mean over the channels of the last convolutional layer of a
trained classification model is a heat map of the object (by default joined by the
stage before's, ``teacher_map``, and by the ImageNet backbone's map, ``imagenet_map``).
A small network made of the first layers of that model, fed a 64 x 64 version of the
image, learns to predict that map (smooth L1 loss, the model frozen); the box is the
smallest rectangle around the pixels of the min-max normalised map that exceed ``tau``.
"""

import copy
import math
from collections import OrderedDict
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ._base import TorchStateMixin, atomic_fit, holdout_split, image_input_tags, resolve_device
from ._boxes import box_iou, check_tau, heatmap_to_box
from ._classifier import SMALL_SET_IMAGES, SMALL_SET_VALIDATION_FRACTION
from ._engine import cached_engine
from ._messages import warn
from ._training import eval_mode, fit_loop, make_generator, make_optimizer, make_scheduler
from .backbones import build_backbone, count_parameters, get_backbone_spec, state_fingerprint
from .extractor import CNNFeatureExtractor
from .images import ImageSource, Preprocessing, eval_transform, to_input
from .softmax import SoftmaxClassifier

__all__ = ["ObjectCropper", "box_iou", "heatmap_to_box"]

DEFAULT_TEACHER = "efficientnet_lite0"


# ---------------------------------------------------------------- modules
class _Student(nn.Module):
    """The localization module: the teacher's first stages, a 1x1 convolution to one
    channel, and a resize to the teacher's heat-map size ``(I, J)`` (section 5)."""

    def __init__(self, stages, in_channels, heatmap_shape):
        super().__init__()
        self.stages = nn.Sequential(stages)
        self.to_map = nn.Conv2d(in_channels, 1, kernel_size=1)
        nn.init.zeros_(self.to_map.weight)  # starts at a constant map (bias: the mean target)
        self.heatmap_shape = tuple(int(v) for v in heatmap_shape)

    def forward(self, x):
        m = self.to_map(self.stages(x))
        if tuple(m.shape[-2:]) != self.heatmap_shape:  # antialiased when shrinking
            m = F.interpolate(m, size=self.heatmap_shape, mode="bilinear", align_corners=False, antialias=True)
        return m[:, 0]


def _student_stages(network, n_stages):
    """Copies (fresh weights, shared with nothing) of the first ``n_stages`` stages."""
    names = network.stage_names
    return OrderedDict((name, copy.deepcopy(network.stages[name])) for name in names[:n_stages])


def _build_student(network, n_stages, input_size, heatmap_shape):
    stages = nn.Sequential(_student_stages(network, n_stages)).float().cpu()
    with eval_mode(stages):
        channels = int(stages(torch.zeros(1, 3, input_size, input_size)).shape[1])
    return _Student(OrderedDict(stages.named_children()), channels, heatmap_shape)


class _Teacher:
    """The frozen teacher: a StagedNetwork, its input normalisation, and its input size.

    A plain object, not an ``nn.Module``: it is not pickled with the cropper (see
    ``ObjectCropper.__getstate__``); it is found again from the ``teacher`` parameter.
    """

    def __init__(self, network, backbone, preprocessing):
        self.network = network
        self.backbone = backbone
        self.preprocessing = preprocessing  # (its image size and normalisation)
        self.image_size = preprocessing.image_size
        self.mean, self.std = preprocessing.mean, preprocessing.std
        self.layer = network.stage_names[-1]  # the last convolutional stage
        self.device = next(network.parameters()).device  # the teacher runs where its network is

    def heatmaps(self, batch, kind="last"):
        """uint8 ``(n, 3, S, S)`` -> the ``(n, I, J)`` heat maps on the CPU; ``kind`` is
        :class:`ObjectCropper`'s ``teacher_map``: ``"last"``, the mean over the channels of
        the last stage (section 5); ``"last+previous"``, that map min-max normalised plus the
        stage before's, each of whose channels is scaled by its own maximum (ours)."""
        previous = last = None
        with eval_mode(self.network) as net:  # the caller's network: put back as it was
            x = self.preprocessing.to_input(batch, self.device, dtype=next(net.parameters()).dtype)
            for _, out in net.forward_stages(x):
                previous, last = last, out
        heat = last.float().mean(1)  # the paper's map
        if kind == "last" or previous is None:
            return heat.cpu()
        # Every channel of the stage before at the same weight (the last stage's few strongest
        # channels are the part a fine-tuned classifier tells the classes by, not the object).
        prev = previous.float().clamp_min(0)
        prev = (prev / prev.flatten(2).amax(2).clamp_min(1e-6)[..., None, None]).mean(1)
        if prev.shape[-2:] != heat.shape[-2:]:
            prev = F.adaptive_avg_pool2d(prev[:, None], heat.shape[-2:])[:, 0]
        return (_minmax(heat) + _minmax(prev)).cpu()


def _resolve_teacher(teacher):
    """The ``teacher`` parameter -> a :class:`_Teacher` (the network is never modified)."""
    if isinstance(teacher, FrozenEstimator):
        teacher = teacher.estimator
    if teacher is None or isinstance(teacher, str):  # "auto" given no labels: the pretrained backbone
        network = build_backbone(DEFAULT_TEACHER, "imagenet").to(memory_format=torch.channels_last)
        spec = get_backbone_spec(DEFAULT_TEACHER)
        return _Teacher(network, DEFAULT_TEACHER, Preprocessing(224, "squash", spec.mean, spec.std))
    if isinstance(teacher, CNNFeatureExtractor):
        ext = teacher if hasattr(teacher, "network_") else clone(teacher).fit()
        return _Teacher(ext.network_, ext.backbone, ext.preprocessing_)
    module, settings = getattr(teacher, "module_", None), vars(teacher).get("trunk_settings_")
    if module is not None and getattr(module, "trunk", None) is not None and settings is not None:
        return _Teacher(module.trunk, settings["backbone"], teacher.preprocessing_)
    name = type(teacher).__name__
    if module is not None or hasattr(teacher, "classes_"):
        raise ValueError(
            f"teacher={name} was fitted on features, not images: it has no CNN whose heat maps "
            "could be learned. Give a classifier fitted with extractor=CNNFeatureExtractor(...), "
            "a CNNFeatureExtractor, or None."
        )
    raise ValueError(
        f"teacher={name} is not fitted and the cropper was not given labels to fit it: call "
        "fit(X, y), or fit the classifier first (with extractor=...). To keep a fitted teacher "
        "through clone (Pipeline, GridSearchCV), wrap it in sklearn.frozen.FrozenEstimator."
    )


def _imagenet_partner(teacher):
    """EfficientNet-Lite0 with its ImageNet weights, on the teacher's device: the map that
    ``imagenet_map=True`` joins to a trained teacher's."""
    partner = _resolve_teacher(None)
    if partner.device != teacher.device:
        partner = _Teacher(partner.network.to(teacher.device), partner.backbone, partner.preprocessing)
    return partner


def _is_fitted(estimator):
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


def _teacher_to_fit(teacher, random_state, device, verbose, n_samples):
    """The classifier ``fit(X, y)`` must train as the teacher, or None when the parameter is
    a ready teacher (None, an extractor, a fitted or frozen classifier). ``"auto"`` is the
    paper's setting: a classifier fine-tuned on the data with the default recipe.

    On a small set (``n_samples`` below ``SMALL_SET_IMAGES``) the auto teacher keeps the
    small set's held-out tenth out of training (``validation_fraction=0.1``), without the
    refit on every image that a classifier's own fit does: on 600 cartoon birds the
    refitted teacher took about twice as long, and its student found the birds less often
    on average (val picking the default ``tau`` for both), ahead on one seed of three
    (``benchmarks/results/cropper_default.md``, last row)."""
    if isinstance(teacher, str):  # "auto" (the parameter validation allows no other string)
        fraction = SMALL_SET_VALIDATION_FRACTION if n_samples < SMALL_SET_IMAGES else "auto"
        return SoftmaxClassifier(extractor=CNNFeatureExtractor(), validation_fraction=fraction,
                                 random_state=random_state, device=device, verbose=verbose)
    if teacher is None or isinstance(teacher, (FrozenEstimator, CNNFeatureExtractor)) or _is_fitted(teacher):
        return None
    return clone(teacher)  # an unfitted classifier: fitted on a clone, the parameter stays as given


# -------------------------------------------------------------- estimator
class ObjectCropper(TorchStateMixin, TransformerMixin, BaseEstimator):
    """Crop images to the object, with ELoPE's lightweight localization module.

    A scikit-learn transformer for the start of a pipeline: images in, images cropped
    to the object out (ELoPE section 5)::

        Pipeline([("crop", ObjectCropper()), ("cnn", CNNFeatureExtractor()),
                  ("clf", SoftmaxClassifier())])

    ``fit(X, y)`` needs images and their class labels, no boxes: by default it first
    fine-tunes a classifier on them, the *teacher* (the labels serve only that). The teacher CNN sees each whole
    training image, squashed to ``teacher_size x teacher_size``; the mean over the
    channels of its last convolutional stage is the image's heat map, ``I x J`` cells
    (7 x 7 for EfficientNet-Lite0 at 224 px), by default joined by the stage before's
    (``teacher_map``) and, for a trained teacher, by the same map of the ImageNet-pretrained
    EfficientNet-Lite0 (``imagenet_map``). The *student* (the localization module)
    is a copy of the teacher's first ``student_stages`` stages, initialised from the
    teacher's weights as in the paper, followed by a 1x1 convolution to one channel
    and a resize to ``I x J``. It sees the image at ``input_size x input_size``
    (64 in the paper) and is trained with the smooth L1 loss to reproduce the teacher's
    maps while the teacher stays frozen. At prediction only the student runs; its map
    is min-max normalised, binarised at ``tau``, and the smallest rectangle around the
    cells above ``tau`` is the box (:func:`heatmap_to_box`), in pixels of each original
    image.

    Parameters
    ----------
    teacher : "auto", None, CNNFeatureExtractor or classifier, default="auto"
        Whose heat maps are learned.

        - ``"auto"``: the paper's setting, a classifier trained on the data. ``fit(X, y)``
          first fine-tunes ``SoftmaxClassifier(extractor=CNNFeatureExtractor())`` on the
          labelled images with the default recipe (as long as fitting that classifier
          alone: minutes on a CPU), then trains the student from it. On fewer than 1,000
          images the teacher holds out a tenth (``validation_fraction=0.1``) and is not
          refitted on every image as the classifier alone would be: that took twice as
          long and localised no better (``benchmarks/results/cropper_default.md``). ``fit(X)`` without
          labels warns and falls back to ``None``.
        - ``None``: EfficientNet-Lite0 with its ImageNet weights (``build_backbone``), no
          labels needed; its maps find the object on some data and miss it on other
          (``docs/localization.rst``).
        - A :class:`skfg.CNNFeatureExtractor` (fitted or not; an unfitted one is fitted
          on a clone): its backbone and weights; ``teacher_size=None`` takes its
          ``image_size``.
        - A classifier for images, with ``module_.trunk`` and ``preprocessing_`` once
          fitted, e.g. ``SoftmaxClassifier(extractor=..., trainable_blocks=...)``: its
          fine-tuned CNN, the paper's "trained classification model". A fitted one is
          used as it is (wrap it in ``sklearn.frozen.FrozenEstimator`` to keep it fitted
          through ``clone``); an unfitted one is fitted on a clone with ``fit(X, y)``.

        The teacher parameter is never modified.
    teacher_size : int, "auto" or None, default="auto"
        Side of the square (squashed, so the map covers the whole image) teacher input;
        ``None``: the teacher extractor's ``image_size`` (224 for ``teacher=None``);
        ``"auto"``: twice that (448). Sets the heat-map size: ``teacher_size / 32``
        cells a side for the registered backbones, so ``"auto"`` gives 14 x 14 maps
        where the teacher's own size gives 7 x 7, too coarse for objects under a third
        of the image (ours; see ``docs/localization.rst``).
    teacher_map : {"last+previous", "last"}, default="last+previous"
        The teacher's heat map. ``"last"``: the paper's, the mean over the channels of the
        teacher's last stage. ``"last+previous"`` (ours): that map min-max normalised,
        plus the mean over the channels of the stage before it with each channel scaled
        by its own maximum over the image (so every channel counts alike), min-max
        normalised. A fine-tuned EfficientNet-Lite's last stage, a 1x1 convolution,
        fires on the part its classes differ by more than on the object: on the cartoon
        birds its boxes were half the object on one fine-tune of three, and, each map
        alone at the ``tau`` val picks for it, its student found 33 to 77 % of the birds
        by seed; with the stage before joined, 64 to 85 %
        (``benchmarks/results/cropper_default.md``, ``docs/localization.rst``). Used by
        ``fit`` and by ``source="teacher"``.
    input_size : int, default=64
        Side of the square student input (the paper's 64 x 64).
    student_stages : int, default=4
        How many first stages of the teacher's backbone the student copies. For
        EfficientNet-Lite0, 4 is ``stem`` to ``stage3``: 55,545 parameters with the
        1x1 convolution, 8 x 8 x 40 features at 64 px, 9.3 M multiply-adds (the paper's
        ResNet-50 module has 220,000 parameters; ``student_stages=5`` gives 254,065).
    tau : float in [0, 1), default=0.5
        Box threshold on the min-max normalised map. Used at prediction; can be
        changed after ``fit``. With the joined map (``imagenet_map=True``) the students'
        val boxes peak at 0.5 on both the cartoon birds and the cars pasted onto many
        backgrounds (0.4 and 0.6 are worse on both; ``docs/localization.rst``); the
        fine-tuned teacher's map alone peaked at 0.4. The paper's Table 2 gives 0.3 for
        birds and 0.2 for cars and aircraft, for its own box rule on 7 x 7 maps. With a
        few boxed val images, choose it there.
    upsample : bool, default=True
        Resize the ``I x J`` map bilinearly to the image before thresholding (finer
        boxes); ``False`` thresholds the coarse cells (see :func:`heatmap_to_box`).
    box : {"component", "all"}, default="component"
        Which cells above ``tau`` the box surrounds: ``"all"``, the paper's rule, or
        ``"component"``, only the connected region around the map's maximum (ours: a
        weaker second hot spot does not stretch the box). Used at prediction.
    augment : bool, default=True
        Flip a random half of each training batch horizontally, image and target map
        together.
    lr : float, default=1e-3
        Adam learning rate (cosine schedule).
    max_epochs : int, default=30
        Training epochs at most.
    batch_size : int, default=32
        Training images per step.
    validation_fraction : float in [0, 1), default=0.1
        Held-out share of the training images; the epoch with the lowest held-out
        smooth L1 loss is kept. 0 keeps the last epoch.
    n_iter_no_change : int or None, default=5
        Stop after this many epochs without a lower held-out loss (``None``: never).
    random_state : int, RandomState or None, default=None
        Seeds the split, the initialisation of the 1x1 convolution, the batches and the
        flips (the same value gives identical CPU runs).
    device : str, default="auto"
        Device of the student: ``"auto"`` is CUDA when present, else the CPU. A given
        teacher runs where its network is.
    verbose : bool, int or "auto", default="auto"
        A progress bar over the training epochs: ``"auto"`` shows it in a terminal or a
        Jupyter notebook once the work has run a few seconds (short calls print
        nothing); ``True``/``1`` always, ``False``/``0`` never.

    Attributes
    ----------
    student_ : torch.nn.Module
        The trained localization module, in eval mode on ``device_``. Maps a normalised
        ``(n, 3, input_size, input_size)`` batch to ``(n, I, J)`` maps.
    heatmap_shape_ : tuple of int
        ``(I, J)``, the teacher's (and the student's) map size.
    teacher_backbone_ : str
        The teacher's backbone.
    teacher_layer_ : str
        The teacher's last stage, whose channel mean is the heat map (joined by the
        stage before it with ``teacher_map="last+previous"``).
    teacher_size_ : int
        The teacher's input side.
    imagenet_map_ : bool
        Whether the ImageNet backbone's map joined the teacher's (``imagenet_map`` with a
        teacher other than the pretrained one).
    teacher_fitted_ : bool
        Whether ``fit`` trained the teacher (``teacher="auto"`` with labels, or an
        unfitted classifier). Such a teacher is not kept in a pickle.
    n_parameters_ : int
        Parameters of ``student_``.
    flops_ : int
        Multiply-adds (MACs, the paper's "FLOPs" of Table 3) of one student forward
        pass on ``1 x 3 x input_size x input_size``, convolutions only, counted with
        :class:`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per
        multiply-add; its count is halved here).
    history_ : list of dict
        Per epoch: loss, val_loss, seconds, lr (from :func:`skfg._training.fit_loop`).
    best_epoch_ : int
        The epoch whose weights were kept.
    n_iter_ : int
        Epochs run.
    device_ : str
        The student's device.

    See Also
    --------
    heatmap_to_box : The box step on its own.
    box_iou : Intersection over union, the measure of the paper's Table 4.

    Notes
    -----
    Deliberate choices beyond the paper:

    - The targets are the teacher's maps min-max normalised per image: the box step
      normalises anyway, and normalised targets give every image the same weight in
      the loss whatever the scale of its activations. The 1x1 convolution starts at
      zero with the mean target as bias (a constant map).
    - The student's BatchNorm layers keep the teacher's running statistics (eval mode)
      while their scale and shift train, so training and prediction behave the same
      even on few, small batches.
    - ``upsample=True`` thresholds the bilinearly upsampled map (finer boxes).
    - ``teacher_size="auto"`` shows the teacher the images at twice its input size
      (14 x 14 maps instead of 7 x 7), and ``box="component"`` boxes only the connected
      hot region around the maximum: in a prototype run on cars pasted into photographs
      the paper's 7 x 7 maps gave boxes far too large for small objects, and on 14 x 14
      maps the paper's rule stretches boxes over a second hot spot; on cars pasted onto
      backgrounds unseen in that prototype, val boxes prefer ``"component"`` at every
      ``tau`` (``docs/localization.rst`` has the measured rates).
      ``teacher_size=None, teacher_map="last", box="all", tau=0.3`` is the paper's
      setting for birds.
    - ``teacher_map="last+previous"`` joins the stage before the last to the paper's
      map (see the parameter), chosen on val boxes of the cartoon birds over the
      paper's map, the pretrained teacher's and mixes of the two, the maps of a
      horizontal flip, and the channel-scaled map of either stage alone.
    - ``imagenet_map=True`` adds the pretrained network's map to a trained teacher's,
      and ``tau=0.5``: chosen on val boxes of the cars composites (where the fine-tuned
      teacher alone finds few cars) and of the cartoon birds (where the pretrained
      network alone needs a higher ``tau``), see the parameters.

    The teacher is not pickled with the cropper (a pretrained backbone would add
    ~19 MB and the student does not need it). ``source="teacher"`` after loading
    finds the teacher again from the ``teacher`` parameter (rebuilt for ``None``, the
    extractor or classifier pickled as the parameter otherwise) and refuses with a
    ``ValueError`` if its weights differ from the ones the student learned from.

    The paper's teacher is the fine-tuned classifier, and it is the default: with labels,
    ``fit`` trains one (and joins the pretrained network's map to it, ``imagenet_map``).
    A pretrained-only teacher (``None``) highlights whatever ImageNet features fire on:
    on the cartoon birds of :func:`skfg.datasets.make_fine_grained` its student's boxes
    are at least as good as those of a fine-tuned teacher's map alone and behind the
    default's joined map (on 600 training images), while on cars pasted onto many
    photographs and textures, at the ``tau`` val chooses for each, it does better
    than a teacher that classifies those composites poorly (``docs/localization.rst`` has
    the measured numbers). A few val images with boxes settle which teacher and ``tau``
    suit your data.
    To reuse a classifier you have fitted (or to fit the teacher once for a grid search
    over the cropper's parameters), pass it wrapped in ``sklearn.frozen.FrozenEstimator``.

    References
    ----------
    H. Hanselmann and H. Ney, "ELoPE: Fine-Grained Visual Classification with Efficient
    Localization, Pooling and Embedding" (``papers/elope.txt``): section 5 (the module),
    Table 2 (``tau``), Table 3 (cost) and Table 4 (IoU >= 0.5 accuracy).

    Examples
    --------
    >>> from skfg.localization import ObjectCropper
    >>> from skfg.datasets import make_fine_grained
    >>> X, _ = make_fine_grained(n_classes=2, n_per_class=4, image_size=64, random_state=0)
    >>> crop = ObjectCropper(None, teacher_size=128, max_epochs=2, random_state=0).fit(X)
    >>> crop.heatmap_shape_, crop.predict_boxes(X).shape
    ((4, 4), (8, 4))
    >>> crops = crop.transform(X)                  # PIL images, each its own size
    >>> len(crops), crops[0].mode
    (8, 'RGB')
    """

    _parameter_constraints = {
        "teacher": [StrOptions({"auto"}), None, HasMethods(["fit"])],
        "teacher_size": [Interval(Integral, 32, None, closed="left"), StrOptions({"auto"}), None],
        "teacher_map": [StrOptions({"last+previous", "last"})],
        "imagenet_map": ["boolean"],
        "input_size": [Interval(Integral, 16, None, closed="left")],
        "student_stages": [Interval(Integral, 1, None, closed="left")],
        "tau": [Interval(Real, 0, 1, closed="left")],
        "upsample": ["boolean"],
        "box": [StrOptions({"component", "all"})],
        "augment": ["boolean"],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "device": [str, None],
        "verbose": ["verbose", StrOptions({"auto"})],
    }

    def __init__(
        self,
        teacher="auto",
        *,
        teacher_size="auto",
        teacher_map="last+previous",
        imagenet_map=True,
        input_size=64,
        student_stages=4,
        tau=0.5,
        upsample=True,
        box="component",
        augment=True,
        lr=1e-3,
        max_epochs=30,
        batch_size=32,
        validation_fraction=0.1,
        n_iter_no_change=5,
        random_state=None,
        device="auto",
        verbose="auto",
    ):
        self.teacher = teacher
        self.teacher_size = teacher_size
        self.teacher_map = teacher_map
        self.imagenet_map = imagenet_map
        self.input_size = input_size
        self.student_stages = student_stages
        self.tau = tau
        self.upsample = upsample
        self.box = box
        self.augment = augment
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ---------------------------------------------------------------- fitting
    @atomic_fit
    def fit(self, X, y=None):
        """Train the teacher if needed, compute its heat maps of X and train the student on them.

        Parameters
        ----------
        X : array-like
            Training images: paths, a uint8 array ``(n, H, W, 3)`` or a list of PIL
            images (any sizes).
        y : array-like of shape (n_samples,) or None, default=None
            Class labels, used only to train the teacher (``teacher="auto"`` or an
            unfitted classifier); the student needs no labels and no boxes.

        Returns
        -------
        self : ObjectCropper

        Raises
        ------
        skfg.exceptions.ImageDecodeError
            If an image cannot be read (the message names it).
        ValueError
            For an invalid parameter or teacher. A failed fit leaves the estimator as it
            was before.
        """
        self._validate_params()
        source = ImageSource(X)
        device = resolve_device(self.device)
        to_fit = _teacher_to_fit(self.teacher, self.random_state, self.device, self.verbose, len(source))
        if to_fit is not None and y is None and isinstance(self.teacher, str):
            warn(
                "ObjectCropper.fit(X) without y: the teacher is the pretrained ImageNet backbone, "
                "not one fine-tuned on your classes; which of the two finds the objects better "
                "depends on the data (docs/localization.rst: choose on a few boxed val images). Call "
                "fit(X, y) to fine-tune the teacher on the classes first (the default, the paper's "
                "setting), or pass teacher=None to use the pretrained one without this warning."
            )
            to_fit = None
            teacher = _resolve_teacher(None)
        elif to_fit is not None:
            if y is None:
                raise ValueError(
                    f"teacher={type(self.teacher).__name__} is not fitted, and fit(X) was given no "
                    "labels to fit it: call fit(X, y), or pass a fitted classifier (wrapped in "
                    "sklearn.frozen.FrozenEstimator to keep it through clone)."
                )
            teacher = _resolve_teacher(to_fit.fit(X, y))  # the paper's trained classification model
        else:
            teacher = _resolve_teacher(self.teacher)
        teacher_size = int(self.teacher_size or teacher.image_size) if self.teacher_size != "auto" else \
            2 * teacher.image_size
        names = teacher.network.stage_names
        if self.student_stages >= len(names):
            raise ValueError(
                f"student_stages={self.student_stages}, but the teacher backbone {teacher.backbone!r} has "
                f"{len(names)} stages ({', '.join(names)}); the student copies at most {len(names) - 1}."
            )
        pretrained_teacher = self.teacher is None or (to_fit is None and isinstance(self.teacher, str))
        # (ours) The ImageNet backbone's map joins a trained teacher's: see the `imagenet_map` parameter.
        partner = _imagenet_partner(teacher) if self.imagenet_map and not pretrained_teacher else None
        inputs, targets = self._training_data(source, teacher, teacher_size, partner)
        heatmap_shape = tuple(targets.shape[1:])
        generator = make_generator(self.random_state)  # seeds the 1x1 convolution too
        try:
            student = _build_student(teacher.network, self.student_stages, self.input_size, heatmap_shape)
        except RuntimeError as exc:
            raise ValueError(
                f"input_size={self.input_size} is too small for {self.student_stages} stages of "
                f"{teacher.backbone!r}: {exc}"
            ) from exc
        with torch.no_grad():
            student.to_map.bias.fill_(float(targets.mean()))
        student = student.to(device)
        result = self._train(student, inputs, targets, teacher, device, generator)
        # Trained: set the fitted attributes together.
        self.student_ = student.eval()
        self.device_ = device
        self.heatmap_shape_ = heatmap_shape
        self.teacher_backbone_ = teacher.backbone
        self.teacher_layer_ = teacher.layer
        self.teacher_size_ = teacher_size
        self.n_parameters_ = int(count_parameters(student))
        self.flops_ = _count_macs(student, self.input_size, device)
        self.history_ = result["history"]
        self.best_epoch_ = result["best_epoch"]
        self.n_iter_ = len(result["history"])
        self.teacher_fitted_ = to_fit is not None
        self.imagenet_map_ = partner is not None
        self._teacher = teacher
        self._partner = partner
        self._teacher_fingerprint = state_fingerprint(teacher.network)
        return self

    def _teacher_maps(self, teacher, partner, batch):
        """The maps the student learns: the teacher's ``teacher_map``, joined by the ImageNet
        backbone's map of the same kind when ``partner`` is given (``imagenet_map``)."""
        maps = teacher.heatmaps(batch, self.teacher_map)
        if partner is None:
            return maps
        extra = partner.heatmaps(batch, self.teacher_map)
        if extra.shape[-2:] != maps.shape[-2:]:
            extra = F.interpolate(extra[:, None], size=maps.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return _minmax(maps) + _minmax(extra)

    def _training_data(self, source, teacher, teacher_size, partner):
        """Decode every image once: uint8 student inputs ``(n, 3, s, s)`` and the teacher's
        min-max normalised maps ``(n, I, J)``."""
        t_tf, s_tf = eval_transform(teacher_size, "squash"), eval_transform(self.input_size, "squash")
        chunk = 4 if teacher.device.type == "cpu" else 32  # small batches are fastest on CPUs
        inputs, maps = [], []
        for start in range(0, len(source), chunk):
            images = [source.load(i) for i in range(start, min(start + chunk, len(source)))]
            maps.append(self._teacher_maps(teacher, partner, torch.stack([t_tf(im) for im in images])))
            inputs.append(torch.stack([s_tf(im) for im in images]))
        return torch.cat(inputs), _minmax(torch.cat(maps))

    def _train(self, student, inputs, targets, teacher, device, generator):
        n = len(inputs)
        n_val = int(round(self.validation_fraction * n))
        train_idx, val_idx = holdout_split(n, n_val, random_state=check_random_state(self.random_state))
        loader = DataLoader(TensorDataset(inputs[train_idx], targets[train_idx]),
                            batch_size=self.batch_size, shuffle=True, generator=generator)

        def prepare(x):
            return to_input(x, teacher.mean, teacher.std, device)

        def step(batch):
            x, t = batch
            if self.augment:  # the same horizontal flip for the image and its map
                flip = torch.rand(len(x), generator=generator) < 0.5
                x, t = x.clone(), t.clone()
                x[flip], t[flip] = x[flip].flip(-1), t[flip].flip(-1)
            return F.smooth_l1_loss(student(prepare(x)), t.to(device)), len(x)

        validate = None
        if val_idx is not None:
            x_val, t_val = inputs[val_idx], targets[val_idx].to(device)

            def score_split():
                pred = torch.cat([student(prepare(x_val[i : i + 256])) for i in range(0, len(x_val), 256)])
                loss = F.smooth_l1_loss(pred, t_val)
                return -loss, loss

            validate = score_split

        def set_train_mode():
            # BatchNorm keeps the teacher's running statistics (eval mode) while its scale
            # and shift train: batch statistics of a few small batches would make the
            # training and the inference behaviour differ (Lite0's BatchNorm momentum is
            # 0.01, so its running statistics would lag far behind).
            student.train()
            for module in student.modules():
                if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                    module.eval()

        optimizer = make_optimizer([{"params": student.parameters()}], "adam", self.lr)
        return fit_loop(
            student,
            loader,
            step,
            optimizer=optimizer,
            scheduler=make_scheduler(optimizer, "cosine", self.max_epochs, len(loader)),
            max_epochs=self.max_epochs,
            validate=validate,
            patience=self.n_iter_no_change if val_idx is not None else None,
            generator=generator,
            verbose=self.verbose,
            set_train_mode=set_train_mode,
        )

    def _make_module(self, name):
        network = build_backbone(self.teacher_backbone_, weights=None)
        return _build_student(network, self.student_stages, self.input_size, self.heatmap_shape_)

    # ------------------------------------------------------------- prediction
    def _get_teacher(self):
        teacher = getattr(self, "_teacher", None)
        if teacher is None and getattr(self, "teacher_fitted_", False):
            raise ValueError(
                "source='teacher' needs the teacher that fit trained, which is not pickled with "
                "the cropper. Use source='student', or fit the classifier yourself and pass it as "
                "teacher=FrozenEstimator(classifier) to keep it."
            )
        if teacher is None:  # unpickled: find it again from the parameter
            teacher = _resolve_teacher(self.teacher)
            if state_fingerprint(teacher.network) != self._teacher_fingerprint:
                raise ValueError(
                    "source='teacher' needs the teacher the student learned from, which is not "
                    "pickled with the cropper; the current `teacher` parameter has other weights "
                    "(refitted or replaced). Use source='student', or fit the cropper again."
                )
            self._teacher = teacher
        return teacher

    def _get_partner(self, teacher):
        """The ImageNet backbone whose map joined the teacher's in ``fit``, or None."""
        if not getattr(self, "imagenet_map_", False):
            return None
        if getattr(self, "_partner", None) is None:  # unpickled: rebuilt (fixed pretrained weights)
            self._partner = _imagenet_partner(teacher)
        return self._partner

    def _maps(self, source, source_kind, keep_images=False):
        """Yield ``(image, map)`` for every image: the PIL image (or its size) and its
        ``(I, J)`` heat map from the student or the teacher."""
        check_is_fitted(self, "student_")
        if source_kind not in ("student", "teacher"):
            raise ValueError(f"source must be 'student' or 'teacher', got {source_kind!r}.")
        if source_kind == "teacher":
            teacher = self._get_teacher()
            partner = self._get_partner(teacher)
            tf, chunk = eval_transform(self.teacher_size_, "squash"), 4 if teacher.device.type == "cpu" else 32
            predict = lambda batch: _minmax(self._teacher_maps(teacher, partner, batch))  # noqa: E731
        else:
            spec = get_backbone_spec(self.teacher_backbone_)
            tf, chunk = eval_transform(self.input_size, "squash"), 64
            size = int(self.input_size)
            example = torch.zeros(1, 3, size, size, device=self.device_).contiguous(memory_format=torch.channels_last)
            student = cached_engine(self.student_, "fused", example, key=("student", size))  # BatchNorm folded
            predict = lambda b: student(to_input(b, spec.mean, spec.std, self.device_)).float().cpu()  # noqa: E731
        self.student_.eval()
        for start in range(0, len(source), chunk):
            images = [source.load(i) for i in range(start, min(start + chunk, len(source)))]
            with torch.inference_mode():
                maps = predict(torch.stack([tf(im) for im in images]))
            for im, m in zip(images, maps.numpy()):
                yield (im if keep_images else im.size), m

    def predict_heatmaps(self, X, source="student"):
        """The ``I x J`` heat maps of the images.

        Parameters
        ----------
        X : array-like
            Images (paths, uint8 arrays, PIL images).
        source : {"student", "teacher"}, default="student"
            ``"student"``: the localization module's prediction. ``"teacher"``: the
            teacher's map (mean over the channels of its last stage), min-max
            normalised per image as in training.

        Returns
        -------
        heatmaps : ndarray of shape (n_images, I, J), float32
            Each covers its whole image.
        """
        source_ = ImageSource(X)
        return np.stack([m for _, m in self._maps(source_, source)]).astype(np.float32)

    def predict_boxes(self, X, source="student"):
        """Object boxes in pixels of each original image.

        Parameters
        ----------
        X : array-like
            Images (paths, uint8 arrays, PIL images), each of any size.
        source : {"student", "teacher"}, default="student"
            Whose heat map gives the box: the localization module's, or the teacher's
            own (the paper's Table 4 compares the two).

        Returns
        -------
        boxes : ndarray of shape (n_images, 4), float64
            ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= width`` and
            ``0 <= y0 < y1 <= height`` of each image (far edges exclusive).
        """
        check_tau(self.tau)
        source_ = ImageSource(X)
        return np.stack([heatmap_to_box(m, (size[1], size[0]), self.tau, self.upsample, self.box == "component")
                         for size, m in self._maps(source_, source)])

    def transform(self, X):
        """The images cropped to their predicted boxes.

        Parameters
        ----------
        X : array-like
            Images (paths, uint8 arrays, PIL images), each of any size.

        Returns
        -------
        crops : list of PIL.Image.Image
            RGB crops, each of its own size (the box rounded outwards to whole pixels),
            ready for :class:`skfg.CNNFeatureExtractor`.
        """
        check_tau(self.tau)
        crops = []
        for image, m in self._maps(ImageSource(X), "student", keep_images=True):
            width, height = image.size
            x0, y0, x1, y1 = heatmap_to_box(m, (height, width), self.tau, self.upsample, self.box == "component")
            box = (math.floor(x0), math.floor(y0), max(math.ceil(x1), math.floor(x0) + 1),
                   max(math.ceil(y1), math.floor(y0) + 1))
            crops.append(image.crop(box))
        return crops

    # ------------------------------------------------------------- pickling
    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_teacher", None)  # found again from the `teacher` parameter when needed
        state.pop("_partner", None)  # rebuilt from the pretrained weights when needed
        return state

    def __setstate__(self, state):
        state = dict(state)
        state.setdefault("teacher_map", "last")  # saved before the parameter: it learned the paper's map
        state.setdefault("imagenet_map", False)  # (and the teacher's map alone)
        state.setdefault("imagenet_map_", False)
        super().__setstate__(state)

    def __sklearn_tags__(self):
        return image_input_tags(super().__sklearn_tags__())


def _minmax(maps):
    """Per-map min-max normalisation to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


def _count_macs(module, input_size, device):
    """Multiply-adds of one forward pass on ``1 x 3 x s x s`` (FlopCounterMode counts 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, input_size, input_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops()) // 2
