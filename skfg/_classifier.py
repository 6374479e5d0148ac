"""``BaseTorchClassifier``: what every skfg torch classifier shares.

Subclasses define the head (``_make_head``) and the loss (``_loss``); this base does the
rest: input validation (features, or images through ``extractor``), label encoding,
the validation split, building the network (with ``trainable_blocks`` of the backbone
and the frozen-prefix cache), calling :func:`skfg._training.fit_loop`, prediction
(``predict == classes_[argmax(predict_proba)]``) and pickling.
"""

import hashlib
import json
import math
import os
from abc import ABCMeta, abstractmethod
from dataclasses import replace
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import (KnownLabelsScoreMixin, TorchStateMixin, atomic_fit, check_features, check_images_and_labels,
                    check_sample_weight, encode_labels, holdout_split, resolve_device)
from ._data import FeatureData, FitContext, ImageData, PooledData, predict_images
from ._engine import cached_engine, resolve_engine
from ._messages import warn
from ._network import FeatureNet, build_trunk, trunk_settings
from ._training import (MIN_WARMUP_STEPS, OPTIMIZERS, PRECISIONS, SCHEDULES, fit_loop, make_generator,
                        make_optimizer, make_scheduler, resolve_precision, small_set_lr_factor)
from .backbones import by_reference, state_fingerprint
from .images import Augmentation, ImageSource, Preprocessing
from .metrics import entropy


# The "auto" settings on features (no extractor).
FEATURE_DEFAULTS = {"trainable_blocks": 0, "optimizer": "adam", "lr": 3e-3, "weight_decay": 1e-4, "max_epochs": 60,
                    "label_smoothing": 0.0, "warmup_epochs": 0, "validation_fraction": 0.1, "backbone_lr_scale": 0.1,
                    "head_epochs": 0, "divergence_guard": None}

# The fine-tuning recipe: what the parameters left at "auto" are when ``extractor`` is
# set (the CNN is trained end to end). Chosen on the val split of stanford_cars_a with
# EfficientNet-Lite0 (benchmarks/recipe.py; docs/training.rst lists the measurements).
FINE_TUNE_RECIPE = {
    "trainable_blocks": "all",
    # linear probing first (on the frozen CNN's features, computed once: seconds), so the
    # fine-tuning starts from a trained head; a random head's gradients disturb the CNN
    "head_epochs": 10,
    # AdamW at 3e-3 with weight decay 0.05: better on val than SGD (Nesterov, 0.01, wd 1e-4)
    # on each of 3 seeds at full length, +3.5 val / +3.4 +- 2.5 test points paired
    # (recipe.md, rows default_adamw and recipe_default; issue 46)
    "optimizer": "adamw",
    "lr": 3e-3,  # the head's; the backbone's is lr * backbone_lr_scale
    "backbone_lr_scale": 2 / 3,
    "weight_decay": 0.05,  # decoupled (AdamW); none on biases and normalisation weights
    # 11 epochs at the extractor's 224 px (training crops of 179 px): about the time of 22
    # at 160 px, and better on val on each of 3 seeds (default_candidate.md; issue 46)
    "max_epochs": 11,
    "label_smoothing": 0.1,
    "warmup_epochs": 1,
    # an epoch whose training loss is above 1.5 x the lowest so far goes back to that
    # epoch's weights at half the learning rate: without it one seed in three of a
    # 12-class, 280-image subset diverged to 2 predicted classes (small_set.md)
    "divergence_guard": 1.5,
    "batch_size": 32,
    # every training image trains; with a fixed cosine schedule the last epoch is kept
    # (a small set holds out SMALL_SET_VALIDATION_FRACTION, below)
    "validation_fraction": 0.0,
}

# Fine-tuning with validation_fraction="auto" on fewer images than this holds out
# SMALL_SET_VALIDATION_FRACTION of them (stratified, when that is an image a class at
# least), and keeps the linear probe (head_epochs) instead of the fine-tuned network when
# the probe scores higher there: on a few hundred images a fine-tune can end below the
# frozen features' head (issue 46). The winner is then fitted again on every image.
SMALL_SET_IMAGES = 1000
SMALL_SET_VALIDATION_FRACTION = 0.1


