"""``SoftmaxClassifier``: the softmax ("ConvNet" / "ConvNet-extra") baselines."""

import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._classifier import BaseTorchClassifier
from .losses import EMBEDDING_LOSSES, ClassMeanLoss, distillation_loss, soften


class SoftmaxClassifier(BaseTorchClassifier):
    """Softmax classifier on CNN features, or a CNN fine-tuned end to end.

    The baselines of the impostor-networks paper ("Compared approaches" 1-2): a linear
    softmax layer on the features ("ConvNet"), or one extra fully connected layer of
    ``embedding_dim`` units before it ("ConvNet-extra"). The input features are
    centred with their training mean and divided by one scale (their RMS standard
    deviation).

    Given ``extractor``, ``fit`` takes images and fine-tunes the extractor's backbone
    with the head, by default with skfg's fine-tuning recipe (the parameters left at
    ``"auto"``: every stage, AdamW, warm-up then cosine, label
    smoothing, augmentation at a lower resolution than prediction; see the training
    guide). With ``augment=False`` and frozen first stages, their output is computed
    once per image and reused every epoch (frozen-prefix cache).

    ELoPE's embedding layer (``embedding_loss``): the hidden layer of ``embedding_dim``
    units is trained with ``L = L_CE + lambda L_e`` (ELoPE eq. 1), where ``L_e`` pulls the
    L2-normalised embeddings to their class means and pushes the means of the classes
    in a mini-batch apart (eq. 5-10; :func:`skfg.losses.class_mean_loss`). With an
    extractor whose ``pooling="kmax_weighted"``, the K weights of the global k-max
    pooling (eq. 4) are learned too; ``kmax_weight_epochs`` gives the paper's two-step
    schedule.

    Knowledge distillation (``teacher``): the loss becomes
    ``(1 - lambda) L_CE + lambda T^2 KL(q_T || softmax(z / T))`` (Hinton et al., 2015), where
    ``q_T`` is the teacher's ``predict_proba`` of each training image, as the teacher
    predicts it (the whole image, once per fit), softened at temperature ``T``. A larger
    or longer-trained model can so teach a small one that predicts faster.

    Parameters
    ----------
    embedding_dim : int or None, default=None
        Width of the extra hidden layer (ReLU); ``None`` is a linear softmax.
    dropout : float, default=0.0
        Dropout before the last layer.
    embedding_loss : {None, "class_means", "within", "center"} or ClassMeanLoss, default=None
        Loss on the hidden layer's output (its linear part, before the ReLU), added to
        the cross-entropy with weight ``embedding_loss_weight``; needs ``embedding_dim``.
        ``"class_means"``: ELoPE's ``L_w + L_b`` (eq. 5, 9, 10), class means updated
        every mini-batch by eq. 6-7 with the update kept in backpropagation;
        ``"within"``: ``L_w`` only; ``"center"``: the center loss (Wen et al.), the
        baseline, centres updated without gradient. A name uses ``class_mean_rate``,
        ``between_weight`` and ``between_margin``; a :class:`skfg.losses.ClassMeanLoss`
        object brings its own settings (a copy is trained). Class means start as the
        class means of the initial embeddings. Samples of zero weight do not enter it.
    embedding_loss_weight : float, default=2.0
        ``lambda`` of ELoPE eq. 1 (Table 2).
    class_mean_rate : float, default=0.5
        ``alpha`` of eq. 6, the update rate of the class means (Table 2).
    between_weight : float, default=16.0
        ``gamma`` of eq. 10, the weight of the between-class part (Table 2).
    between_margin : float, default=0.75
        ``m`` of eq. 10: class means closer than this (squared distance of normalised
        vectors) are pushed apart (Table 2).
    kmax_weight_epochs : int, default=0
        With an extractor whose ``pooling="kmax_weighted"``: 0 trains the pooling
        weights with everything else from the start; ``n > 0`` is ELoPE's two-step
        schedule: ``max_epochs`` with the weights fixed at 1 (plain k-max), then ``n``
        more epochs training everything at ``lr / 10``, the new weights at ``lr``; the best
        epoch (on validation) of the second step is kept.
    teacher : classifier or None, default=None
        Distil this classifier's predictions into the network (any estimator with
        ``predict_proba`` on the same ``X`` and the classes of ``y``). A fitted one is used
        as it is; an unfitted one is first fitted on a clone with ``fit(X, y)`` (so
        ``GridSearchCV`` fits a teacher per split, on that split's training part only). A
        fitted teacher loses its fit through ``clone`` (``Pipeline``, ``GridSearchCV``):
        wrap it in ``sklearn.frozen.FrozenEstimator`` to keep it (it then also sees each
        split's held-out part). The teacher is a parameter, so it is pickled with the
        classifier: ``set_params(teacher=None)`` before saving keeps the file small.
    distillation_weight : float, default=0.5
        ``lambda``, the weight of the distillation term (0: ``teacher`` is not used).
    distillation_temperature : float, default=1.0
        ``T``, the softmax temperature of the distillation term.
    extractor : CNNFeatureExtractor or None, default=None
        ``None``: ``X`` holds features. Otherwise ``X`` holds images and this extractor's
        backbone, layers, pooling and preprocessing are used and fine-tuned.
    trainable_blocks : int, "all" or "auto", default="auto"
        With ``extractor``: how many of the last backbone stages train (0: only the
        head). ``"auto"``: all of them (the fine-tuning recipe).
    augment : bool or Augmentation, default=True
        With ``extractor``: the training augmentation. ``True`` is
        :class:`skfg.images.Augmentation` with its defaults (random resized crops at 0.8
        of the extractor's ``image_size`` and flips; TrivialAugmentWide and random
        erasing are available, off by default),
        run on images decoded once per fit; pass an ``Augmentation`` to change a step,
        ``False`` for none.
    cache_frozen : bool, default=True
        With ``extractor`` and ``augment=False``: compute the frozen stages' output once
        per image and reuse it every epoch (memory: one feature map per image, at most
        ``SKFG_PREFIX_CACHE_MB``, default 2048 MB; beyond it they are recomputed).
    head_epochs : int or "auto", default="auto"
        With ``extractor``: first train the head alone for this many epochs on the frozen
        CNN's features (computed once, without augmentation), then everything for
        ``max_epochs`` (linear probing, then fine-tuning), so the fine-tuning starts from
        a trained head instead of a random one. ``"auto"``: 10 when fine-tuning (0 on
        features, where it does nothing).
    warm_start : bool, default=False
        When ``True`` and the model is fitted, ``fit`` starts from the fitted network
        (weights and input standardisation) instead of a new one, as scikit-learn's
        ``warm_start``: the classes, the number of features and the network's parameters
        (``embedding_dim``, the extractor) must be those of the previous fit, the
        training parameters (``lr``, ``max_epochs``, ``trainable_blocks``...) may change.
        ``history_`` and ``n_iter_`` then describe the new fit only. ``clone`` (and so
        ``GridSearchCV``) starts afresh.
    optimizer : {"adam", "adamw", "sgd", "auto"}, default="auto"
        ``"auto"``: Adam on features; AdamW when fine-tuning (chosen on val over SGD
        with Nesterov momentum, the earlier recipe's optimiser).
    lr : float or "auto", default="auto"
        Learning rate of the head. ``"auto"``: 3e-3 on features (the middle of the
        candidates ``benchmarks/impostor_frozen.py`` searches on val for the frozen
        EfficientNet-Lite0 features of ``stanford_cars_a``); also 3e-3 when fine-tuning
        (the recipe, with AdamW), times ``b / 64`` for an epoch of ``b < 64`` mini-batches
        (a small training set: :func:`skfg._training.small_set_lr_factor`;
        :meth:`resolved_param` with ``y`` gives the rate a fit uses).
    backbone_lr_scale : float or "auto", default="auto"
        The backbone's learning rate is ``lr * backbone_lr_scale``; ``"auto"``: 0.1 on
        features (unused), 2/3 when fine-tuning (0.002 for the backbone).
    weight_decay : float or "auto", default="auto"
        ``"auto"``: 1e-4 on features, 0.05 (decoupled, AdamW) when fine-tuning; never
        applied to biases and normalisation weights.
    momentum : float, default=0.9
        For ``optimizer="sgd"`` (Nesterov).
    schedule : {"cosine", "step", "constant"}, default="cosine"
        Stepped after every mini-batch, after the warm-up.
    warmup_epochs : float or "auto", default="auto"
        Linear learning-rate warm-up; ``"auto"``: 0 on features, 1 when fine-tuning. A
        warm-up lasts at least 100 mini-batches (at most half of the training): on a small
        training set one epoch is too few steps to fine-tune safely.
    label_smoothing : float or "auto", default="auto"
        Of the cross-entropy; ``"auto"``: 0 on features, 0.1 when fine-tuning.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype of the training steps. ``"auto"``: float16 with gradient scaling
        on CUDA, float32 on CPUs (bfloat16 autocast was measured several times slower
        there, see the training guide). The weights and predictions stay float32.
    ema_decay : float or None, default=None
        Keep an exponential moving average of the weights with this decay per step
        and validate, keep and predict with it.
    max_grad_norm : float or None, default=None
        Clip the gradient's global L2 norm to this value before each optimiser step;
        ``history_`` then records each epoch's mean norm before clipping and the
        fraction of clipped steps. Off by default: clipping at 5 cost the recipe points
        on ``stanford_cars_a`` (see the training guide).
    divergence_guard : float, None or "auto", default="auto"
        When an epoch's mean training loss exceeds this factor times the lowest epoch
        loss so far, the weights and optimiser state go back to that epoch's, every
        learning rate is halved for the rest of the run, and training goes on (with a
        ``RuntimeWarning``; ``history_`` counts the halvings in ``lr_halvings``). None:
        no guard. ``"auto"``: None on features, 1.5 when fine-tuning: on a small
        training set (a few mini-batches an epoch) the recipe's learning rate otherwise
        diverged in one seed in three (see the training guide).
    freeze_batchnorm : bool, default=True
        When fine-tuning, the CNN's BatchNorm layers normalise with their pretrained
        running statistics (eval mode) while their scale and shift train. With batch
        statistics (``False``) the pretrained EfficientNet-Lite's features change
        completely at the first training step (see the training guide).
    max_epochs : int or "auto", default="auto"
        ``"auto"``: 60 on features, 11 when fine-tuning (the recipe's budget: about
        10-14 minutes on 2 CPU cores for 2,400 images at 224 px).
    batch_size : int or "auto", default="auto"
        ``"auto"`` is 64 on features and 32 when fine-tuning, or less on small data so
        an epoch has at least 8 mini-batches.
    validation_fraction : float or "auto", default="auto"
        Share of the training data held out to pick the best epoch (0 disables).
        ``"auto"``: 0.1 on features; 0 when fine-tuning (every image trains, and the
        last epoch of the cosine schedule is kept), except on fewer than 1,000 images
        (``SMALL_SET_IMAGES``): there 0.1, stratified, when that is an image a class at
        least; that split only decides between the fine-tuned network (its last epoch)
        and the linear probe, and the winner is then fitted again on every image (as
        ``GridSearchCV(refit=True)`` does: a small set's fit trains twice). With a
        held-out split and ``head_epochs``, ``fit`` keeps the linear probe (the head on
        the pretrained CNN) instead of the fine-tuned network when the probe scores
        higher on the split, with a ``RuntimeWarning`` (``fine_tuned_`` False).
    n_iter_no_change : int or None, default=10
        Early stopping patience in epochs (needs ``validation_fraction > 0``; a small
        set's automatic split does not stop early).
    random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling, augmentation and the validation split.
    device : str, default="auto"
    checkpoint_dir : str or None, default=None
        Save the training state after each epoch; a later ``fit`` with the same
        parameters and data (the features' bytes or the images' content) resumes from
        it, one with other parameters or data is refused.
    verbose : bool, int or "auto", default="auto"
        A progress bar over the training epochs (and the extraction of frozen features): ``"auto"`` shows it in a terminal or a
        Jupyter notebook once the work has run a few seconds (short calls print
        nothing); ``True``/``1`` always, ``False``/``0`` never.

    Attributes
    ----------
    classes_ : ndarray
        Class labels.
    module_ : torch.nn.Module
        The trained network.
    class_means_ : ndarray of shape (n_classes, embedding_dim) or None
        With ``embedding_loss``: the class means (centres) at the end of training.
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``val_score`` (accuracy), ``val_loss``,
        ``seconds``, ``lr``.
    best_epoch_ : int
        Epoch whose weights were kept.
    n_iter_ : int
        Epochs run.
    interrupted_ : bool
        Whether training was stopped by ``KeyboardInterrupt``.
    fine_tuned_ : bool
        Whether ``module_`` holds a fine-tuned CNN: False on features, with nothing of the
        CNN trainable, and when the linear probe scored higher on the held-out split
        (see ``validation_fraction``).
    probe_comparison_ : dict or None
        With a held-out split and ``head_epochs`` when fine-tuning: the split's accuracy
        of the linear probe and of the fine-tuned network (``{"probe": ..., "fine_tune":
        ...}``), what chose between them; None otherwise.
    n_features_in_ : int
        Number of input features (feature mode).
    preprocessing_ : skfg.images.Preprocessing
        With ``extractor``: how images become the network's input (the extractor's image
        size, resize, normalisation, batch size), what ``predict`` on images uses.
    trunk_settings_ : dict
        With ``extractor``: the trained trunk's ``backbone``, ``layers``, ``pooling``,
        ``k``, ``normalize`` and ``packaged_weights`` (what rebuilds it when loaded).
    layers_ : list of str
        With ``extractor``: the CNN stages whose pooled outputs feed the head.
    n_features_ : int
        With ``extractor``: the width of the pooled features.

    See Also
    --------
    skfg.CNNFeatureExtractor : Features for this classifier.

    Examples
    --------
    >>> import numpy as np
    >>> from skfg import SoftmaxClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(30, 5) + 2, rng.randn(30, 5) - 2]
    >>> y = np.r_[["a"] * 30, ["b"] * 30]
    >>> clf = SoftmaxClassifier(random_state=0).fit(X, y)
    >>> clf.predict(X[:2]).tolist(), clf.score(X, y)
    (['a', 'a'], 1.0)
    """

    _parameter_constraints = {
        **BaseTorchClassifier._parameter_constraints,
        "embedding_dim": [Interval(Integral, 1, None, closed="left"), None],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "embedding_loss": [StrOptions(set(EMBEDDING_LOSSES)), ClassMeanLoss, None],
        "embedding_loss_weight": [Interval(Real, 0, None, closed="left")],
        "class_mean_rate": [Interval(Real, 0, 1, closed="right")],
        "between_weight": [Interval(Real, 0, None, closed="left")],
        "between_margin": [Interval(Real, 0, None, closed="left")],
        "kmax_weight_epochs": [Interval(Integral, 0, None, closed="left")],
        "teacher": [None, HasMethods(["fit", "predict_proba"])],
        "distillation_weight": [Interval(Real, 0, 1, closed="both")],
        "distillation_temperature": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        embedding_dim=None,
        *,
        dropout=0.0,
        embedding_loss=None,
        embedding_loss_weight=2.0,
        class_mean_rate=0.5,
        between_weight=16.0,
        between_margin=0.75,
        kmax_weight_epochs=0,
        teacher=None,
        distillation_weight=0.5,
        distillation_temperature=1.0,
        extractor=None,
        trainable_blocks="auto",
        augment=True,
        cache_frozen=True,
        head_epochs="auto",
        warm_start=False,
        optimizer="auto",
        lr="auto",
        backbone_lr_scale="auto",
        weight_decay="auto",
        momentum=0.9,
        schedule="cosine",
        warmup_epochs="auto",
        label_smoothing="auto",
        precision="auto",
        ema_decay=None,
        max_grad_norm=None,
        divergence_guard="auto",
        freeze_batchnorm=True,
        max_epochs="auto",
        batch_size="auto",
        validation_fraction="auto",
        n_iter_no_change=10,
        random_state=None,
        device="auto",
        checkpoint_dir=None,
        verbose="auto",
    ):
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.embedding_loss = embedding_loss
        self.embedding_loss_weight = embedding_loss_weight
        self.class_mean_rate = class_mean_rate
        self.between_weight = between_weight
        self.between_margin = between_margin
        self.kmax_weight_epochs = kmax_weight_epochs
        self.teacher = teacher
        self.distillation_weight = distillation_weight
        self.distillation_temperature = distillation_temperature
        self.extractor = extractor
        self.trainable_blocks = trainable_blocks
        self.augment = augment
        self.cache_frozen = cache_frozen
        self.head_epochs = head_epochs
        self.warm_start = warm_start
        self.optimizer = optimizer
        self.lr = lr
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        self.precision = precision
        self.ema_decay = ema_decay
        self.max_grad_norm = max_grad_norm
        self.divergence_guard = divergence_guard
        self.freeze_batchnorm = freeze_batchnorm
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.verbose = verbose

    def _check_params(self):
        if self.embedding_loss is not None and self.embedding_dim is None:
            raise ValueError(
                f"embedding_loss={self.embedding_loss!r} needs an embedding layer: set embedding_dim "
                "(ELoPE uses 512)."
            )
        if self.kmax_weight_epochs and getattr(self.extractor, "pooling", None) != "kmax_weighted":
            raise ValueError(
                f"kmax_weight_epochs={self.kmax_weight_epochs} fine-tunes weighted k-max pooling: it needs "
                "extractor=CNNFeatureExtractor(pooling='kmax_weighted')."
            )

    def _pool_weight_epochs(self):
        return self.kmax_weight_epochs

    # ELoPE's embedding loss: a ClassMeanLoss in ``aux`` (its means a buffer, checkpointed).
    def _begin_training(self, ctx):
        if self.embedding_loss is None:
            return None
        loss = self.embedding_loss
        if isinstance(loss, str):  # (gamma is used by "class_means" only)
            loss = ClassMeanLoss(loss, self.class_mean_rate, self.between_weight, self.between_margin)
        loss = copy.deepcopy(loss).to(ctx.device)  # the parameter itself stays untouched
        net = ctx.net
        feats = (ctx.begin_data.pooled(net, ctx.train_idx).float() - net.mean) / net.scale
        loss.start(net.head[0](feats), ctx.labels(ctx.train_idx), n_classes=int(ctx.y.max()) + 1)
        return loss

    def _aux_param_groups(self, aux):
        return []  # the class means are buffers updated by eq. 6-7, not by the optimiser

    def _fit_memo(self, X, y, sample_weight, classes):
        """The teacher's softened log-probabilities of every training sample (rows in
        sample order, columns in ``classes`` order), computed once per fit."""
        if self.teacher is None or self.distillation_weight == 0:
            return {}
        teacher = self.teacher
        try:
            check_is_fitted(teacher)
        except NotFittedError:  # fitted on a clone: the parameter stays as given
            kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
            teacher = clone(teacher).fit(X, y, **kwargs)
        return {"teacher_log_proba": _teacher_log_proba(teacher, X, classes, self.distillation_temperature, len(y))}

    def _training_loss(self, ctx, batch):
        x, t, w, rows = batch
        if ctx.aux is None:
            return self._supervised_loss(ctx, ctx.data.forward(ctx.net, x), t, w, rows)
        emb = ctx.net.head[0](ctx.data.features(ctx.net, x))  # the embedding layer's output
        keep = w > 0
        extra = ctx.aux(emb[keep], t[keep])
        return self._supervised_loss(ctx, ctx.net.head[1:](emb), t, w, rows) + self.embedding_loss_weight * extra  # eq. (1)

    def _supervised_loss(self, ctx, outputs, t, w, rows):
        """The cross-entropy, or with a teacher ``(1 - lambda) L_CE + lambda L_KD``."""
        ce = self._loss(outputs, t, w)
        target = ctx.memo.get("teacher_log_proba")
        if target is None:
            return ce
        lam = float(self.distillation_weight)
        kd = distillation_loss(outputs, target[rows.to(target.device)].to(outputs.device), w,
                               self.distillation_temperature)
        return (1 - lam) * ce + lam * kd

    def _end_training(self, ctx):
        self.class_means_ = None if ctx.aux is None else ctx.aux.means.cpu().numpy().astype(np.float64)

    def _make_head(self, n_features, n_classes):
        if self.embedding_dim is None:
            return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(n_features, n_classes))
        return nn.Sequential(
            nn.Linear(n_features, self.embedding_dim),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.embedding_dim, n_classes),
        )



