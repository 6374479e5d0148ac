"""``EarlyExitClassifier``: sequential per-layer classifiers with early exits.

Savchenko, "Sequential analysis in image recognition" (``sequential-early-exit.txt``):
``M`` layers of a CNN give a hierarchy of pooled, L2-normalised feature vectors
``x_1, ..., x_M``; layer ``m`` has its own classifier with confidence scores
``s_m^(c)``. A sample is decided at the first layer whose maximal score exceeds the
threshold ``s_m`` (eq. 2-3); the last layer always decides. Each threshold fixes the
layer's false-acceptance rate on held-out training data, with the Benjamini-Hochberg
correction ``alpha_m = alpha * m / M`` (eq. 4).
"""

import copy
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.svm import LinearSVC
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import (KnownLabelsScoreMixin, VersionedStateMixin, atomic_fit, check_features, check_images_and_labels,
                    check_sample_weight, encode_labels, holdout_split, image_input_tags)
from ._exits import (Cascade, bh_threshold, exit_thresholds, fine_tune_exits, held_out_scores, layer_features,
                     parse_feature_groups)
from ._messages import warn
from .extractor import CNNFeatureExtractor
from .images import ImageSource

__all__ = ["EarlyExitClassifier", "bh_threshold"]


class EarlyExitClassifier(VersionedStateMixin, KnownLabelsScoreMixin, ClassifierMixin, BaseEstimator):
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
        Images mode, optional step 1: first train the exits with the backbone, for this
        many epochs: a linear softmax head on every exit, one multi-exit loss
        (:func:`skfg.losses.multi_exit_loss`: ``exit_weights`` and ``distillation``),
        through :class:`skfg.SoftmaxClassifier`'s fine-tuning recipe. The per-layer
        classifiers and thresholds are then fitted on the trained network's features.
        ``0``: the paper's mode, on the pretrained (frozen) features.
    trainable_blocks : int, "all" or "auto", default="auto"
        Stages trained by the fine-tuning step; ``"auto"``: all (the recipe's).
    fine_tune_params : dict or None, default=None
        Further :class:`skfg.SoftmaxClassifier` parameters of the fine-tuning step
        (``lr``, ``augment``, ``batch_size``, ...); the rest are the recipe's. On fewer
        than 1,000 images that includes the small-set split: when the branch heads on
        the pretrained CNN score higher there, the CNN is kept untuned, with a
        ``RuntimeWarning`` (``{"validation_fraction": 0}`` always fine-tunes).
    exit_weights : sequence of float or None, default=None
        The multi-exit loss's weight of each exit's cross-entropy, one per layer in
        forward order; ``None``: all 1 (the plain sum).
    distillation : float, default=0.0
        Weight of the term that teaches the last exit's (detached) probabilities to the
        earlier exits ("Be Your Own Teacher"); 0: none.
    random_state : int, RandomState or None, default=None
        Seeds the threshold split, the fine-tuning, and the layer classifiers whose own
        ``random_state`` is None.
    verbose : bool, int or "auto", default="auto"
        A progress bar over the fine-tuning epochs and the feature extraction: ``"auto"`` shows it in a terminal or a
        Jupyter notebook once the work has run a few seconds (short calls print
        nothing); ``True``/``1`` always, ``False``/``0`` never.

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
        "trainable_blocks": [Interval(Integral, 0, None, closed="left"), StrOptions({"all", "auto"})],
        "fine_tune_params": [None, dict],
        "exit_weights": [None, "array-like"],
        "distillation": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose", StrOptions({"auto"})],
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
        trainable_blocks="auto",
        fine_tune_params=None,
        exit_weights=None,
        distillation=0.0,
        random_state=None,
        verbose="auto",
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
        self.exit_weights = exit_weights
        self.distillation = distillation
        self.random_state = random_state
        self.verbose = verbose

    # ---------------------------------------------------------------- fitting
    def _fit_estimator(self, Xm, y, sample_weight, seed, rows=slice(None)):
        """A clone of ``estimator`` fitted on rows ``rows``."""
        est = clone(self.estimator if self.estimator is not None else LinearSVC())
        if seed is not None and est.get_params().get("random_state", 0) is None:
            est.set_params(random_state=seed)  # reproducible (liblinear shuffles)
        if sample_weight is None:
            return est.fit(Xm[rows], y[rows])
        return est.fit(Xm[rows], y[rows], sample_weight=sample_weight[rows])

    @atomic_fit
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
        est = self.estimator if self.estimator is not None else LinearSVC()
        if not (hasattr(est, "decision_function") or hasattr(est, "predict_proba")):
            raise ValueError(
                f"estimator={est!r} has neither decision_function nor predict_proba; the early "
                "exits need confidence scores."
            )
        if self.extractor is None and self.fine_tune_epochs:
            raise ValueError("fine_tune_epochs > 0 needs extractor=: features given as X cannot be fine-tuned.")
        if self.extractor is None:
            check_features(X, type(self).__name__)
            X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        else:
            X, y = check_images_and_labels(X, y)
        classes, y_enc = encode_labels(y, type(self).__name__)
        if sample_weight is not None:
            sample_weight = check_sample_weight(sample_weight, len(y), dtype=np.float64)
        extractor = None
        if self.extractor is None:
            names, groups = parse_feature_groups(self.feature_groups, X.shape[1],
                                                 getattr(self, "feature_names_in_", None))
        else:  # features of every exit through the extractor (and its cache)
            extractor = self._fit_extractor(X, y, sample_weight)
            names = list(extractor.layers_)
            groups = [extractor.feature_groups_[n] for n in names]
            X = extractor.transform(X)
        n_exits = len(groups)
        rng = check_random_state(self.random_state)
        k = int(np.ceil(len(y_enc) * self.train_fraction - 1e-9))  # K = ceil(N * delta) (step 6)
        train, held_out = holdout_split(len(y_enc), len(y_enc) - k, y_enc, rng)
        held_out = np.arange(0) if held_out is None else held_out
        if sample_weight is not None:  # zero-weight samples give no held-out score
            held_out = held_out[sample_weight[held_out] > 0]
        if len(held_out) == 0 and len(groups) > 1:
            warn(f"No held-out samples to set the exit thresholds (n={len(y)}, train_fraction="
                 f"{self.train_fraction}): every sample will go to the last layer.")
        seed = None if self.random_state is None else int(rng.randint(2**31 - 1))
        estimators, inter_scores = [], []
        for m in range(n_exits):
            Xm = layer_features(X, groups[m], self.normalize)
            inter = np.empty(0)  # the last layer always decides
            if m < n_exits - 1:  # steps 6-11
                fit_part = lambda rows: self._fit_estimator(Xm, y_enc, sample_weight, seed, rows)  # noqa: E731
                inter = held_out_scores(fit_part, Xm, y_enc, train, held_out, len(classes))
            estimators.append(self._fit_estimator(Xm, y_enc, sample_weight, seed))  # step 13
            inter_scores.append(inter)
        thresholds, alphas = exit_thresholds(inter_scores, self.alpha, self.thresholds)  # step 12
        # everything trained: set the fitted attributes together
        self.classes_ = classes
        self.estimators_ = estimators
        self.thresholds_ = thresholds
        self.alphas_ = alphas
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
        if self.exit_weights is not None and len(self.exit_weights) != len(extractor.layers_):
            raise ValueError(f"exit_weights has {len(self.exit_weights)} entries; the extractor has "
                             f"{len(extractor.layers_)} exits ({', '.join(extractor.layers_)}).")
        params = {"random_state": self.random_state, "verbose": self.verbose, **(self.fine_tune_params or {})}
        return fine_tune_exits(extractor, source, y, sample_weight, epochs=self.fine_tune_epochs,
                               trainable_blocks=self.trainable_blocks, params=params,
                               exit_weights=self.exit_weights, distillation=self.distillation)

    def with_alpha(self, alpha, thresholds=None):
        """A copy with the exit thresholds of another ``alpha``, without retraining.

        The thresholds come from the held-out scores kept at fit
        (``inter_class_scores_``) by the rule of ``fit`` (:func:`skfg._exits.exit_thresholds`):
        the same thresholds as a refit with these parameters and the same random state.

        Parameters
        ----------
        alpha : float
            The overall false-acceptance rate, in (0, 1].
        thresholds : {"bh", "fixed"}, optional
            The scheme; default this estimator's.

        Returns
        -------
        clf : EarlyExitClassifier
            A shallow copy (it shares the fitted layer classifiers) with ``alpha``,
            ``thresholds``, ``thresholds_`` and ``alphas_`` set.
        """
        check_is_fitted(self, "estimators_")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        out = copy.copy(self)
        out.alpha, out.thresholds = alpha, thresholds or self.thresholds
        out.thresholds_, out.alphas_ = exit_thresholds(self.inter_class_scores_, out.alpha, out.thresholds)
        return out

    # ------------------------------------------------------------- prediction
    def _cascade(self, n, output=None):
        return Cascade(self.estimators_, self.thresholds_, len(self.classes_), self.normalize, n, output)

    def _run(self, X, output=None):
        """The cascade over X (features, or images: the backbone stage by stage, exited
        samples leaving the batch); ``(codes, exits, extra)``."""
        check_is_fitted(self, "estimators_")
        if self.extractor is None:
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
            cascade = self._cascade(len(X), output).run_features(X, self.feature_groups_)
        else:
            source, ext = ImageSource(X), self.extractor_
            # the stages run on the fused network (BatchNorm folded, exit to exit a frozen graph)
            # unless the extractor says eager
            engine = ext.inference_engine("eager" if ext.engine == "eager" else "fused")
            trunk = engine.module if engine.name == "eager" else engine.stage_runner()
            cascade = self._cascade(len(source), output).run_images(trunk, ext.preprocessing_, ext.device_, source)
        return cascade.codes, cascade.exits, cascade.extra

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
        cascade = self._cascade(len(X))
        for m in range(len(self.estimators_)):
            yield self.classes_[cascade.decide(m, layer_features(X, self.feature_groups_[m], self.normalize))[0]]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        return tags if self.extractor is None else image_input_tags(tags)
