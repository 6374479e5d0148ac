"""The pieces of the sequential early-exit procedure (sequential-early-exit.txt) that
:class:`skfg.EarlyExitClassifier` puts together: the layers' feature groups, the
Benjamini-Hochberg thresholds, the branch heads that fine-tune the CNN for every exit,
and the stage-by-stage run of the backbone in which exited samples leave the batch.
"""

import math
import re
from numbers import Integral

import numpy as np
import torch
from sklearn.base import clone
from sklearn.linear_model._base import LinearClassifierMixin
from threadpoolctl import ThreadpoolController
from torch import nn

from .losses import multi_exit_loss
from .softmax import SoftmaxClassifier


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


def exit_scores(estimator, X, n_classes):
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


def max_inter_class(scores, y):
    """``max_{c != y_n} s^(c)`` per row (training algorithm, step 10)."""
    s = scores.copy()
    s[np.arange(len(y)), y] = -np.inf
    return s.max(1)


def held_out_scores(fit_part, Xm, y, train, held_out, n_classes):
    """The held-out maximal inter-class scores of an exit (training algorithm, steps 6-11):
    ``fit_part(train)`` trains the layer's classifier on the first part and scores the
    held-out samples. Empty (no early exit) without held-out samples or with one class in
    the first part."""
    if not len(held_out) or len(np.unique(y[train])) < 2:
        return np.empty(0)
    return max_inter_class(exit_scores(fit_part(train), Xm[held_out], n_classes), y[held_out])


def exit_thresholds(inter_class_scores, alpha, scheme="bh"):
    """``(thresholds, alphas)`` of every exit from their held-out scores (step 12).

    Exit ``m`` (1-based) of ``M`` gets the false-acceptance rate ``alpha_m = alpha * m / M``
    with ``scheme="bh"`` (Benjamini-Hochberg), ``alpha`` with ``"fixed"``, and the
    threshold :func:`bh_threshold` gives at that rate (``inf``, no early exit, when its
    scores are empty); the last exit always decides (``-inf``). The one rule behind
    :meth:`skfg.EarlyExitClassifier.fit` and :meth:`~skfg.EarlyExitClassifier.with_alpha`.

    Parameters
    ----------
    inter_class_scores : list of array-like
        Per exit, the held-out maximal inter-class scores (the last exit's are not used).
    alpha : float
    scheme : {"bh", "fixed"}

    Returns
    -------
    thresholds, alphas : ndarray of shape (n_exits,)

    Examples
    --------
    >>> t, a = exit_thresholds([[0.9, 0.1, 0.5, 0.7, 0.3], [0.9, 0.1, 0.5, 0.7, 0.3], []], alpha=0.6)
    >>> t.tolist(), a.round(2).tolist()
    ([0.9, 0.7, -inf], [0.2, 0.4, 0.6])
    """
    if scheme not in ("bh", "fixed"):
        raise ValueError(f"scheme must be 'bh' or 'fixed', got {scheme!r}")
    n = len(inter_class_scores)
    alphas = np.array([alpha * (m + 1) / n if scheme == "bh" else alpha for m in range(n)], dtype=np.float64)
    thresholds = np.array([bh_threshold(inter_class_scores[m], alphas[m]) for m in range(n - 1)] + [-np.inf])
    return thresholds, alphas


def parse_feature_groups(groups, n_features, feature_names=None):
    """``(names, slices)`` of the layers in feature mode (``EarlyExitClassifier.feature_groups``).

    ``groups=None`` takes the layers from ``feature_names`` of the form ``"<layer>_<i>"``
    (contiguous runs), else all columns are one layer.
    """
    if groups is None:
        if feature_names is not None:
            matches = [re.fullmatch(r"(.+)_(\d+)", str(n)) for n in feature_names]  # "<layer>_<i>"
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


