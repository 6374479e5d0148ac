"""``ImprintedClassifier``: a cosine classifier whose new classes are imprinted (Qi et al.).

imprinted-weights.txt: L2-normalised embeddings and L2-normalised class weights without
bias, times a scale ``s`` (eq. 8); a new class gets the normalised mean of its exemplars'
normalised embeddings as its weight row (section 4.2), instantly, without a gradient step.
"""

import copy
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import TransformerMixin
from sklearn.utils import _safe_indexing
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from torch import nn

from ._base import EmbeddingNamesMixin, atomic_fit, check_images_and_labels
from ._classifier import FEATURE_DEFAULTS, FINE_TUNE_RECIPE, BaseTorchClassifier
from ._data import FeatureData, FitContext, predict_images
from ._training import make_generator
from .images import ImageSource, train_transform


class _CosineHead(nn.Module):
    """``s * normalize(W) @ normalize(embed(x))`` (eq. 6-8): no bias, one scale ``s``."""

    def __init__(self, n_features, embedding_dim, n_classes, scale):
        super().__init__()
        self.embed = None if embedding_dim is None else nn.Linear(n_features, embedding_dim)
        dim = n_features if embedding_dim is None else embedding_dim
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_classes, dim)))
        if scale == "learn":
            self.scale = nn.Parameter(torch.tensor(10.0))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def embedding(self, x):
        """Unit-length embedding ``phi(x)``."""
        return F.normalize(x if self.embed is None else self.embed(x), dim=1)

    def forward(self, x):
        return self.scale * self.embedding(x) @ F.normalize(self.weight, dim=1).T


def _label_kind(values):
    kind = np.asarray(values).dtype.kind
    if kind == "O":
        kinds = {("str" if isinstance(v, str) else "number") for v in values}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    return "str" if kind in "US" else "number"


