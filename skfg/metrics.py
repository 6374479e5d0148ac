"""Metrics for open-set detection, metric learning, and comparing two classifiers.

``entropy`` and ``ks_distance`` compare how confident a classifier is on seen vs unseen
classes (impostor-networks Fig. 4); ``open_set_auroc`` is the signed, threshold-free
measure of the same; ``recall_at_k`` and ``nmi_kmeans`` evaluate an embedding on classes
never seen in training (rbf-solver section 4.1); ``paired_bootstrap`` says whether one
classifier is better than another on the same test images, or whether the difference is
within the noise.
"""

import numpy as np
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score
from sklearn.utils.validation import check_array, check_consistent_length, column_or_1d


def entropy(proba):
    """Shannon entropy (nats) of each row of a probability matrix.

    Parameters
    ----------
    proba : array-like of shape (n_samples, n_classes)
        Rows are probability distributions (e.g. ``predict_proba``).

    Returns
    -------
    entropy : ndarray of shape (n_samples,)
        0 for a one-hot row, ``log(n_classes)`` for a uniform one.

    Examples
    --------
    >>> from skfg.metrics import entropy
    >>> entropy([[1.0, 0.0], [0.5, 0.5]]).round(4).tolist()
    [0.0, 0.6931]
    """
    p = check_array(proba, dtype=np.float64)
    if (p < 0).any():
        raise ValueError("proba has negative entries; expected probabilities")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return 0.0 - terms.sum(axis=1)  # 0.0 - x: no -0.0 for one-hot rows


def ks_distance(scores_a, scores_b):
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between two empirical CDFs.

    Used as in impostor-networks Fig. 4 to measure how well open-set scores (entropies)
    separate images of seen classes from images of unseen ones: 0 = identical
    distributions, 1 = perfectly separated.

    Parameters
    ----------
    scores_a, scores_b : array-like of shape (n_a,), (n_b,)

    Returns
    -------
    distance : float in [0, 1]

    Examples
    --------
    >>> from skfg.metrics import ks_distance
    >>> ks_distance([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])
    1.0
    """
    a = column_or_1d(np.asarray(scores_a, dtype=np.float64))
    b = column_or_1d(np.asarray(scores_b, dtype=np.float64))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("ks_distance needs at least one score in each sample")
    return float(stats.ks_2samp(a, b).statistic)


def open_set_auroc(scores_seen, scores_unseen):
    """Area under the ROC curve of an open-set score for telling unseen classes from seen.

    The direction is fixed: a higher score must mean "more likely an unseen class" (as
    :meth:`skfg.SoftmaxClassifier.open_set_score`, the entropy, does). 1 separates them
    perfectly, 0.5 not at all, and below 0.5 the score ranks unseen images as *more*
    familiar than seen ones; unlike :func:`ks_distance`, which is unsigned.

    Parameters
    ----------
    scores_seen, scores_unseen : array-like of shape (n_seen,), (n_unseen,)

    Returns
    -------
    auroc : float in [0, 1]
        The probability that an unseen image scores higher than a seen one (ties 1/2).

    Examples
    --------
    >>> from skfg.metrics import open_set_auroc
    >>> open_set_auroc([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])
    1.0
    >>> open_set_auroc([0.7, 0.8, 0.9], [0.1, 0.2, 0.3])   # inverted: unseen look familiar
    0.0
    """
    seen = column_or_1d(np.asarray(scores_seen, dtype=np.float64))
    unseen = column_or_1d(np.asarray(scores_unseen, dtype=np.float64))
    if len(seen) == 0 or len(unseen) == 0:
        raise ValueError("open_set_auroc needs at least one score of seen and one of unseen classes")
    return float(roc_auc_score(np.r_[np.zeros(len(seen)), np.ones(len(unseen))], np.r_[seen, unseen]))


def paired_bootstrap(correct_a, correct_b, *, n_resamples=10_000, confidence=0.95, random_state=0):
    """Is classifier A more accurate than B on the same test images? A paired bootstrap.

    The test images are resampled with replacement (the same draw for both), so the
    interval reflects which images a test set happens to hold. With several seeds, each
    image's correctness is first averaged over the seeds.

    Parameters
    ----------
    correct_a, correct_b : array-like of shape (n_images,) or (n_seeds, n_images)
        1 where the classifier is right on an image, 0 where wrong (e.g.
        ``y_pred == y_test``), the images in the same order for both.
    n_resamples : int, default=10000
    confidence : float, default=0.95
    random_state : int, default=0

    Returns
    -------
    result : dict
        ``difference`` (accuracy of A minus B, in [-1, 1]), ``low`` and ``high`` (the
        percentile interval), ``significant`` (the interval excludes 0) and
        ``statement``: "A better by ..." / "B better by ..." or "no significant difference".

    Examples
    --------
    >>> from skfg.metrics import paired_bootstrap
    >>> same = [1, 0, 1, 1, 0, 1, 0, 1]
    >>> paired_bootstrap(same, same)["statement"]
    'no significant difference: +0.0 points (95% interval [+0.0, +0.0])'
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64)).mean(0)
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64)).mean(0)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"correct_a and correct_b must cover the same test images; got {a.shape} and {b.shape}")
    rng = np.random.RandomState(random_state)
    gaps = a - b
    samples = np.array([gaps[rng.randint(0, len(gaps), len(gaps))].mean() for _ in range(int(n_resamples))])
    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    difference, significant = float(gaps.mean()), bool(low > 0 or high < 0)
    span = f"{100 * difference:+.1f} points ({100 * confidence:g}% interval [{100 * low:+.1f}, {100 * high:+.1f}])"
    if not significant:
        statement = f"no significant difference: {span}"
    else:
        statement = f"{'A' if difference > 0 else 'B'} better: {span}"
    return {"difference": difference, "low": float(low), "high": float(high), "significant": significant,
            "statement": statement}


