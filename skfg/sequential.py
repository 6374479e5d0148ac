"""``EarlyExitClassifier``: sequential per-layer classifiers with early exits.

Savchenko, "Sequential analysis in image recognition" (``sequential-early-exit.txt``):
``M`` layers of a CNN give a hierarchy of pooled, L2-normalised feature vectors
``x_1, ..., x_M``; layer ``m`` has its own classifier with confidence scores
``s_m^(c)``. A sample is decided at the first layer whose maximal score exceeds the
threshold ``s_m`` (eq. 2-3); the last layer always decides. Each threshold fixes the
layer's false-acceptance rate on held-out training data, with the Benjamini-Hochberg
correction ``alpha_m = alpha * m / M`` (eq. 4).
"""

import math
import re
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.svm import LinearSVC
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data
from torch import nn

from .backbones import state_fingerprint
from .extractor import CNNFeatureExtractor, pool_stage_outputs
from .images import ImageSource, eval_transform, iter_batches, normalize_batch
from .softmax import SoftmaxClassifier

__all__ = ["EarlyExitClassifier", "bh_threshold"]


def bh_threshold(inter_class_scores, alpha, m=1, n_layers=1):
    """Exit threshold of layer ``m`` (1-based) of ``n_layers`` (training algorithm, step 12).

    The ``floor(alpha * m * n / n_layers)``-th largest of the ``n`` held-out maximal
    inter-class scores ``max_{c != c(n)} s_m^(c)``: at most that many held-out samples
    would be accepted with a wrong class (eq. 4), a false-acceptance rate of
    ``alpha_m = alpha * m / n_layers`` (Benjamini-Hochberg). ``m = n_layers = 1`` gives
    the plain rate ``alpha`` ("fixed threshold").

    Parameters
    ----------
    inter_class_scores : array-like of shape (n,)
    alpha : float
        Overall false-acceptance rate, ``> 0``.
    m, n_layers : int
        The layer (1-based) and the number of layers.

    Returns
    -------
    threshold : float
        ``inf`` (no sample exits) when the rank is below 1; the smallest score when the
        rank exceeds ``n``.

    Examples
    --------
    >>> bh_threshold([0.9, 0.1, 0.5, 0.7, 0.3], alpha=0.4)   # 2nd largest
    0.7
    >>> bh_threshold([0.9, 0.1, 0.5, 0.7, 0.3], alpha=0.4, m=1, n_layers=2)   # 1st
    0.9
    >>> bh_threshold([0.9, 0.1], alpha=0.1)
    inf
    """
    s = np.sort(np.asarray(inter_class_scores, dtype=np.float64).ravel())[::-1]
    # floor with a tolerance: 0.1 * 3 * 10 / 3 must give 1, not 0
    rank = int(math.floor(alpha * m * len(s) / n_layers + 1e-9))
    if rank < 1 or len(s) == 0:
        return math.inf
    return float(s[min(rank, len(s)) - 1])


def _scores(estimator, X, n_classes):
    """Confidence scores ``(n, n_classes)`` of a fitted classifier (columns: encoded labels).

    ``decision_function`` when it has one (a binary one gives ``[-d, d]``), else
    ``predict_proba``. Classes the estimator never saw score ``-inf``.
    """
    if isinstance(estimator, LinearClassifierMixin):
        # X @ coef.T + b is all its decision_function does; skipping its input validation
        # saves ~0.3 ms per call, which matters at one image per exit
        s = X @ estimator.coef_.T + estimator.intercept_
        if s.shape[1] == 1:
            s = np.c_[-s[:, 0], s[:, 0]]
    elif hasattr(estimator, "decision_function"):
        s = np.asarray(estimator.decision_function(X), dtype=np.float64)
        if s.ndim == 1:
            s = np.c_[-s, s]
    else:
        s = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    known = np.asarray(estimator.classes_, dtype=int)
    if len(known) == n_classes:
        return s
    full = np.full((len(s), n_classes), -np.inf)
    full[:, known] = s
    return full