class ImprintedClassifier(EmbeddingNamesMixin, TransformerMixin, BaseTorchClassifier):
    """Cosine softmax classifier with a learned scale; new classes are added by imprinting.

    The classifier of imprinted-weights eq. (8): ``p(c | x) = softmax_c(s * w_c . phi(x))``
    with unit-length embeddings ``phi(x)`` and unit-length class weights ``w_c`` (no bias),
    so the prediction is the nearest class template (eq. 7). :meth:`imprint` adds a class
    from a few exemplars without any training: its weight is the normalised mean of their
    normalised embeddings (section 4.2).

    Parameters
    ----------
    embedding_dim : int or None, default=None
        Width of a learned linear embedding layer before the normalisation; ``None``
        normalises the (standardised) input features themselves.
    scale : "learn" or float, default="learn"
        ``s`` of eq. (8): one trainable scalar (initialised to 10), or a fixed value.
    fine_tune_epochs : int, default=0
        Epochs of fine-tuning after :meth:`partial_fit` imprints new classes
        ("Imprinting+FT"); 0 only imprints.
    fine_tune_lr : float, default=1e-4
        Learning rate of that fine-tuning for the templates and the scale: every
        parameter is already trained or imprinted, so it is lower than ``lr``, which
        trains the new layers of ``fit`` from scratch. Trunk stages train at
        ``fine_tune_lr * backbone_lr_scale`` (1e-5 by default). The paper (section 5)
        trains pre-trained layers at 1e-4 and new layers at 10x that, so these defaults
        are 10x below its scheme. With 10 epochs on stanford_cars_a features,
        ``fine_tune_lr=lr`` (3e-3) erases the head start of the imprinted templates
        (Imprinting+FT = Rand+FT, see ``docs/imprinting.rst``).
    replay : {"data", "weights"}, default="data"
        What keeps the base classes during that fine-tuning: ``"data"`` stores the
        training data given to ``fit`` (features, or the image references) and trains on
        it too; ``"weights"`` stores nothing and trains only the new templates and the
        scale. The stored data is saved with the model (``save_model``, joblib): a
        model file of ``replay="data"`` holds its training features, or the image paths
        or pixels, and their labels; fit with ``replay="weights"`` to share a file
        without them.
    calibrate_imprints : bool, default=True
        Give an imprinted template the trained templates' mean cosine ``a`` with the
        base data's mean embedding ``mu`` (``embedding_mean_``): ``w = a * u + sqrt(1 -
        a**2) * normalize(m - (m . u) u)`` with ``u = mu / |mu|`` and ``m`` the exemplars'
        mean embedding, instead of the paper's ``normalize(m)`` (``False``, section 4.2).
        Trained templates are nearly orthogonal to ``mu`` (the softmax gains nothing from
        the component every embedding shares) while a plain average of embeddings
        carries it, so plain imprinted templates score high on every input and out-vote
        the trained classes (see ``docs/imprinting.rst``).
    imprint_whitening : float, default=60.0
        With ``calibrate_imprints``: ``lambda`` of the shrunk whitening applied to an
        imprinted template's direction, ``d = (I + lambda * C)^-1 (m - (m . u) u)`` with
        ``C`` the covariance of the base data's unit embeddings (its leading components,
        ``embedding_components_``). A class mean points along the directions in which all
        images vary most, so its cosines spread wide over the base classes' images and it
        takes many of them; the trained templates avoid those directions. 0 keeps the
        direction of the mean (the rule before this parameter). Larger values keep more old-class predictions
        and recognise fewer novel images; 60 was chosen on the val split of a
        make-disjoint ``stanford_cars_a`` split on frozen features
        (``benchmarks/results/imprinting_whitening.md``).
    extractor, trainable_blocks, augment, cache_frozen, head_epochs, warm_start, backbone_lr_scale,
    momentum, schedule, warmup_epochs, label_smoothing, precision, ema_decay, freeze_batchnorm, max_epochs,
    batch_size, validation_fraction, n_iter_no_change, random_state, device, checkpoint_dir, verbose :
        As in :class:`skfg.SoftmaxClassifier` (``head_epochs="auto"`` is 0 here).
    max_grad_norm : float or None, default=None
        As in :class:`skfg.SoftmaxClassifier`.
    divergence_guard : float, None or "auto", default="auto"
        As in :class:`skfg.SoftmaxClassifier`, but ``"auto"`` is None (no guard) in both
        modes: the Adam fine-tuning here was measured without it.
    optimizer, lr, weight_decay : "auto" or as in :class:`skfg.SoftmaxClassifier`
        ``"auto"``: Adam at 3e-3 without weight decay, on features and when fine-tuning
        (the softmax recipe's SGD setting is not yet tuned for the cosine head).

    Attributes
    ----------
    classes_ : ndarray
        The trained classes (sorted), then the imprinted ones in the order they came.
    class_weights_ : ndarray of shape (n_classes, dim)
        Unit-length class templates ``w_c``.
    scale_ : float
        The scale ``s``.
    imprint_counts_ : ndarray of shape (n_classes,)
        Exemplars averaged into each imprinted class (0 for trained classes).
    embedding_mean_ : ndarray of shape (dim,)
        ``mu``: the mean unit-length embedding of the base training data (by ``fit``,
        and again after a ``partial_fit`` that fine-tunes on replayed data), the
        direction ``calibrate_imprints`` calibrates.
    embedding_components_ : ndarray of shape (n_components, dim)
        The leading principal axes of the base data's unit embeddings (at most 256),
        computed with ``embedding_mean_``, for ``imprint_whitening``.
    embedding_variance_ : ndarray of shape (n_components,)
        The variance of the base data's unit embeddings along each of those axes.
    embedding_noise_variance_ : float
        Their mean variance along every other axis.
    module_, history_, best_epoch_, n_iter_, interrupted_, fine_tuned_, probe_comparison_, n_features_in_,
    preprocessing_, trunk_settings_, layers_, n_features_ :
        As in :class:`skfg.SoftmaxClassifier`.

    See Also
    --------
    skfg.datasets.low_shot_split : The base / novel split of the paper's protocol.

    Examples
    --------
    >>> import numpy as np
    >>> from skfg import ImprintedClassifier
    >>> rng = np.random.RandomState(0)
    >>> centres = 4 * np.eye(6)[:3]
    >>> X = np.repeat(centres, 20, axis=0) + rng.randn(60, 6)
    >>> y = np.repeat(["a", "b", "c"], 20)
    >>> clf = ImprintedClassifier(random_state=0).fit(X, y)
    >>> new = 4 * np.eye(6)[3] + rng.randn(2, 6)       # two exemplars of a new class
    >>> clf.imprint(new, ["d", "d"]).classes_.tolist()
    ['a', 'b', 'c', 'd']
    >>> clf.predict([4 * np.eye(6)[3]]).tolist()
    ['d']
    """

    # Adam (the features' setting) also when fine-tuning; the rest of the recipe (all
    # stages, warm-up, augmentation, label smoothing) is shared. Not yet re-tuned on the
    # recipe's base.
    _feature_defaults = {**FEATURE_DEFAULTS, "weight_decay": 0.0}
    _fine_tune_defaults = {**FINE_TUNE_RECIPE, "optimizer": "adam", "lr": 3e-3, "backbone_lr_scale": 0.1,
                           "weight_decay": 0.0, "head_epochs": 0, "divergence_guard": None}

    _parameter_constraints = {
        **BaseTorchClassifier._parameter_constraints,
        "embedding_dim": [Interval(Integral, 1, None, closed="left"), None],
        "scale": [StrOptions({"learn"}), Interval(Real, 0, None, closed="neither")],
        "fine_tune_epochs": [Interval(Integral, 0, None, closed="left")],
        "fine_tune_lr": [Interval(Real, 0, None, closed="neither")],
        "replay": [StrOptions({"data", "weights"})],
        "calibrate_imprints": ["boolean"],
        "imprint_whitening": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        embedding_dim=None,
        *,
        scale="learn",
        fine_tune_epochs=0,
        fine_tune_lr=1e-4,
        replay="data",
        calibrate_imprints=True,
        imprint_whitening=60.0,
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
        self.scale = scale
        self.fine_tune_epochs = fine_tune_epochs
        self.fine_tune_lr = fine_tune_lr
        self.replay = replay
        self.calibrate_imprints = calibrate_imprints
        self.imprint_whitening = imprint_whitening
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

    def _make_head(self, n_features, n_classes):
        return _CosineHead(n_features, self.embedding_dim, n_classes, self.scale)

    def _end_training(self, ctx):
        net = ctx.net
        net.head.weight.copy_(F.normalize(net.head.weight, dim=1))  # stored templates are unit length

    @atomic_fit
    def fit(self, X, y, sample_weight=None):
        """Train the embedding and the cosine classifier on the base classes.

        Parameters
        ----------
        X : array-like
            Features ``(n_samples, n_features)``, or images when ``extractor`` is set.
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        super().fit(X, y, sample_weight)
        dim = self.module_.head.weight.shape[1]
        self.imprint_counts_ = np.zeros(len(self.classes_), dtype=np.int64)
        self._imprint_sums = np.zeros((len(self.classes_), dim))
        self._set_embedding_statistics(self._embed(X))
        # what partial_fit replays when fine-tuning (features, or the image references)
        self._replay = (self._replay_inputs(X), self.classes_[self._encode(y)]) if self.replay == "data" else None
        return self

    def _replay_inputs(self, X):
        if self.extractor is None:
            return validate_data(self, X, dtype=np.float32, reset=False)
        return X if isinstance(X, list) else np.asarray(X)  # paths or pixels, as given

    def _encode(self, y):
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        return np.array([index[c] for c in np.asarray(y).ravel().tolist()], dtype=np.int64)

    @atomic_fit
    def partial_fit(self, X, y, classes=None, *, imprint=True):
        """Imprint the new classes in ``(X, y)``, then fine-tune (``fine_tune_epochs > 0``).

        The paper's low-shot learning step: labels not in ``classes_`` (or imprinted
        before) are imprinted (:meth:`imprint`). Then, with ``fine_tune_epochs > 0``,
        the model trains for that many epochs on ``(X, y)`` together with the base
        training data (``replay="data"``), every class sampled equally often by
        oversampling the small ones ("Imprinting+FT"). With ``replay="weights"`` no base
        data is kept: the embedding and the base-class templates stay fixed, and only the
        new templates and the scale train. On an unfitted model, ``partial_fit`` is ``fit``.

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.
        y : array-like of shape (n_samples,)
        classes : array-like, optional
            Accepted for scikit-learn compatibility and ignored: new classes are taken
            from ``y`` and imprinted.
        imprint : bool, default=True
            Imprint first. ``False`` fine-tunes the templates the model has, as they are
            (every label in ``y`` must be in ``classes_``): e.g. templates set by hand,
            or the random ones of the paper's Rand+FT baseline.

        Returns
        -------
        self

        Notes
        -----
        All or nothing, like ``fit``: when imprinting or any epoch of the fine-tuning
        raises, the model is exactly as before the call (a ``KeyboardInterrupt`` after the
        first epoch keeps the best epoch, as in ``fit``).
        """
        if not hasattr(self, "module_"):
            return self.fit(X, y)
        y = column_or_1d(y, warn=True)
        if self.extractor is None:
            X = validate_data(self, X, dtype=np.float32, reset=False)
        else:
            check_images_and_labels(X, y)
        known = set(self.classes_.tolist())
        if not imprint:
            unknown = sorted({str(c) for c in y.tolist() if c not in known})
            if unknown:
                raise ValueError(f"imprint=False fine-tunes the model's own classes; y holds others: "
                                 f"{', '.join(unknown[:5])}")
        novel = np.array([imprint and (c not in known or self.imprint_counts_[self._class_index(c)] > 0)
                          for c in y.tolist()])
        if novel.any():
            sel = np.flatnonzero(novel)
            self.imprint(_safe_indexing(X, sel), y[sel])
        if self.fine_tune_epochs > 0:
            self._fine_tune(X, y)
        return self

    def _fine_tune(self, X, y):
        net, device = copy.deepcopy(self.module_), self.device_  # trained in place: the model changes only on success
        y_enc = self._encode(y)
        if self.replay == "data":
            base_X, base_y = self._replay
            X_all = _concat(base_X, X, self.extractor is not None)
            y_all = np.r_[self._encode(base_y), y_enc]
        else:
            X_all, y_all = X, y_enc
        # oversample: every class contributes as many samples per epoch as the largest one
        rng = np.random.RandomState(self.random_state if isinstance(self.random_state, int) else None)
        counts = np.bincount(y_all, minlength=len(self.classes_))
        target = counts.max()
        idx = np.concatenate([np.r_[m, rng.choice(m, target - len(m))] if len(m) < target else m
                              for m in (np.flatnonzero(y_all == c) for c in range(len(self.classes_))) if len(m)])
        frozen = []
        if self.replay == "weights":  # keep the embedding and the base templates
            frozen = [p for p in net.parameters() if p.requires_grad and p is not net.head.weight
                      and p is not getattr(net.head, "scale", None)]
            for p in frozen:
                p.requires_grad_(False)
            base = torch.as_tensor(self.imprint_counts_ == 0, device=net.head.weight.device)
            hook = net.head.weight.register_hook(lambda g: g.masked_fill(base[:, None], 0.0))
        try:
            data = self._make_data(X_all, net, device, None if self.extractor is None else self.preprocessing_)
            ctx = FitContext(net, data, y_all, idx, None, np.ones(len(y_all), dtype=np.float32),
                             make_generator(self.random_state), device)
            result = self._train(ctx, self.fine_tune_epochs, None, lr_scale=self.fine_tune_lr / self._setting("lr"))
        finally:
            for p in frozen:
                p.requires_grad_(True)
            if self.replay == "weights":
                hook.remove()
        self.module_ = net.eval()
        self.history_ = self.history_ + result["history"]
        self.n_iter_ = len(self.history_)
        self.interrupted_ = result["interrupted"]
        if self.replay == "data":  # the embedding trained (the CNN too, if it has trainable stages): mu moved
            self.fine_tuned_ = bool(getattr(self, "fine_tuned_", False) or net.trunk_parameters())
            self._set_embedding_statistics(self._embed(self._replay[0]))

    def _set_embedding_statistics(self, emb, n_components=256):
        """``embedding_mean_`` and the leading principal axes of the base data's unit
        embeddings ``emb``, which calibrated imprinting uses."""
        emb = np.asarray(emb, dtype=np.float64)
        self.embedding_mean_ = emb.mean(0)
        centred = emb - self.embedding_mean_
        variance, axes = np.linalg.eigh(centred.T @ centred / len(emb))  # ascending
        variance, axes = np.clip(variance[::-1], 0.0, None), axes[:, ::-1]
        k = min(n_components, len(variance))
        self.embedding_components_ = np.ascontiguousarray(axes[:, :k].T, dtype=np.float32)
        self.embedding_variance_ = variance[:k]
        rest = emb.shape[1] - k
        self.embedding_noise_variance_ = float(variance[k:].sum() / rest) if rest else 0.0

    @property
    def class_weights_(self):
        check_is_fitted(self, "module_")
        return F.normalize(self.module_.head.weight.detach(), dim=1).cpu().numpy()

    @property
    def scale_(self):
        check_is_fitted(self, "module_")
        return float(self.module_.head.scale.detach())

    # ------------------------------------------------------------- embeddings
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def transform(self, X):
        """Unit-length embeddings ``phi(x)``, the input of the cosine layer.

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.

        Returns
        -------
        embedding : ndarray of shape (n_samples, dim), float32
        """
        return self._embed(X)

    def _embedding_dim(self):
        check_is_fitted(self, "module_")
        return self.module_.head.weight.shape[1]

    def _embed(self, X, augment=0):
        """``phi(X)``; with ``augment=n`` (images only) the normalised mean over n random crops/flips."""
        check_is_fitted(self, "module_")
        net = self.module_.eval()
        with torch.inference_mode():
            if self.extractor is None:
                if augment:
                    raise ValueError("augment= needs images: it is only available with extractor=")
                X = validate_data(self, X, dtype=np.float32, reset=False)
                feats = FeatureData(X, self.device_).outputs(_EmbeddingView(net), np.arange(len(X)))
                return feats.cpu().numpy()
            source = ImageSource(X)
            idx = np.arange(len(source))
            view = _EmbeddingView(net)
            if not augment:
                run = self._image_engine(_EmbeddingView, "embedding")
                return predict_images(run, source, idx, self.preprocessing_, self.device_).cpu().numpy()
            # "Imprinting+Aug": the normalised sum over ``augment`` random crops/flips
            prep, total = self.preprocessing_, 0
            tf = train_transform(prep.image_size)
            for _ in range(int(augment)):
                batches = prep.batches(source, self.device_, idx, transform=tf, n_jobs=0)
                total = total + torch.cat([view(x) for _, x in batches])
            return F.normalize(total, dim=1).cpu().numpy()

    # -------------------------------------------------------------- imprinting
    @atomic_fit
    def imprint(self, X, y, augment=0):
        """Add classes (or refine imprinted ones) from exemplars, without training.

        For a label not in ``classes_`` a new weight row is the normalised mean of the
        exemplars' normalised embeddings (section 4.2, "Average embedding"); with
        ``calibrate_imprints`` (the default) its direction is whitened
        (``imprint_whitening``) and its component along the base data's mean embedding
        is set to the trained templates' (see the class documentation). For a label
        imprinted before, the row becomes the normalised mean over all its exemplars so
        far (a running sum and count), so imprinting one exemplar at a time equals
        imprinting them together. Trained classes cannot be imprinted.

        Parameters
        ----------
        X : array-like
            Exemplars: features, or images when ``extractor`` is set.
        y : array-like of shape (n_samples,)
            Their labels, of the same type as ``classes_`` (strings or numbers).
        augment : int, default=0
            With ``extractor``: random crops/flips averaged per exemplar ("Imprinting+Aug").

        Returns
        -------
        self

        Notes
        -----
        All or nothing, like ``fit``: when it raises, the model is exactly as before.
        """
        check_is_fitted(self, "module_")
        y = column_or_1d(y, warn=True)
        n = len(ImageSource(X)) if self.extractor is not None else len(X)
        if len(y) != n:
            raise ValueError(f"X has {n} samples but y has {len(y)} labels.")
        if len(y) == 0:
            return self
        kind, known_kind = _label_kind(y), _label_kind(self.classes_)
        if kind != known_kind:
            raise ValueError(
                f"imprint got {kind} labels ({y[0]!r}, ...) but classes_ holds {known_kind} labels "
                f"({self.classes_[0]!r}, ...); use labels of the same type."
            )
        trained = [c for c in np.unique(y) if c in self.classes_ and self.imprint_counts_[self._class_index(c)] == 0]
        if trained:
            raise ValueError(
                f"labels {trained[:5]} are trained classes; imprint adds new classes (or refines "
                "imprinted ones). Fine-tune with partial_fit instead."
            )
        emb = self._embed(X, augment=augment).astype(np.float64)
        trained_templates = self.class_weights_[self.imprint_counts_ == 0].astype(np.float64)
        # changed below in place: work on copies, so a failure leaves the previous model whole
        self.module_ = copy.deepcopy(self.module_)
        self._imprint_sums, self.imprint_counts_ = self._imprint_sums.copy(), self.imprint_counts_.copy()
        new = [c for c in dict.fromkeys(y.tolist()) if c not in set(self.classes_.tolist())]
        if new:
            self.classes_ = np.concatenate([self.classes_, np.asarray(new)])
            self.imprint_counts_ = np.r_[self.imprint_counts_, np.zeros(len(new), dtype=np.int64)]
            self._imprint_sums = np.r_[self._imprint_sums, np.zeros((len(new), emb.shape[1]))]
        codes = self._encode(y)
        np.add.at(self._imprint_sums, codes, emb)
        np.add.at(self.imprint_counts_, codes, 1)
        touched = np.unique(codes)
        head = self.module_.head
        rows = F.normalize(torch.as_tensor(self._imprint_sums[touched]), dim=1)
        if self.calibrate_imprints:
            rows = _calibrated(rows, trained_templates, getattr(self, "embedding_mean_", None),
                               self._spectrum() if self.imprint_whitening > 0 else None, self.imprint_whitening)
        rows = rows.to(head.weight)
        weight = head.weight.detach()
        if len(new):
            weight = torch.cat([weight, torch.zeros(len(new), weight.shape[1], device=weight.device)])
        weight[torch.as_tensor(touched)] = rows
        head.weight = nn.Parameter(weight)
        return self

    def _spectrum(self):
        """``(components, variances, noise variance)`` of the base embeddings, or None for a
        model pickled before they were kept."""
        if not hasattr(self, "embedding_components_"):
            return None
        return self.embedding_components_.astype(np.float64), self.embedding_variance_, self.embedding_noise_variance_

    def _class_index(self, label):
        return int(np.flatnonzero(self.classes_ == label)[0])


def _whitened(rows, spectrum, lam):
    """``(I + lam * C)^-1 rows`` for ``C = V' diag(var) V + noise (I - V' V)``, ``spectrum =
    (V, var, noise)``: the directions in which the base embeddings vary most shrink most."""
    comps, var, noise = (torch.as_tensor(np.asarray(v), dtype=rows.dtype) for v in spectrum)
    coef = rows @ comps.T
    rest = rows - coef @ comps
    return (coef / (1.0 + lam * var)) @ comps + rest / (1.0 + lam * noise)


def _calibrated(rows, trained, mean, spectrum=None, whitening=0.0):
    """Unit ``rows`` whose cosine with ``mean`` is the mean cosine of the unit ``trained``
    templates with it, the rest of each row kept in its direction orthogonal to ``mean``
    (``calibrate_imprints``), shrunk-whitened first when a ``spectrum`` of the base
    embeddings is given (``imprint_whitening``); ``rows`` as given when ``mean`` is ~0 or
    nothing is trained."""
    norm = 0.0 if mean is None else float(np.linalg.norm(mean))  # None: pickled before it existed
    if norm < 1e-6 or not len(trained):
        return rows
    u = torch.as_tensor(mean / norm, dtype=rows.dtype)
    a = float(np.clip(np.mean(trained @ (mean / norm)), -1.0, 1.0))
    perp = rows - (rows @ u)[:, None] * u
    if spectrum is not None and whitening > 0:
        perp = _whitened(perp, spectrum, whitening)
        perp = perp - (perp @ u)[:, None] * u
    perp = F.normalize(perp, dim=1)
    return a * u + (1.0 - a * a) ** 0.5 * perp


def _concat(a, b, images):
    """Base data followed by new data (features, or image collections of the same kind)."""
    if images:
        if isinstance(a, list) or isinstance(b, list):
            return list(a) + list(b)
        try:
            return np.concatenate([np.asarray(a), np.asarray(b)])
        except ValueError as exc:
            raise ValueError(
                "cannot replay the base images together with the new ones (different kinds or "
                f"image sizes: {exc}); pass paths, or lists of images"
            ) from exc
    return np.concatenate([np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)])


class _EmbeddingView(nn.Module):
    """A FeatureNet whose output is the head's normalised embedding instead of the logits."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, start=None):
        return self.net.head.embedding(self.net.features(x, start))