def layer_features(X, cols, normalize=True):
    """Columns ``cols`` (a layer) of the feature matrix as float64, L2-normalised when ``normalize``."""
    Xm = np.asarray(X[:, cols], dtype=np.float64)
    if normalize:
        Xm = Xm / np.maximum(np.linalg.norm(Xm, axis=1, keepdims=True), 1e-12)
    return Xm


# ------------------------------------------------------------- fine-tuning
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

    The loss is :func:`skfg.losses.multi_exit_loss` over the branches (the weighted sum
    of their cross-entropies, optionally with the last branch distilled into the earlier
    ones); validation and prediction use the last branch. ``fit`` takes the branches'
    feature columns (``feature_groups``) and the loss's ``exit_weights``,
    ``distillation`` and ``temperature``.
    """

    def fit(self, X, y, sample_weight=None, feature_groups=None, exit_weights=None, distillation=0.0,
            temperature=1.0):
        self.feature_groups_ = list(feature_groups)
        self.exit_loss_ = {"exit_weights": exit_weights, "distillation": distillation, "temperature": temperature}
        return super().fit(X, y, sample_weight)

    def _make_head(self, n_features, n_classes):
        return _BranchHeads(self.feature_groups_, n_classes)

    def _training_loss(self, ctx, batch):
        x, t, w, _ = batch
        return multi_exit_loss(ctx.data.forward(ctx.net, x), t, w, self._loss, **self.exit_loss_)

    def _validation_outputs(self, ctx, idx):
        return ctx.data.outputs(ctx.net, idx)[:, -1]

    def _proba(self, outputs):
        return torch.softmax(outputs[:, -1], dim=1)


_BRANCH_FIXED = ("extractor", "max_epochs", "trainable_blocks", "embedding_dim", "dropout", "embedding_loss",
                 "kmax_weight_epochs")


def fine_tune_exits(extractor, X, y, sample_weight, *, epochs, trainable_blocks, params=None, exit_weights=None,
                    distillation=0.0, temperature=1.0):
    """Fine-tune the fitted ``extractor``'s backbone with a linear softmax head on every exit
    (:func:`skfg.losses.multi_exit_loss` with ``exit_weights``, ``distillation`` and
    ``temperature``; ``params`` of :class:`skfg.SoftmaxClassifier`) and return the
    extractor with the trained trunk (:meth:`skfg.CNNFeatureExtractor.set_network`)."""
    if extractor.pooling == "kmax_weighted":
        raise ValueError(
            "fine_tune_epochs with pooling='kmax_weighted' would learn pooling weights that the "
            "stage-by-stage prediction does not use; use pooling='kmax'."
        )
    params = params or {}
    clash = sorted(set(params) & set(_BRANCH_FIXED))
    if clash:
        raise ValueError(
            f"fine_tune_params cannot set {clash}: the extractor, fine_tune_epochs and trainable_blocks "
            "are parameters of EarlyExitClassifier, and the branch heads are linear."
        )
    tuner = _BranchSoftmax(extractor=clone(extractor), trainable_blocks=trainable_blocks, max_epochs=epochs,
                           **params)
    groups = [extractor.feature_groups_[n] for n in extractor.layers_]
    tuner.fit(X, y, sample_weight=sample_weight, feature_groups=groups, exit_weights=exit_weights,
              distillation=distillation, temperature=temperature)
    return extractor.set_network(tuner.module_.trunk)


# ------------------------------------------------------------- prediction
_THREADPOOLS = []


def one_blas_thread():
    """Context in which numpy's BLAS uses one thread.

    The exits' small matrix products run between the CNN's stages; BLAS worker threads
    keep spinning after each call and take the cores from the next stage's convolutions
    (measured on 2 cores: batches of 32 ~15 % slower with no image exiting). One thread
    is plenty for ``(batch, channels) @ (channels, classes)``. The controller is made
    once (it lists the loaded libraries); entering the context costs ~10 us.
    """
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


class Cascade:
    """The decide-and-record step of the early-exit cascade, shared by feature mode and image
    mode (sequential-early-exit, inference).

    Exit ``m``'s classifier scores the samples still running; a sample whose largest score
    passes the exit's threshold (eq. 3, strictly) is decided there with the class of that
    score (eq. 2); the last exit decides every sample left. ``codes``, ``exits`` and
    ``extra`` (the deciding exit's scores or ``predict_proba`` with ``output``) fill in as
    samples exit.

    Parameters
    ----------
    estimators, thresholds : the fitted exit classifiers and their thresholds.
    n_classes : int
    normalize : bool
        L2-normalise each exit's features first (:func:`layer_features`).
    n : int
        Number of samples.
    output : {None, "decision", "proba"}
    """

    def __init__(self, estimators, thresholds, n_classes, normalize, n, output=None):
        self.estimators, self.thresholds, self.n_classes = estimators, thresholds, n_classes
        self.normalize, self.output = normalize, output
        self.codes, self.exits = np.zeros(n, dtype=int), np.full(n, -1)
        self.extra = np.zeros((n, n_classes)) if output else None

    def decide(self, m, Xm):
        """Exit ``m`` on its (normalised) features: ``(class codes, exits here?, extra output)``."""
        s = exit_scores(self.estimators[m], Xm, self.n_classes)
        extra = s if self.output == "decision" else None
        if self.output == "proba":
            extra = np.asarray(self.estimators[m].predict_proba(Xm), dtype=np.float64)
        done = s.max(1) > self.thresholds[m]  # eq. (3)
        if m == len(self.estimators) - 1:
            done[:] = True  # the last layer always decides
        return s.argmax(1), done, extra  # eq. (2)

    def exit(self, m, features, rows):
        """Decide exit ``m`` for the samples ``rows`` (their features of that exit's layer);
        record those that exit and return the mask of those that go on."""
        codes, done, extra = self.decide(m, layer_features(features, slice(None), self.normalize))
        decided = rows[done]
        self.codes[decided], self.exits[decided] = codes[done], m
        if self.output:
            self.extra[decided] = extra[done]
        return ~done

    def run_features(self, X, groups):
        """Feature mode: exit ``m`` reads the columns ``groups[m]`` of X."""
        alive = np.arange(len(X))
        for m, cols in enumerate(groups):
            if len(alive) == 0:
                break
            alive = alive[self.exit(m, X[alive][:, cols], alive)]
        return self

    def run_images(self, trunk, preprocessing, device, source):
        """Image mode: :func:`run_stages` with this cascade deciding at each exit."""
        run_stages(trunk, preprocessing, device, source, self.exit)
        return self


def run_stages(trunk, preprocessing, device, source, decide):
    """Run ``trunk`` (a :class:`~skfg._network.PooledTrunk` whose layers are the exits)
    stage by stage over the images of ``source`` (an :class:`~skfg.images.ImageSource`)
    prepared by ``preprocessing`` on ``device``.

    At each exit ``decide(m, Xm, rows)`` gets the exit's index, the pooled features of
    the samples still running (the trunk's pooling, so they equal those of the
    extractor's ``transform``) and their rows in X, and returns the mask of those that
    go on; the others leave the batch, and the deeper stages are not computed for them.
    BLAS runs on one thread meanwhile (:func:`one_blas_thread`).
    """
    trunk.eval()
    exit_at = {name: m for m, name in enumerate(trunk.layers)}
    for idx, h in preprocessing.batches(source, device):
        alive = np.asarray(idx)
        with torch.inference_mode(), one_blas_thread():
            for name in trunk.stages:
                h = trunk.stage(name, h)
                if name not in exit_at:
                    continue
                v = trunk.pool({name: h})
                go_on = decide(exit_at[name], v.float().cpu().numpy(), alive)
                alive = alive[go_on]
                if len(alive) == 0:
                    break
                if not go_on.all():  # (boolean indexing drops channels-last: restore it)
                    h = h[torch.as_tensor(go_on, device=h.device)].contiguous(memory_format=torch.channels_last)