def _max_inter_class(scores, y):
    """``max_{c != y_n} s^(c)`` per row (training algorithm, step 10)."""
    s = scores.copy()
    s[np.arange(len(y)), y] = -np.inf
    return s.max(1)


class _BranchHeads(nn.Module):
    """One linear softmax layer per feature group; outputs ``(n, M, n_classes)`` logits."""

    def __init__(self, groups, n_classes):
        super().__init__()
        self.groups = [(int(g.start), int(g.stop)) for g in groups]
        self.heads = nn.ModuleList(nn.Linear(b - a, n_classes) for a, b in self.groups)

    def forward(self, x):
        return torch.stack([h(x[:, a:b]) for h, (a, b) in zip(self.heads, self.groups)], 1)


class _BranchSoftmax(SoftmaxClassifier):
    """Step 1 of the training algorithm: softmax heads on every branch, CNN fine-tuned.

    The loss is the sum of the branches' cross-entropies; validation and prediction use
    the last branch. Only its trained backbone is kept (``module_.trunk``).
    """

    def _make_head(self, n_features, n_classes):
        return _BranchHeads(self._groups, n_classes)

    def _training_loss(self, net, aux, data, x, t, w, idx):
        out = data.forward(net, x)
        return sum(self._loss(out[:, b], t, w) for b in range(out.shape[1]))

    def _validation_outputs(self, net, aux, data, idx):
        return data.outputs(net, idx)[:, -1]

    def _proba(self, outputs):
        return torch.softmax(outputs[:, -1], dim=1)