def recall_at_k(X, y, ks=(1, 2, 4, 8)):
    """Recall@K of an embedding: the share of samples with a same-class sample among their
    K nearest neighbours (Euclidean, the sample itself excluded).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Embeddings.
    y : array-like of shape (n_samples,)
        Labels.
    ks : int or sequence of int, default=(1, 2, 4, 8)

    Returns
    -------
    recall : dict of int -> float (or a float when ``ks`` is an int)

    Examples
    --------
    >>> from skfg.metrics import recall_at_k
    >>> recall_at_k([[0.0], [1.0], [3.0], [10.0]], ["a", "b", "a", "b"], ks=(1, 2))
    {1: 0.0, 2: 0.75}
    """
    from .index import NearestNeighborIndex

    X = check_array(X, dtype=np.float32)
    y = column_or_1d(y)
    check_consistent_length(X, y)
    single = np.isscalar(ks)
    ks = [int(ks)] if single else [int(k) for k in ks]
    if min(ks) < 1 or max(ks) >= len(X):
        raise ValueError(f"every k must be in [1, n_samples - 1 = {len(X) - 1}]; got {ks}")
    _, idx = NearestNeighborIndex("exact").fit(X).search(X, max(ks) + 1)
    # drop each sample itself (it may not come first when duplicates tie)
    rows = [row[row != i][: max(ks)] for i, row in enumerate(idx)]
    hits = np.array([y[row] == y[i] for i, row in enumerate(rows)])
    out = {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
    return out[ks[0]] if single else out


def nmi_kmeans(X, y, n_clusters=None, random_state=0):
    """Normalised mutual information between labels and k-means clusters of an embedding.

    The NMI protocol of deep metric learning (rbf-solver section 4.1): k-means with as
    many clusters as classes, scored by :func:`sklearn.metrics.normalized_mutual_info_score`.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    n_clusters : int, optional
        Defaults to the number of classes in ``y``.
    random_state : int, default=0

    Returns
    -------
    nmi : float in [0, 1]
    """
    X = check_array(X, dtype=np.float64)
    y = column_or_1d(y)
    check_consistent_length(X, y)
    n_clusters = len(np.unique(y)) if n_clusters is None else int(n_clusters)
    clusters = KMeans(n_clusters, n_init=10, random_state=random_state).fit_predict(X)
    return float(normalized_mutual_info_score(y, clusters))