def _teacher_log_proba(teacher, X, classes, temperature, n_samples):
    """``soften(teacher.predict_proba(X))`` with its columns in ``classes`` order; clear
    errors for a teacher of other classes or with malformed probabilities."""
    name = type(teacher).__name__
    # labels compared by repr, so that 0 and 0.0 (or "1" and 1) count as different classes
    own = {repr(c): i for i, c in enumerate(np.asarray(getattr(teacher, "classes_", [])).tolist())}
    wanted = [repr(c) for c in np.asarray(classes).tolist()]
    if own.keys() != set(wanted):
        missing = [k for k in wanted if k not in own] or [k for k in own if k not in wanted]
        raise ValueError(f"teacher={name} predicts {len(own)} classes and y has {len(wanted)}: distillation needs "
                         f"the same classes, labels of the same type (e.g. {missing[0]} is in one only).")
    proba = np.asarray(teacher.predict_proba(X), dtype=np.float64)
    if proba.shape != (n_samples, len(own)):
        raise ValueError(f"teacher={name}.predict_proba returned shape {proba.shape}, expected "
                         f"({n_samples}, {len(own)}): a row per sample, a column per class.")
    if not np.isfinite(proba).all() or (proba < 0).any():
        raise ValueError(f"teacher={name}.predict_proba returned negative or non-finite probabilities.")
    proba = proba[:, [own[k] for k in wanted]]
    return soften(torch.as_tensor(proba), temperature)