class BaseTorchClassifier(TorchStateMixin, KnownLabelsScoreMixin, ClassifierMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class of skfg's torch classifiers; not used directly."""

    # What the "auto" settings are on features (no extractor) and when fine-tuning.
    _feature_defaults = FEATURE_DEFAULTS
    _fine_tune_defaults = FINE_TUNE_RECIPE

    _parameter_constraints = {
        "extractor": [None, HasMethods(["fit", "transform"])],
        "trainable_blocks": [Interval(Integral, 0, None, closed="left"), StrOptions({"all", "auto"})],
        "augment": ["boolean", Augmentation],
        "cache_frozen": ["boolean"],
        "head_epochs": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "warm_start": ["boolean"],
        "optimizer": [StrOptions(set(OPTIMIZERS) | {"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "weight_decay": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "schedule": [StrOptions(set(SCHEDULES))],
        "warmup_epochs": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "label_smoothing": [Interval(Real, 0, 1, closed="left"), StrOptions({"auto"})],
        "precision": [StrOptions(set(PRECISIONS))],
        "ema_decay": [None, Interval(Real, 0, 1, closed="neither")],
        "max_grad_norm": [None, Interval(Real, 0, None, closed="neither")],
        "divergence_guard": [None, Interval(Real, 1, None, closed="neither"), StrOptions({"auto"})],
        "freeze_batchnorm": ["boolean"],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="left"), StrOptions({"auto"})],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "device": [str, None],
        "checkpoint_dir": [str, None],
        "verbose": ["verbose", StrOptions({"auto"})],
    }

    # Checks of sklearn's suite that cannot hold for a mini-batch SGD learner, with why.
    _expected_failed_checks = {
        "check_sample_weight_equivalence_on_dense_data": (
            "weights scale each sample's loss; with shuffled mini-batches and early "
            "stopping, repeating a sample is not the same optimisation path"
        ),
    }

    # ------------------------------------------------------------ subclass API
    # Hooks take the per-fit context (``ctx``, a :class:`skfg._data.FitContext`) and at
    # most a mini-batch or rows; ``ctx.aux`` is what ``_begin_training`` returned.
    @abstractmethod
    def _make_head(self, n_features, n_classes):
        """The trainable module mapping pooled features to the loss's inputs."""

    def _loss(self, outputs, y, w):
        """Weighted mean cross-entropy of the outputs taken as logits, with the label
        smoothing of ``label_smoothing`` (0 for an all-zero-weight batch)."""
        ce = F.cross_entropy(outputs.float(), y, reduction="none", label_smoothing=float(self._setting("label_smoothing")))
        return (ce * w).sum() / w.sum().clamp_min(1e-12)

    def _proba(self, outputs):
        return torch.softmax(outputs, dim=1)

    def _begin_training(self, ctx):
        """Called once the network is built and standardised; returns ``aux``, an optional
        module trained with the network (checkpointed and restored with it), or None."""
        return None

    def _training_loss(self, ctx, batch):
        """Loss of a mini-batch ``(x, targets, weights, rows)``."""
        x, t, w, _ = batch
        return self._loss(ctx.data.forward(ctx.net, x), t, w)

    def _validation_outputs(self, ctx, idx):
        """Outputs of rows ``idx`` comparable to what ``_outputs`` gives at predict time."""
        return ctx.data.outputs(ctx.net, idx)

    def _epoch_start(self, ctx, epoch):
        """Called before each training epoch (0-based; also after a resume)."""

    def _end_training(self, ctx):
        """Called with the restored best weights (under ``torch.no_grad``); set head-specific
        fitted attributes."""

    def _aux_param_groups(self, aux):
        """Optimiser groups of ``aux`` (``{"params", "lr_scale", "weight_decay"}``)."""
        return [] if aux is None else [{"params": aux.parameters(), "lr_scale": 1.0}]

    def _check_params(self):
        """Checks of parameter combinations, before any work (raise ``ValueError``)."""

    def _fit_memo(self, X, y, sample_weight, classes):
        """Values computed once per ``fit`` from its own arguments (``X``, ``y`` and
        ``sample_weight`` as given, ``classes`` the sorted labels), before any training:
        every training run's ``ctx.memo`` starts as a copy of this dict."""
        return {}

    def _pool_weight_epochs(self):
        """Epochs of the second step of ELoPE's schedule for ``pooling="kmax_weighted"``
        (0: the pooling weights train from the start)."""
        return 0

    # ---------------------------------------------------------------- fitting
    def resolved_param(self, name, y=None):
        """The value parameter ``name`` takes in ``fit``, with ``"auto"`` resolved: the
        fine-tuning recipe's (``FINE_TUNE_RECIPE``) when the classifier has an extractor,
        the defaults for features without one.

        Three settings also depend on the training labels when fine-tuning; give ``y``
        for the values a fit on those labels uses: ``validation_fraction``
        (``SMALL_SET_VALIDATION_FRACTION`` below ``SMALL_SET_IMAGES`` images, when that
        holds out an image a class at least), ``batch_size`` (at least 8 mini-batches an
        epoch) and ``lr`` (times :func:`~skfg._training.small_set_lr_factor` of the
        mini-batches an epoch). Without ``y``: the values of a large set.

        Parameters
        ----------
        name : str
            A parameter of the estimator (``"lr"``, ``"max_epochs"``, ``"label_smoothing"``, ...).
        y : array-like of shape (n_samples,), optional
            The training labels ``fit`` will be given.

        Returns
        -------
        value

        Examples
        --------
        >>> from skfg import CNNFeatureExtractor, SoftmaxClassifier
        >>> SoftmaxClassifier().resolved_param("max_epochs") != SoftmaxClassifier(
        ...     extractor=CNNFeatureExtractor()).resolved_param("max_epochs")
        True
        """
        if name not in self.get_params(deep=False):
            raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
        if y is None or name not in ("validation_fraction", "batch_size", "lr"):
            return self._setting(name)
        y = np.asarray(y)
        fraction = self._validation_fraction(len(y), len(np.unique(y)))
        n_train = len(y) - int(round(fraction * len(y)))
        if name == "validation_fraction":
            return fraction
        if name == "batch_size":
            return self._batch_size(n_train)
        return self._setting("lr") * self._lr_factor(n_train)

    def _setting(self, name):
        """Parameter ``name``, with ``"auto"`` resolved (:meth:`resolved_param`)."""
        value = getattr(self, name)
        if isinstance(value, str) and value == "auto":
            return (self._feature_defaults if self.extractor is None else self._fine_tune_defaults)[name]
        return value

    def _small_set_split(self, n_samples, n_classes):
        """Whether ``validation_fraction="auto"`` holds out a small set's split when
        fine-tuning: fewer than ``SMALL_SET_IMAGES`` images, and an image a class at least."""
        return (self.validation_fraction == "auto" and self.extractor is not None and n_samples < SMALL_SET_IMAGES
                and round(SMALL_SET_VALIDATION_FRACTION * n_samples) >= n_classes)

    def _validation_fraction(self, n_samples, n_classes):
        """``validation_fraction``, with a small set's split (:meth:`_small_set_split`)."""
        if self._small_set_split(n_samples, n_classes):
            return SMALL_SET_VALIDATION_FRACTION
        return self._setting("validation_fraction")

    def _lr_factor(self, n_train):
        """The factor of ``lr="auto"`` when fine-tuning ``n_train`` images: fewer mini-batches
        an epoch than the recipe's set, a smaller peak rate (:func:`small_set_lr_factor`)."""
        if self.lr != "auto" or self.extractor is None:
            return 1.0
        return small_set_lr_factor(math.ceil(n_train / self._batch_size(n_train)))

    def _augmentation(self):
        """The training augmentation (an :class:`~skfg.images.Augmentation`), or None."""
        if isinstance(self.augment, Augmentation):
            return self.augment.check()
        return Augmentation() if self.augment else None

    def _batch_size(self, n_train):
        """``"auto"``: 64 on features (32 when fine-tuning a CNN), but small enough for at
        least 8 mini-batches per epoch (and at least 2 images, which BatchNorm needs to train)."""
        if self.batch_size == "auto":
            if self.extractor is None:
                return int(min(64, max(1, n_train // 8)))
            return int(min(self._fine_tune_defaults["batch_size"], max(2, n_train // 8)))
        return int(self.batch_size)

    def _validate_inputs(self, X, y, sample_weight):
        if self.extractor is None:
            check_features(X, type(self).__name__)
            X, y = validate_data(self, X, y, dtype=np.float32)
        else:
            X, y = check_images_and_labels(X, y)
        classes, y_enc = encode_labels(y, type(self).__name__)
        sample_weight = check_sample_weight(sample_weight, len(y_enc))
        # every loss divides by the batch's weight sum: only the ratios matter, and a mean of
        # 1 keeps weights of 1e-20 from vanishing under that sum's floor
        return X, classes, y_enc, (sample_weight / sample_weight.mean(dtype=np.float64)).astype(np.float32)

    def _build_network(self, n_features, n_classes, trunk=None, settings=None):
        """The untrained FeatureNet: ``trunk`` (a StagedNetwork) with the subclass's head.

        ``settings`` (:func:`skfg._network.trunk_settings`: layers, pooling) defaults to the
        fitted ``trunk_settings_``."""
        head = self._make_head(n_features, n_classes)
        if trunk is None:
            return FeatureNet(head, n_features)
        settings = self.trunk_settings_ if settings is None else settings
        layers = settings["layers"]
        used = trunk.stage_names[: max(trunk.stage_names.index(n) for n in layers) + 1]
        blocks = self._setting("trainable_blocks")
        n_train = len(used) if blocks == "all" else min(int(blocks), len(used))
        frozen = used[: len(used) - n_train]
        return FeatureNet(head, n_features, trunk, layers, settings["pooling"], settings["k"], settings["normalize"],
                          frozen, freeze_batchnorm=self.freeze_batchnorm)

    def _warm_start_from(self, net, classes):
        """Load the previous fit's weights into ``net`` (built for this fit, so the
        freezing of ``trainable_blocks`` is this fit's); clear errors when it cannot be the
        same network. Returns a digest of the loaded state (for the checkpoint signature)."""
        name = type(self).__name__
        if not np.array_equal(classes, self.classes_):
            raise ValueError(f"{name}(warm_start=True) needs the classes of the previous fit: it had "
                             f"{len(self.classes_)} classes, y has {len(classes)} (or other labels).")
        old, new = self.module_.state_dict(), net.state_dict()
        if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in new):
            diff = sorted(k for k in new.keys() | old.keys()
                          if k not in old or k not in new or old[k].shape != new[k].shape)
            raise ValueError(f"{name}(warm_start=True): the network of these parameters differs from the "
                             f"previous fit's (e.g. in {', '.join(diff[:3])}); the number of features, "
                             "embedding_dim, the extractor (or its absence) and the head must stay the same.")
        net.load_state_dict(old)
        return state_fingerprint(self.module_)

    def _make_data(self, X, net, device, preprocessing=None):
        """The training data: features, or images (with ``preprocessing``, an
        :class:`~skfg.images.Preprocessing`)."""
        if preprocessing is None:
            return FeatureData(np.asarray(X, dtype=np.float32), device)
        aug = self._augmentation()
        return ImageData(ImageSource(X), net, preprocessing, device, prefix_cache=self.cache_frozen and aug is None,
                         augment=aug)

    def _make_module(self, name):
        if self.extractor is None:
            return self._build_network(self.n_features_in_, len(self.classes_))
        return self._build_network(self.n_features_, len(self.classes_), build_trunk(self.trunk_settings_))

    def _pretrained_sources(self, name):
        settings = getattr(self, "trunk_settings_", None) if self.extractor is not None else None
        if name != "module_" or settings is None or not settings["packaged_weights"]:
            return []
        return [("trunk.", settings["backbone"])]

    def __setstate__(self, state):
        state = dict(state)
        old = state.pop("extractor_", None)  # saved before skfg 0.4: an unfitted extractor kept for its settings
        if old is not None and "trunk_settings_" not in state:
            state["preprocessing_"] = Preprocessing.from_extractor(old)
            state["trunk_settings_"] = trunk_settings(old.backbone, state["layers_"], old.pooling, old.k,
                                                      old.normalize,
                                                      by_reference(old.backbone, old.weights))
        super().__setstate__(state)

    @property
    def extractor_(self):
        """Deprecated (skfg 0.4, removed in 0.5): an unfitted clone of ``extractor``. The
        fitted settings are in ``preprocessing_`` and ``trunk_settings_``; the trained CNN
        is in ``module_``."""
        if self.extractor is None or "preprocessing_" not in vars(self):
            raise AttributeError(f"{type(self).__name__} has no extractor_ (fitted on images only; deprecated).")
        warn("extractor_ is deprecated since skfg 0.4 and will be removed in 0.5: use preprocessing_ and "
             "trunk_settings_ (the trained CNN is in module_).", FutureWarning)
        return clone(self.extractor)

    def _signature(self, X, y, sample_weight, memo=None):
        """Identifies a training run for its checkpoints: the parameters, the training data
        (the features' bytes or the images' content, labels, weights) and what
        :meth:`_fit_memo` computed (a teacher's predictions, say). Empty without checkpoints."""
        if self.checkpoint_dir is None:
            return ""
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in ("verbose", "checkpoint_dir", "device")}
        h = hashlib.sha1(json.dumps(params, sort_keys=True, default=repr).encode())
        h.update(X.fingerprint().encode() if isinstance(X, ImageSource) else np.ascontiguousarray(X).tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
        h.update(np.ascontiguousarray(sample_weight).tobytes())
        for key in sorted(memo or {}):
            h.update(key.encode() + np.ascontiguousarray(torch.as_tensor(memo[key]).cpu().numpy()).tobytes())
        return f"{type(self).__name__}:{h.hexdigest()}"

    @atomic_fit
    def fit(self, X, y, sample_weight=None):
        """Train the network.

        Parameters
        ----------
        X : array-like
            Features ``(n_samples, n_features)``, or images (paths, uint8 arrays, PIL
            images) when ``extractor`` is set.
        y : array-like of shape (n_samples,)
            Class labels (strings or integers).
        sample_weight : array-like of shape (n_samples,), optional
            Per-sample weights of the loss.

        Returns
        -------
        self

        Notes
        -----
        A failed fit (an error or ``KeyboardInterrupt`` before the first epoch ends)
        leaves the estimator as it was, fitted or not.
        """
        self._validate_params()
        self._check_params()
        given = X, y, sample_weight
        X, classes, y_enc, sample_weight = self._validate_inputs(X, y, sample_weight)
        memo = self._fit_memo(*given, classes)
        warm = self.warm_start and hasattr(self, "module_")
        fitted = self._fit_network(X, classes, y_enc, sample_weight, warm, memo=memo)
        comparison = fitted["comparison"]
        if comparison is not None and self._small_set_split(len(y_enc), len(classes)) and not warm \
                and not fitted["result"]["interrupted"]:
            # The small set's split has chosen between the probe and the fine-tune; the
            # winner is fitted again on every image, as GridSearchCV(refit=True) does, so
            # that the choice does not cost a tenth of the training images (on 10 images
            # a class that cost more than the choice gained: small_data.md, no_split).
            fitted = self._fit_network(X, classes, y_enc, sample_weight, warm, refit=not fitted["kept_probe"],
                                       memo=memo)
        # Training finished: set the fitted attributes together.
        if fitted["extractor"] is not None:  # CNN: module_
            self.preprocessing_, self.trunk_settings_, self.layers_, self.n_features_ = fitted["extractor"]
        self.module_ = fitted["net"].eval()
        self.classes_ = classes
        self.device_ = fitted["device"]
        result = fitted["result"]
        self.history_ = result["history"]
        self.best_epoch_ = result["best_epoch"]
        self.n_iter_ = len(result["history"])
        self.interrupted_ = result["interrupted"]
        self.fine_tuned_ = bool(fitted["fine_tuned"])
        self.probe_comparison_ = comparison
        return self

    def _fit_network(self, X, classes, y_enc, sample_weight, warm, refit=None, memo=None):
        """``fit``'s training: ``{"net", "result", "fine_tuned", "kept_probe", "comparison",
        "extractor", "device"}`` (the network, ``_train``'s result, whether the CNN was
        fine-tuned, whether the comparison kept the probe instead, the split's scores of probe
        and fine-tune or None, the fitted extractor's settings or None, the device); sets no
        attribute.

        ``refit=None``: a fit as the parameters say (a small set's split compares the probe
        with the fine-tune). ``refit=True`` / ``False``: on every image (no split), the
        fine-tune or the probe alone, after such a comparison chose it. ``memo``: what
        :meth:`_fit_memo` returned."""
        device = resolve_device(self.device)
        generator = make_generator(self.random_state)
        fraction = self._validation_fraction(len(y_enc), len(classes)) if refit is None else 0.0
        n_val = int(round(fraction * len(y_enc)))
        train_idx, val_idx = holdout_split(len(y_enc), n_val, y_enc, check_random_state(self.random_state))
        if len(y_enc) - n_val < len(classes):  # (0.99, say): all held out, or too few left to train on
            warn(f"validation_fraction={fraction} holds out {n_val} of {len(y_enc)} samples, leaving fewer "
                 f"training samples than the {len(classes)} classes" +
                 ("; training on all without a validation split." if val_idx is None else "."))
        fitted_ext = preprocessing = None
        if self.extractor is None:
            net = self._build_network(X.shape[1], len(classes))
        else:
            ext = clone(self.extractor).fit()  # the one clone of a fit: its backbone becomes module_.trunk
            preprocessing, settings = ext.preprocessing_, ext.trunk_settings()
            fitted_ext = (preprocessing, settings, ext.layers_, ext.n_features_out_)  # set once training is done
            net = self._build_network(ext.n_features_out_, len(classes), ext.network_, settings)
            blocks = self._setting("trainable_blocks")
            if blocks != "all" and blocks > len(net.stages):
                warn(f"trainable_blocks={blocks}, but the extractor's layers use only {len(net.stages)} stages "
                     f"({', '.join(net.stages)}); all of them train.")
        warm_digest = self._warm_start_from(net, classes) if warm else None
        net = net.to(device)
        data = self._make_data(X, net, device, preprocessing)
        net.eval()  # BatchNorm statistics untouched
        pooled = None
        if self.extractor is not None:  # one pass over the images, reused until the CNN trains
            pooled = data.pooled(net, np.arange(len(y_enc))).float()
        if not warm:
            # Centre the initial features per dimension and divide by one scale, their RMS
            # standard deviation: per-dimension scales would amplify the drift of features
            # that are tiny on their own (L2-normalised) once the CNN trains. (A warm
            # start keeps the previous fit's standardisation, which its weights expect.)
            feats = data.pooled(net, train_idx).float() if pooled is None else pooled[torch.as_tensor(train_idx)]
            mean, scale = _standardisation(feats)
            net.mean.copy_(mean)
            net.scale.fill_(scale)

        signature = self._signature(X, y_enc, sample_weight, memo) + ("" if refit is None else ":refit")
        if warm_digest is not None:  # a checkpoint resumes only the training that started from these weights
            signature += ":warm:" + warm_digest
        ctx = FitContext(net, data, y_enc, train_idx, val_idx, sample_weight, generator, device,
                         start_data=None if pooled is None else PooledData(pooled, device), memo=dict(memo or {}))
        # a small set's automatic split serves the comparison of probe and fine-tune only:
        # each runs its whole schedule and keeps its last epoch, as the recipe does (on ~10
        # images a class, stopping early or picking the best epoch picked noise)
        whole = refit is None and self._small_set_split(len(y_enc), len(classes))
        head_result = probe = None
        if self.extractor is not None and self._setting("head_epochs") > 0:
            # linear probing, then fine-tuning: the head first learns on the frozen CNN's features
            head_net = FeatureNet(net.head, pooled.shape[1]).to(device)  # shares the head with net
            head_net.load_state_dict({"mean": net.mean, "scale": net.scale}, strict=False)
            head_ctx = replace(ctx, net=head_net, data=FeatureData(pooled.cpu(), device), start_data=None)
            head_result = self._train(head_ctx, self._setting("head_epochs"), signature + ":head", whole_schedule=whole)
            if head_ctx.aux is None and val_idx is not None:  # the probe, kept if it beats the fine-tune
                probe = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if refit is False and head_result is not None:  # the probe won the comparison: it alone, on every image
            with torch.no_grad():
                self._end_training(ctx)
            return {"net": net, "result": head_result, "fine_tuned": False, "kept_probe": True, "comparison": None,
                    "extractor": fitted_ext, "device": device}
        n_second = self._pool_weight_epochs() if net.pools is not None else 0
        if n_second:  # ELoPE's two steps: plain k-max first (weights fixed at 1) ...
            net.pools.requires_grad_(False)
        n_head = len(head_result["history"]) if head_result is not None else 0
        lr_factor = self._lr_factor(len(train_idx))
        result = self._train(ctx, self._setting("max_epochs"), signature, lr_scale=lr_factor, epoch_offset=n_head,
                             whole_schedule=whole)
        if n_second:  # ... then everything at lr / 10 (the pooling weights at lr)
            net.pools.requires_grad_(True)
            second = self._train(ctx, n_second, signature + ":weighted", lr_scale=0.1 * lr_factor, pool_lr_scale=10.0,
                                 epoch_offset=n_head + len(result["history"]), whole_schedule=whole)
            result = _chain(result, second)
        fine_tuned = net.trunk is not None and any(p.requires_grad for p in net.trunk_parameters())
        kept_probe = probe is not None and fine_tuned and _probe_wins(head_result, result)
        comparison = None
        if probe is not None and fine_tuned:
            comparison = {"probe": _kept_score(head_result), "fine_tune": _kept_score(result)}
        if kept_probe:
            net.load_state_dict(probe)
            with torch.no_grad():
                self._end_training(ctx)
            warn(f"Fine-tuning the CNN scored {_kept_score(result):.3f} on the held-out validation split, below "
                 f"the {_kept_score(head_result):.3f} of the head trained on its frozen features (head_epochs); "
                 "keeping that head and the pretrained CNN (fine_tuned_ is False). More training images, or a "
                 "lower lr, may let fine-tuning pay.", RuntimeWarning)
            fine_tuned = False
        if head_result is not None:
            result = _chain(head_result, result)
            if kept_probe:
                result["best_epoch"] = head_result["best_epoch"]
        return {"net": net, "result": result, "fine_tuned": fine_tuned, "kept_probe": kept_probe,
                "comparison": comparison, "extractor": fitted_ext, "device": device}

    def _train(self, ctx, max_epochs, signature, lr_scale=1.0, pool_lr_scale=1.0, epoch_offset=0,
               whole_schedule=False):
        """Train ``ctx.net`` (already standardised) on ``ctx.data[ctx.train_idx]``; the shared
        part of ``fit``, of the head warm-up and of later fine-tuning. ``ctx.train_idx`` may
        repeat samples (oversampling); ``signature=None`` disables checkpoints;
        ``lr_scale`` multiplies every learning rate; ``pool_lr_scale`` multiplies the rate
        of the weighted k-max pooling weights once more (ELoPE's second step: 10, the new
        weights at ``lr``); ``epoch_offset``: the epochs of the fit's earlier phases, for the
        epoch numbers of warnings (as in ``history_``); ``whole_schedule``: no early stopping,
        and the last epoch is kept (the validation split only reports)."""
        net, device, val_idx = ctx.net, ctx.device, ctx.val_idx
        with torch.no_grad():
            ctx.aux = self._begin_training(ctx)
        ctx.start_data = None  # read once: the CNN changes from here on
        module = net if ctx.aux is None else torch.nn.ModuleDict({"net": net, "aux": ctx.aux})

        def step(batch):
            batch = tuple(v.to(device) for v in batch)
            return self._training_loss(ctx, batch), len(batch[1])

        validate = None
        if val_idx is not None:
            y_val = ctx.labels(val_idx)
            w_val = torch.as_tensor(ctx.sample_weight[val_idx], device=device)

            def score_split():
                out = self._validation_outputs(ctx, val_idx)
                return (out.argmax(1) == y_val).float().mean(), self._loss(out, y_val, w_val)

            validate = score_split

        groups = [{"params": [p for p in net.head.parameters() if p.requires_grad], "lr_scale": 1.0}]
        if net.trunk is not None:
            groups.append({"params": list(net.trunk_parameters()), "lr_scale": self._setting("backbone_lr_scale")})
            # the K weights of weighted k-max pooling start at 1 (decay would pull them to 0)
            groups.append({"params": net.pool_parameters(), "lr_scale": pool_lr_scale, "weight_decay": 0.0})
        groups += [dict(g, params=list(g["params"])) for g in self._aux_param_groups(ctx.aux)]
        if any(p.requires_grad for g in groups for p in g["params"]):
            optimizer = make_optimizer(groups, self._setting("optimizer"), self._setting("lr") * lr_scale,
                                       self._setting("weight_decay"), self.momentum)
            loader = ctx.data.loader(ctx.train_idx, ctx.y, ctx.sample_weight, self._batch_size(len(ctx.train_idx)),
                                     ctx.generator, True)
            result = fit_loop(
                module,
                loader,
                step,
                optimizer=optimizer,
                scheduler=make_scheduler(optimizer, self.schedule, max_epochs, len(loader),
                                         self._setting("warmup_epochs"), MIN_WARMUP_STEPS),
                precision=resolve_precision(self.precision, device),
                ema_decay=self.ema_decay,
                max_grad_norm=self.max_grad_norm,
                divergence_factor=self._setting("divergence_guard"),
                max_epochs=max_epochs,
                validate=validate,
                patience=self.n_iter_no_change if val_idx is not None and not whole_schedule else None,
                keep="last" if whole_schedule else "best",
                generator=ctx.generator,
                checkpoint_dir=_phase_dir(self.checkpoint_dir, signature) if signature is not None else None,
                signature=signature or "",
                verbose=self.verbose,
                epoch_callback=lambda epoch: self._epoch_start(ctx, epoch),
                epoch_offset=epoch_offset,
            )
        else:  # nothing trainable (e.g. a fixed RBF vote on features): no epochs to run
            result = {"history": [], "best_epoch": 0, "interrupted": False}
        net.eval()
        with torch.no_grad():
            self._end_training(ctx)
        return result

    # ------------------------------------------------------------- prediction
    def _outputs(self, X):
        check_is_fitted(self, "module_")
        if self.extractor is None:
            check_features(X, type(self).__name__)
            X = validate_data(self, X, dtype=np.float32, reset=False)
            return FeatureData(X, self.device_).outputs(self.module_.eval(), np.arange(len(X)))
        # (images: the engine runs its own copy in eval mode; switching module_'s ~250
        # submodules to eval on every call cost ~1.5 ms, a fifth of a one-image predict)
        source = ImageSource(X)
        return predict_images(self._image_engine(), source, np.arange(len(source)), self.preprocessing_, self.device_)

    def _image_engine(self, view=None, name="outputs"):
        """``module_`` (or the module ``view(module_)``) on input batches of
        ``preprocessing_``, run by the engine of the extractor's ``engine`` parameter
        (:func:`skfg._engine.cached_engine`: built at the first prediction, rebuilt after
        the weights change, never pickled)."""
        engine = resolve_engine(getattr(self.extractor, "engine", "auto"), self.device_)
        example = lambda: self.preprocessing_.example_batch(self.device_)  # noqa: E731 - (made only to build)
        build = None if view is None else (lambda: view(self.module_))
        return cached_engine(self.module_, engine, example, build=build, key=(name, self.preprocessing_.image_size))

    def predict_proba(self, X):
        """Class probabilities; rows sum to 1, columns follow ``classes_``.

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        with torch.inference_mode():
            return self._proba(self._outputs(X).double()).cpu().numpy()  # float64: rows sum to 1

    def decision_function(self, X):
        """Class scores whose largest entry per row is the prediction.

        The network's outputs before normalisation into probabilities: the logits of
        :class:`SoftmaxClassifier`, the scaled cosines ``s * cos(w_c, phi(x))`` of
        :class:`ImprintedClassifier`, the log RBF votes of :class:`ImpostorClassifier`
        (a class with no candidate impostor among the searched neighbours scores -1e4
        instead of ``-inf``).

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            With two classes, as in scikit-learn, ``scores[:, 1] - scores[:, 0]``: positive
            for ``classes_[1]``.
        """
        with torch.inference_mode():
            scores = self._outputs(X).double().clamp_min(-1e4).cpu().numpy()
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X):
        """Predicted labels: ``classes_[argmax(predict_proba(X))]``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def open_set_score(self, X):
        """Open-set score: the entropy of ``predict_proba`` (higher: more likely an unknown class).

        Impostor-networks section 4.2: a classifier that is less confident on images of
        classes it never saw can flag them; compare the scores of seen and unseen
        classes with :func:`skfg.metrics.ks_distance`.

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.

        Returns
        -------
        score : ndarray of shape (n_samples,)
            In nats, between 0 and ``log(n_classes)``.
        """
        return entropy(self.predict_proba(X))


_TINY = float(torch.finfo(torch.float32).tiny)  # the smallest scale of float32 features


def _standardisation(feats):
    """``(per-dimension mean, one scale)`` of float32 features: their RMS standard deviation.

    In float32 as always; in float64 when float32 overflows or underflows (features scaled
    by 1e30 or 1e-30, which would otherwise train to chance)."""
    mean = feats.mean(0)
    scale = feats.var(0, unbiased=False).mean().sqrt()
    if torch.isfinite(mean).all() and torch.isfinite(scale) and scale >= 1e-6:
        return mean, float(scale)
    wide = feats.double()
    return wide.mean(0), float(wide.var(0, unbiased=False).mean().sqrt().clamp_min(_TINY))


def _phase_dir(checkpoint_dir, signature):
    """Where a training phase keeps its checkpoint: ``checkpoint_dir`` for the main phase,
    a sub-folder for the others (``head``, ``weighted``: the signature's suffix), so a
    finished head phase is not taken for a fine-tuning checkpoint of other data."""
    if checkpoint_dir is None:
        return None
    phase = signature.rsplit(":", 1)[-1] if signature.endswith((":head", ":weighted")) else ""
    return os.path.join(checkpoint_dir, phase) if phase else checkpoint_dir


def _kept_score(result):
    """The validation score of the epoch whose weights ``_train`` kept (None: none)."""
    best = result["best_epoch"]
    return result["history"][best - 1]["val_score"] if best >= 1 else None


def _probe_wins(probe_result, tuned_result):
    """Whether the kept epoch of the probe scores strictly above the fine-tune's on the
    validation split (a tie keeps the fine-tuned network)."""
    probe, tuned = _kept_score(probe_result), _kept_score(tuned_result)
    return probe is not None and tuned is not None and probe > tuned


def _chain(first, second):
    """The result of two consecutive ``_train`` calls as one (epochs numbered on)."""
    n = len(first["history"])
    return {
        "history": first["history"] + [dict(h, epoch=h["epoch"] + n) for h in second["history"]],
        "best_epoch": n + second["best_epoch"],
        "interrupted": first["interrupted"] or second["interrupted"],
    }