class EarlyExitClassifier(ClassifierMixin, BaseEstimator):
    """Sequential per-layer classifiers that stop at the first confident layer.

    One classifier per feature layer (a linear one-versus-all SVM by default), trained
    on that layer's pooled, L2-normalised features. At prediction a sample is decided
    by the first layer whose maximal score exceeds the layer's threshold (eq. 2-3); the
    last layer decides the rest. Thresholds follow the slides' training algorithm: a
    stratified split with ratio ``train_fraction``, the classifier trained on the first
    part, the maximal *inter-class* scores of the rest, and as threshold the
    ``floor(alpha * m * (N - K) / M)``-th largest of them (Benjamini-Hochberg, eq. 4);
    each classifier is then retrained on all data.

    Two modes:

    * **Features** (``extractor=None``): ``X`` is the output of
      ``CNNFeatureExtractor(layers=[...])``; ``feature_groups`` gives each layer's
      columns (the extractor's ``feature_groups_``). Same decisions, no compute saved.
    * **Images** (``extractor=`` a :class:`skfg.CNNFeatureExtractor` with several
      ``layers`` in forward order): ``predict`` runs the backbone stage by stage and
      samples that exit leave the batch, so the deeper stages are never computed for
      them.

    Parameters
    ----------
    estimator : classifier or None, default=None
        Cloned for every layer; needs ``decision_function`` or ``predict_proba`` (the
        scores ``s_m^(c)``). ``None`` is ``LinearSVC()`` (one-versus-all, squared hinge).
    alpha : float in (0, 1], default=0.1
        Overall false-acceptance rate of the early decisions. Held-out samples are
        counted unweighted (zero-weight samples are left out).
    thresholds : {"bh", "fixed"}, default="bh"
        ``"bh"``: layer ``m`` of ``M`` gets ``alpha_m = alpha * m / M``
        (Benjamini-Hochberg); ``"fixed"``: ``alpha_m = alpha`` for every layer.
    train_fraction : float, default=0.8
        The split ratio delta: the share of the training data the threshold classifiers
        are trained on; the rest gives the inter-class scores.
    feature_groups : None, dict, or list of slices / ints, default=None
        Feature mode: the columns of each layer, in forward order. A dict
        ``{layer: slice}`` (``CNNFeatureExtractor.feature_groups_``), a list of slices,
        or a list of column counts. ``None``: from the column names of a DataFrame
        ``"<layer>_<i>"`` (``get_feature_names_out`` of the extractor, e.g. a Pipeline
        with ``set_output(transform="pandas")``), else all of X is one layer.
    normalize : bool, default=True
        L2-normalise each layer's features before its classifier (a no-op on the
        extractor's normalised output).
    extractor : CNNFeatureExtractor or None, default=None
        Images mode; its ``layers`` are the exits.
    fine_tune_epochs : int, default=0
        Images mode, optional step 1: first fine-tune the last ``trainable_blocks``
        stages of the backbone with a softmax head on every branch (sum of the
        cross-entropies) through the training core, for this many epochs.
    trainable_blocks : int or "all", default=2
        Stages trained by the fine-tuning step.
    fine_tune_params : dict or None, default=None
        Further :class:`skfg.SoftmaxClassifier` parameters of the fine-tuning step
        (``lr``, ``augment``, ``batch_size``, ...).
    random_state : int, RandomState or None, default=None
        Seeds the threshold split, the fine-tuning, and the layer classifiers whose own
        ``random_state`` is None.
    verbose : bool, default=False

    Attributes
    ----------
    classes_ : ndarray
        Class labels.
    estimators_ : list of classifiers
        Layer ``m``'s classifier, trained on all data.
    thresholds_ : ndarray of shape (n_exits,)
        ``s_m``; the last is ``-inf`` (the last layer always decides), ``inf`` means the
        layer never exits.
    alphas_ : ndarray of shape (n_exits,)
        The false-acceptance rate of each layer.
    inter_class_scores_ : list of ndarray
        Per layer, the held-out maximal inter-class scores the threshold was taken from
        (empty for the last layer). ``bh_threshold(inter_class_scores_[m], a, m + 1,
        n_exits)`` (``thresholds="bh"``) or ``bh_threshold(inter_class_scores_[m], a)``
        (``"fixed"``) gives the threshold another ``alpha`` would have given, without
        retraining.
    exit_names_ : list of str
        The layers, in forward order.
    feature_groups_ : list of slice
        Feature columns of each layer.
    extractor_ : CNNFeatureExtractor
        Images mode: the fitted (and possibly fine-tuned) extractor.
    n_features_in_ : int
        Feature mode: number of input columns.

    See Also
    --------
    skfg.CNNFeatureExtractor : Multi-layer features (``layers=[...]``).

    Examples
    --------
    >>> import numpy as np
    >>> from skfg import EarlyExitClassifier
    >>> rng = np.random.RandomState(0)
    >>> y = np.repeat([0, 1, 2], 40)
    >>> weak, strong = rng.randn(120, 4) + 2 * np.eye(4)[y], rng.randn(120, 4) + 8 * np.eye(4)[y]
    >>> X = np.c_[weak, strong]  # two "layers" of 4 features each
    >>> clf = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.1, random_state=0).fit(X, y)
    >>> y_pred, exits = clf.predict(X, return_exit=True)
    >>> float(clf.score(X, y)), np.bincount(exits, minlength=2).tolist()  # exits per layer
    (1.0, [62, 58])
    """

    _parameter_constraints = {
        "estimator": [None, HasMethods(["fit"])],
        "alpha": [Interval(Real, 0, 1, closed="right")],
        "thresholds": [StrOptions({"bh", "fixed"})],
        "train_fraction": [Interval(Real, 0, 1, closed="neither")],
        "feature_groups": [None, dict, list, tuple],
        "normalize": ["boolean"],
        "extractor": [None, CNNFeatureExtractor],
        "fine_tune_epochs": [Interval(Integral, 0, None, closed="left")],
        "trainable_blocks": [Interval(Integral, 0, None, closed="left"), StrOptions({"all"})],
        "fine_tune_params": [None, dict],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    # Checks of sklearn's suite that cannot hold, with why.
    _expected_failed_checks = {
        "check_sample_weight_equivalence_on_dense_data": (
            "the threshold split draws samples, so repeating a sample is not the same as "
            "weighting it; the default LinearSVC (liblinear) fails this check on its own too"
        ),
    }

    def __init__(
        self,
        estimator=None,
        *,
        alpha=0.1,
        thresholds="bh",
        train_fraction=0.8,
        feature_groups=None,
        normalize=True,
        extractor=None,
        fine_tune_epochs=0,
        trainable_blocks=2,
        fine_tune_params=None,
        random_state=None,
        verbose=False,
    ):
        self.estimator = estimator
        self.alpha = alpha
        self.thresholds = thresholds
        self.train_fraction = train_fraction
        self.feature_groups = feature_groups
        self.normalize = normalize
        self.extractor = extractor
        self.fine_tune_epochs = fine_tune_epochs
        self.trainable_blocks = trainable_blocks
        self.fine_tune_params = fine_tune_params
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- layers
    def _groups_from_param(self, X, n_features):
        """``(names, slices)`` of the layers in feature mode."""
        groups = self.feature_groups
        if groups is None:
            names = getattr(self, "feature_names_in_", None)
            if names is not None:
                matches = [re.fullmatch(r"(.+)_(\d+)", str(n)) for n in names]  # "<layer>_<i>"
                prefixes = [mt.group(1) if mt else None for mt in matches]
                if None not in prefixes:
                    bounds = [0] + [i for i in range(1, len(prefixes)) if prefixes[i] != prefixes[i - 1]]
                    layer_names = [prefixes[b] for b in bounds]
                    if len(set(layer_names)) == len(layer_names):  # contiguous groups
                        ends = bounds[1:] + [len(prefixes)]
                        return layer_names, [slice(a, b) for a, b in zip(bounds, ends)]
            return ["all"], [slice(0, n_features)]
        if isinstance(groups, dict):
            names, slices = [str(k) for k in groups], list(groups.values())
        else:
            names, slices = [f"layer{i}" for i in range(len(groups))], list(groups)
        if not slices:
            raise ValueError("feature_groups is empty; give one entry per layer (or None).")
        if all(isinstance(g, Integral) for g in slices):
            if any(g < 1 for g in slices) or sum(slices) != n_features:
                raise ValueError(
                    f"feature_groups as column counts must be positive and sum to the {n_features} "
                    f"features of X; got {list(slices)} (sum {sum(slices)})."
                )
            ends = np.cumsum(slices)
            slices = [slice(int(e - g), int(e)) for g, e in zip(slices, ends)]
        for name, s in zip(names, slices):
            if not isinstance(s, slice) or s.step not in (None, 1):
                raise ValueError(f"feature_groups[{name!r}] = {s!r}: expected a slice of columns or a column count.")
            if s.start is None or s.stop is None or not 0 <= s.start < s.stop <= n_features:
                raise ValueError(
                    f"feature_groups[{name!r}] = {s!r} is not a non-empty column range within the "
                    f"{n_features} features of X."
                )
        return names, [slice(int(s.start), int(s.stop)) for s in slices]

    def _layer_features(self, X, cols):
        """Columns ``cols`` (a layer) of the feature matrix, L2-normalised (``normalize``)."""
        Xm = np.asarray(X[:, cols], dtype=np.float64)
        if self.normalize:
            Xm = Xm / np.maximum(np.linalg.norm(Xm, axis=1, keepdims=True), 1e-12)
        return Xm

    # ---------------------------------------------------------------- fitting
    def _split(self, y, n_classes, rng):
        """Indices ``(train, held_out)`` with ``K = ceil(N * train_fraction)`` (step 6)."""
        n = len(y)
        k = int(math.ceil(n * self.train_fraction - 1e-9))
        if n - k < 1:
            return np.arange(n), np.arange(0)
        counts = np.bincount(y, minlength=n_classes)
        if counts.min() >= 2 and n_classes <= n - k and k >= n_classes:
            splitter = StratifiedShuffleSplit(1, train_size=k, test_size=n - k, random_state=rng)
        else:
            splitter = ShuffleSplit(1, train_size=k, test_size=n - k, random_state=rng)
        train, held_out = next(splitter.split(np.zeros(n), y))
        return np.sort(train), np.sort(held_out)

    def _fit_estimator(self, Xm, y, sample_weight, seed):
        est = clone(self.estimator if self.estimator is not None else LinearSVC())
        if seed is not None and est.get_params().get("random_state", 0) is None:
            est.set_params(random_state=seed)  # reproducible (liblinear shuffles)
        if sample_weight is None:
            return est.fit(Xm, y)
        return est.fit(Xm, y, sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Train the per-layer classifiers and their exit thresholds.

        Parameters
        ----------
        X : array-like
            Features ``(n_samples, n_features)``, or images (paths, uint8 arrays, PIL
            images) when ``extractor`` is set.
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional
            Passed to every layer's ``estimator.fit`` (and to the fine-tuning).

        Returns
        -------
        self
        """
        self._validate_params()
        before = dict(self.__dict__)
        try:
            return self._fit(X, y, sample_weight)
        except BaseException:  # a failed fit leaves the previous model as it was
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit(self, X, y, sample_weight):
        est = self.estimator if self.estimator is not None else LinearSVC()
        if not (hasattr(est, "decision_function") or hasattr(est, "predict_proba")):
            raise ValueError(
                f"estimator={est!r} has neither decision_function nor predict_proba; the early "
                "exits need confidence scores."
            )
        if self.extractor is None and self.fine_tune_epochs:
            raise ValueError("fine_tune_epochs > 0 needs extractor=: features given as X cannot be fine-tuned.")
        if self.extractor is None:
            X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        else:
            y = column_or_1d(y, warn=True)
            X = ImageSource(X)
            if len(y) != len(X):
                raise ValueError(f"X has {len(X)} images but y has {len(y)} labels.")
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"EarlyExitClassifier needs samples of at least 2 classes; got one class: {classes[0]!r}.")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, np.empty((len(y), 1)))
        extractor = None
        if self.extractor is None:
            names, groups = self._groups_from_param(X, X.shape[1])
        else:  # features of every exit through the extractor (and its cache)
            extractor = self._fit_extractor(X, y, sample_weight)
            names = list(extractor.layers_)
            groups = [extractor.feature_groups_[n] for n in names]
            X = extractor.transform(X)
        n_exits = len(groups)
        rng = check_random_state(self.random_state)
        train, held_out = self._split(y_enc, len(classes), rng)
        if sample_weight is not None:  # zero-weight samples give no held-out score
            held_out = held_out[sample_weight[held_out] > 0]
        if len(held_out) == 0 and len(groups) > 1:
            warnings.warn(
                f"No held-out samples to set the exit thresholds (n={len(y)}, train_fraction="
                f"{self.train_fraction}): every sample will go to the last layer.", UserWarning, stacklevel=3)
        seed = None if self.random_state is None else int(rng.randint(2**31 - 1))
        estimators, thresholds, alphas, inter_scores = [], [], [], []
        for m in range(n_exits):
            Xm = self._layer_features(X, groups[m])
            alpha_m = self.alpha * (m + 1) / n_exits if self.thresholds == "bh" else self.alpha
            threshold, inter = -np.inf, np.empty(0)  # the last layer always decides
            if m < n_exits - 1:
                threshold = np.inf
                # steps 6-12 (a split whose first part has one class gives no early exit)
                if len(held_out) and len(np.unique(y_enc[train])) > 1:
                    sw = None if sample_weight is None else sample_weight[train]
                    part = self._fit_estimator(Xm[train], y_enc[train], sw, seed)
                    inter = _max_inter_class(_scores(part, Xm[held_out], len(classes)), y_enc[held_out])
                    threshold = bh_threshold(inter, alpha_m)
            estimators.append(self._fit_estimator(Xm, y_enc, sample_weight, seed))  # step 13
            thresholds.append(threshold)
            alphas.append(alpha_m)
            inter_scores.append(inter)
        # everything trained: set the fitted attributes together
        self.classes_ = classes
        self.estimators_ = estimators
        self.thresholds_ = np.asarray(thresholds, dtype=np.float64)
        self.alphas_ = np.asarray(alphas, dtype=np.float64)
        self.inter_class_scores_ = inter_scores
        self.exit_names_ = names
        self.feature_groups_ = groups
        stale = ("n_features_in_", "feature_names_in_") if extractor is not None else ("extractor_",)
        for name in stale:  # left by an earlier fit in the other mode
            self.__dict__.pop(name, None)
        if extractor is not None:
            self.extractor_ = extractor
        return self

    def _fit_extractor(self, source, y, sample_weight=None):
        """Fit a clone of the extractor (and fine-tune it with branch heads: step 1)."""
        extractor = clone(self.extractor).fit()
        order = extractor.network_.stage_names
        positions = [order.index(n) for n in extractor.layers_]
        if positions != sorted(positions):
            raise ValueError(
                f"The extractor's layers {extractor.layers_} are not in forward order; early exits "
                f"need them ordered as the backbone runs them: {[n for n in order if n in extractor.layers_]}."
            )
        if self.fine_tune_epochs == 0:
            return extractor
        if extractor.pooling == "kmax_weighted":
            raise ValueError(
                "fine_tune_epochs with pooling='kmax_weighted' would learn pooling weights that the "
                "stage-by-stage prediction does not use; use pooling='kmax'."
            )
        params = dict(self.fine_tune_params or {})
        clash = sorted(set(params) & {"extractor", "max_epochs", "trainable_blocks", "embedding_dim", "dropout",
                                      "embedding_loss", "kmax_weight_epochs"})
        if clash:
            raise ValueError(
                f"fine_tune_params cannot set {clash}: the extractor, fine_tune_epochs and trainable_blocks "
                "are parameters of EarlyExitClassifier, and the branch heads are linear."
            )
        params.setdefault("random_state", self.random_state)
        params.setdefault("verbose", self.verbose)
        tuner = _BranchSoftmax(extractor=self.extractor, trainable_blocks=self.trainable_blocks,
                               max_epochs=self.fine_tune_epochs, **params)
        tuner._groups = [extractor.feature_groups_[n] for n in extractor.layers_]
        tuner.fit(source, y, sample_weight=sample_weight)
        trunk = tuner.module_.trunk.requires_grad_(False).eval()
        extractor.network_ = trunk.to(extractor.device_, memory_format=torch.channels_last)
        extractor._weights_fingerprint = state_fingerprint(extractor.network_)
        return extractor

    # ------------------------------------------------------------- prediction
    def _decide(self, m, Xm, output=None):
        """Layer ``m`` on its features: (class codes, exits here?, extra output).

        ``output``: None, ``"decision"`` (the scores) or ``"proba"`` (``predict_proba``).
        """
        s = _scores(self.estimators_[m], Xm, len(self.classes_))
        extra = s if output == "decision" else None
        if output == "proba":
            extra = np.asarray(self.estimators_[m].predict_proba(Xm), dtype=np.float64)
        done = s.max(1) > self.thresholds_[m]  # eq. (3)
        if m == len(self.estimators_) - 1:
            done[:] = True  # the last layer always decides
        return s.argmax(1), done, extra  # eq. (2)

    def _exit(self, m, Xm, alive, result, output):
        """Decide layer ``m`` for samples ``alive`` (features ``Xm``); record the samples that
        exit in ``result = (codes, exits, extra)`` and return the mask of those that go on."""
        codes, exits, extra = result
        c, done, e = self._decide(m, Xm, output)
        rows = alive[done]
        codes[rows], exits[rows] = c[done], m
        if output:
            extra[rows] = e[done]
        return ~done

    def _empty_result(self, n, output):
        extra = np.zeros((n, len(self.classes_))) if output else None
        return np.zeros(n, dtype=int), np.full(n, -1), extra

    def _run_features(self, X, output=None):
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        result = self._empty_result(len(X), output)
        alive = np.arange(len(X))
        for m, cols in enumerate(self.feature_groups_):
            if len(alive) == 0:
                break
            alive = alive[self._exit(m, self._layer_features(X[alive], cols), alive, result, output)]
        return result

    def _run_images(self, X, output=None):
        """Extractor mode: the backbone stage by stage; exited samples leave the batch."""
        ext = self.extractor_
        net = ext.network_.eval()
        source = ImageSource(X)
        result = self._empty_result(len(source), output)
        exit_at = {name: m for m, name in enumerate(self.exit_names_)}
        stages = net.stage_names[: net.stage_names.index(self.exit_names_[-1]) + 1]
        tf = eval_transform(ext.image_size, ext.resize)
        for idx, batch in iter_batches(source, tf, ext.batch_size, np.arange(len(source)), ext._decode_jobs()):
            h = normalize_batch(batch.to(ext.device_), net.mean, net.std)
            h = h.contiguous(memory_format=torch.channels_last)
            alive = np.asarray(idx)
            with torch.inference_mode():
                for name in stages:
                    h = net.stages[name](h)
                    if name not in exit_at:
                        continue
                    # the extractor's own pooling, so the features equal those of transform
                    v = pool_stage_outputs({name: h}, [name], ext.pooling, ext.k, ext.normalize)
                    Xm = self._layer_features(v.float().cpu().numpy(), slice(None))
                    go_on = self._exit(exit_at[name], Xm, alive, result, output)
                    alive = alive[go_on]
                    if len(alive) == 0:
                        break
                    if not go_on.all():  # (boolean indexing drops channels-last: restore it)
                        h = h[torch.as_tensor(go_on, device=h.device)].contiguous(memory_format=torch.channels_last)
        return result

    def _run(self, X, output=None):
        check_is_fitted(self, "estimators_")
        if self.extractor is None:
            return self._run_features(X, output)
        return self._run_images(X, output)

    def predict(self, X, return_exit=False):
        """Labels decided at each sample's first confident layer.

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set (then the deeper stages are
            not computed for samples that exit early).
        return_exit : bool, default=False
            Also return the index (into ``exit_names_``) of the layer that decided.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        exits : ndarray of int, shape (n_samples,)
            Only with ``return_exit=True``; ``np.bincount(exits, minlength=len(exit_names_))``
            gives the per-layer exit counts.
        """
        codes, exits, _ = self._run(X)
        y_pred = self.classes_[codes]
        return (y_pred, exits) if return_exit else y_pred

    def _has(attr):
        def check(self):
            return hasattr(self.estimator if self.estimator is not None else LinearSVC(), attr)

        return check

    @available_if(_has("decision_function"))
    def decision_function(self, X):
        """Scores ``s_m^(c)`` of the layer that decided each sample.

        Scores of different layers are on different scales; compare them within a row.

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            As scikit-learn's binary classifiers: the score of ``classes_[1]``.
        """
        scores = self._run(X, "decision")[2]
        return scores[:, 1] if len(self.classes_) == 2 else scores

    @available_if(_has("predict_proba"))
    def predict_proba(self, X):
        """``predict_proba`` of the layer that decided each sample (when ``estimator`` has it).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return self._run(X, "proba")[2]

    def staged_predict(self, X):
        """Predictions of every layer's classifier for every sample (no early exit).

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set (all stages run).

        Yields
        ------
        y_pred : ndarray of shape (n_samples,)
            One per layer, in forward order.
        """
        check_is_fitted(self, "estimators_")
        if self.extractor is None:
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        else:
            X = self.extractor_.transform(X)
        for m in range(len(self.estimators_)):
            yield self.classes_[self._decide(m, self._layer_features(X, self.feature_groups_[m]))[0]]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if self.extractor is not None:
            tags.input_tags.one_d_array = True
            tags.input_tags.two_d_array = False
            tags.input_tags.three_d_array = True
            tags.input_tags.string = True
        return tags
