"""Plots as scikit-learn-style ``Display`` objects (matplotlib: the ``[plot]`` extra).

Each display is built ``from_estimator`` (it runs the fitted estimator) or
``from_predictions`` (from results you already have), keeps the plotted data as
attributes, and draws with ``plot``; after drawing, ``figure_`` and ``ax_`` hold the
matplotlib figure and axes, as scikit-learn's displays do.

- :class:`EarlyExitDisplay`: the early-exit trade-off, accuracy against milliseconds
  per image over ``alpha``, and how many images leave at each stage.
- :class:`RetrievalDisplay`: query images and their nearest training images in an
  estimator's embedding.
- :class:`LocalizationDisplay`: images with the localization heat map and box.
- :class:`LowShotDisplay`: accuracy against the number of training images per class.
"""

import collections
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_random_state

from ._messages import warn
from .images import ImageSource

__all__ = ["EarlyExitDisplay", "LocalizationDisplay", "LowShotDisplay", "RetrievalDisplay"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("Plots need matplotlib: pip install matplotlib (skfg's [plot] extra).") from exc
    return plt


def _grid(n_rows, n_cols, size, axes=None):
    """A figure of ``n_rows x n_cols`` image axes (or the given ones), as a 2-D array."""
    plt = _pyplot()
    if axes is None:
        # (constrained: titles of two lines never run into the image, or the coloured frame, above)
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False,
                                 layout="constrained")
    else:
        axes = np.asarray(axes, dtype=object).reshape(n_rows, n_cols)
        fig = axes[0, 0].figure
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def _wrap(text, width=22):
    """A label broken into lines (at "_" and spaces) so it fits over a small image."""
    import textwrap

    return "\n".join(textwrap.wrap(str(text).replace("_", " "), width))


def _images(X):
    """RGB PIL images of X (paths, arrays, PIL images); a bad file raises naming it."""
    source = ImageSource(X)
    return [source.load(i) for i in range(len(source))]


# ------------------------------------------------------------------ early exit
def with_alpha(clf, alpha, thresholds=None):
    """A copy of a fitted :class:`~skfg.EarlyExitClassifier` with the thresholds another
    ``alpha`` (and scheme ``thresholds``, "bh" or "fixed"; default the estimator's) gives,
    without retraining: :meth:`skfg.EarlyExitClassifier.with_alpha`, of which this is the
    function form."""
    return clf.with_alpha(alpha, thresholds)


class EarlyExitDisplay:
    """The early-exit trade-off: accuracy against prediction time over ``alpha``, and the
    share of images that exit at each stage.

    Parameters
    ----------
    alphas : array-like of shape (n_alphas,)
    accuracy : array-like of shape (n_alphas,)
    ms_per_image : array-like of shape (n_alphas,)
        Prediction time per image (or any cost measure; the x axis).
    exit_counts : array-like of shape (n_alphas, n_exits)
        Images decided at each stage.
    exit_names : list of str
        The stages (``exit_names_``).

    Attributes
    ----------
    line_ : matplotlib Line2D
        The trade-off curve.
    bars_ : list of matplotlib BarContainer
        The exits, one container per stage.
    ax_ : ndarray of two matplotlib Axes
        The trade-off and the exits.
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from skfg.plotting import EarlyExitDisplay  # doctest: +SKIP
    >>> EarlyExitDisplay.from_estimator(early_exit_clf, X_test, y_test, alphas=[0.01, 0.1, 0.3])  # doctest: +SKIP
    """

    def __init__(self, *, alphas, accuracy, ms_per_image, exit_counts, exit_names):
        self.alphas = np.asarray(alphas, dtype=float)
        self.accuracy = np.asarray(accuracy, dtype=float)
        self.ms_per_image = np.asarray(ms_per_image, dtype=float)
        self.exit_counts = np.asarray(exit_counts, dtype=float).reshape(len(self.alphas), -1)
        self.exit_names = list(exit_names)
        if not len(self.alphas) == len(self.accuracy) == len(self.ms_per_image):
            raise ValueError(f"alphas, accuracy and ms_per_image differ in length: {len(self.alphas)}, "
                             f"{len(self.accuracy)}, {len(self.ms_per_image)}")
        if self.exit_counts.shape[1] != len(self.exit_names):
            raise ValueError(f"exit_counts has {self.exit_counts.shape[1]} stages, exit_names {len(self.exit_names)}")

    def plot(self, ax=None):
        """Draw the trade-off (left) and the exits per stage (right).

        Parameters
        ----------
        ax : sequence of two matplotlib Axes, optional
            Where to draw; by default a new figure.

        Returns
        -------
        display : EarlyExitDisplay
        """
        plt = _pyplot()
        if ax is None:
            fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ax = np.asarray(ax, dtype=object).ravel()
        if len(ax) != 2:
            raise ValueError(f"ax must be two Axes (trade-off, exits), got {len(ax)}")
        (self.line_,) = ax[0].plot(self.ms_per_image, self.accuracy, "o-")
        for i, (a, x, y) in enumerate(zip(self.alphas, self.ms_per_image, self.accuracy)):
            ax[0].annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(5, 5 if i % 2 else -12), fontsize=8)
        ax[0].set(xlabel="prediction time (ms / image)", ylabel="accuracy", title="Early exit: accuracy vs time")
        share = self.exit_counts / np.maximum(self.exit_counts.sum(1, keepdims=True), 1)
        pos, bottom, self.bars_ = np.arange(len(self.alphas)), np.zeros(len(self.alphas)), []
        for j, name in enumerate(self.exit_names):
            self.bars_.append(ax[1].bar(pos, share[:, j], bottom=bottom, label=name))
            bottom += share[:, j]
        ax[1].set_xticks(pos, [f"{a:g}" for a in self.alphas])
        ax[1].set(xlabel="α", ylabel="share of images", title="Exits per stage", ylim=(0, 1))
        ax[1].legend(fontsize=8)
        self.ax_, self.figure_ = ax, ax[0].figure
        return self

    @classmethod
    def from_estimator(cls, estimator, X, y, *, alphas=(0.01, 0.05, 0.1, 0.2, 0.3), ax=None):
        """Predict ``X`` at every ``alpha`` (thresholds from the held-out scores, no
        retraining: :func:`with_alpha`) and time it.

        Parameters
        ----------
        estimator : EarlyExitClassifier
            Fitted. With an ``extractor`` (images) the times include the CNN stages that
            run; on features they cover the classifiers only.
        X : array-like
            Images or features, as ``estimator.predict`` takes.
        y : array-like of shape (n_samples,)
        alphas : sequence of float
        ax : sequence of two matplotlib Axes, optional

        Returns
        -------
        display : EarlyExitDisplay
        """
        preds, exits, ms = [], [], []
        for alpha in alphas:
            clf = with_alpha(estimator, alpha)
            start = time.perf_counter()
            pred, ex = clf.predict(X, return_exit=True)
            ms.append(1000 * (time.perf_counter() - start) / len(pred))
            preds.append(pred)
            exits.append(ex)
        return cls.from_predictions(y, preds, exits, alphas=alphas, ms_per_image=ms,
                                    exit_names=estimator.exit_names_, ax=ax)

    @classmethod
    def from_predictions(cls, y_true, y_preds, exits, *, alphas, ms_per_image, exit_names, ax=None):
        """From predictions already made at each ``alpha``.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,)
        y_preds : sequence of array-like, one per alpha
        exits : sequence of int arrays, one per alpha
            The stage index of each sample (``predict(X, return_exit=True)``).
        alphas, ms_per_image : sequence of float
        exit_names : list of str
        ax : sequence of two matplotlib Axes, optional

        Returns
        -------
        display : EarlyExitDisplay
        """
        y_true = np.asarray(y_true)
        accuracy = [float(np.mean(np.asarray(p) == y_true)) for p in y_preds]
        counts = [np.bincount(np.asarray(e, dtype=int), minlength=len(exit_names)) for e in exits]
        return cls(alphas=alphas, accuracy=accuracy, ms_per_image=ms_per_image, exit_counts=counts,
                   exit_names=exit_names).plot(ax=ax)


# ------------------------------------------------------------------- retrieval
class RetrievalDisplay:
    """Query images and their nearest reference (training) images.

    Parameters
    ----------
    query_images : list of PIL images
    neighbor_images : list of lists of PIL images
        Per query, its neighbours, nearest first.
    distances : array-like of shape (n_queries, n_neighbors)
        Squared L2 distances in the embedding.
    query_labels, neighbor_labels : array-like, optional
        Labels (shape ``(n_queries,)`` and ``(n_queries, n_neighbors)``): with both, a
        neighbour of the query's class is framed green, another red.

    Attributes
    ----------
    ax_ : ndarray of matplotlib Axes, shape (n_queries, n_neighbors + 1)
    figure_ : matplotlib Figure
    """

    def __init__(self, *, query_images, neighbor_images, distances, query_labels=None, neighbor_labels=None):
        self.query_images, self.neighbor_images = list(query_images), [list(n) for n in neighbor_images]
        self.distances = np.asarray(distances, dtype=float)
        self.query_labels = None if query_labels is None else np.asarray(query_labels)
        self.neighbor_labels = None if neighbor_labels is None else np.asarray(neighbor_labels)
        if self.distances.shape != (len(self.query_images), len(self.neighbor_images[0]) if self.neighbor_images
                                    else 0):
            raise ValueError(f"distances has shape {self.distances.shape}; expected (n_queries, n_neighbors) = "
                             f"({len(self.query_images)}, {len(self.neighbor_images[0])})")

    def plot(self, ax=None, *, size=2.0):
        """Draw one row per query: the query, then its neighbours.

        Parameters
        ----------
        ax : array of matplotlib Axes of shape (n_queries, n_neighbors + 1), optional
        size : float, default=2.0
            Inches per image (a new figure only).

        Returns
        -------
        display : RetrievalDisplay
        """
        k = self.distances.shape[1]
        fig, axes = _grid(len(self.query_images), k + 1, size, ax)
        for i, query in enumerate(self.query_images):
            axes[i, 0].imshow(query)
            title = "query" if self.query_labels is None else f"query: {self.query_labels[i]}"
            axes[i, 0].set_title(_wrap(title), fontsize=7)
            for j, img in enumerate(self.neighbor_images[i]):
                a = axes[i, j + 1]
                a.imshow(img)
                label = "" if self.neighbor_labels is None else f"{_wrap(str(self.neighbor_labels[i, j]))}\n"
                a.set_title(f"{label}d²={self.distances[i, j]:.3g}", fontsize=7)
                if self.query_labels is not None and self.neighbor_labels is not None:
                    a.set_axis_on()
                    a.set_xticks([])
                    a.set_yticks([])
                    color = "tab:green" if self.neighbor_labels[i, j] == self.query_labels[i] else "tab:red"
                    for spine in a.spines.values():
                        spine.set(color=color, linewidth=3)
        self.ax_, self.figure_ = axes, fig
        return self

    @classmethod
    def from_estimator(cls, estimator, X_query, X_reference, *, y_query=None, y_reference=None, n_neighbors=5,
                       ax=None):
        """Embed both sets with ``estimator.transform`` and find each query's nearest
        reference images (exact search, :class:`skfg.index.NearestNeighborIndex`).

        Parameters
        ----------
        estimator : transformer
            Fitted; maps images to embeddings (an ImpostorClassifier or
            ImprintedClassifier with an ``extractor``, a Pipeline ending in one, a
            CNNFeatureExtractor).
        X_query, X_reference : array-like
            Images (paths, arrays, PIL images).
        y_query, y_reference : array-like, optional
        n_neighbors : int, default=5
        ax : array of matplotlib Axes, optional

        Returns
        -------
        display : RetrievalDisplay
        """
        from .index import NearestNeighborIndex

        queries = np.asarray(estimator.transform(X_query), dtype=np.float32)
        reference = np.asarray(estimator.transform(X_reference), dtype=np.float32)
        distances, neighbors = NearestNeighborIndex(method="exact").fit(reference).search(queries, n_neighbors)
        return cls.from_predictions(X_query, X_reference, neighbors, distances, y_query=y_query,
                                    y_reference=y_reference, ax=ax)

    @classmethod
    def from_predictions(cls, X_query, X_reference, neighbors, distances, *, y_query=None, y_reference=None,
                         ax=None):
        """From neighbours already found.

        Parameters
        ----------
        X_query, X_reference : array-like
            Images (paths, arrays, PIL images).
        neighbors : int array-like of shape (n_queries, n_neighbors)
            Rows of ``X_reference``, nearest first.
        distances : array-like of shape (n_queries, n_neighbors)
        y_query, y_reference : array-like, optional
        ax : array of matplotlib Axes, optional

        Returns
        -------
        display : RetrievalDisplay
        """
        neighbors = np.asarray(neighbors, dtype=int)
        reference = ImageSource(X_reference)
        if neighbors.size and (neighbors.min() < 0 or neighbors.max() >= len(reference)):
            raise ValueError(f"neighbors must index X_reference (0..{len(reference) - 1}); got "
                             f"{neighbors.min()}..{neighbors.max()}")
        loaded = {int(j): reference.load(int(j)) for j in np.unique(neighbors)}
        return cls(query_images=_images(X_query), neighbor_images=[[loaded[int(j)] for j in row] for row in neighbors],
                   distances=distances, query_labels=y_query,
                   neighbor_labels=None if y_reference is None else np.asarray(y_reference)[neighbors]).plot(ax=ax)


# ---------------------------------------------------------------- localization
class LocalizationDisplay:
    """Images with their localization heat map and box.

    Parameters
    ----------
    images : list of PIL images
    heatmaps : array-like of shape (n_images, I, J)
        Each covers its whole image.
    boxes : array-like of shape (n_images, 4)
        ``(x0, y0, x1, y1)`` in pixels (:meth:`skfg.ObjectCropper.predict_boxes`).
    true_boxes : array-like of shape (n_images, 4), optional
        Drawn dashed, for comparison.

    Attributes
    ----------
    ax_ : ndarray of matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, *, images, heatmaps, boxes, true_boxes=None):
        self.images = list(images)
        self.heatmaps = np.asarray(heatmaps, dtype=float)
        self.boxes = np.asarray(boxes, dtype=float)
        self.true_boxes = None if true_boxes is None else np.asarray(true_boxes, dtype=float)
        n = len(self.images)
        if len(self.heatmaps) != n or self.boxes.shape != (n, 4):
            raise ValueError(f"{n} images need {n} heat maps and boxes of shape ({n}, 4); got "
                             f"{len(self.heatmaps)} and {self.boxes.shape}")

    def plot(self, ax=None, *, n_cols=4, size=3.0, heatmap_alpha=0.45, cmap="jet"):
        """Draw each image, its heat map over it and its box.

        Parameters
        ----------
        ax : array of matplotlib Axes, optional
            One per image.
        n_cols : int, default=4
        size : float, default=3.0
            Inches per image (a new figure only).
        heatmap_alpha : float, default=0.45
        cmap : str, default="jet"

        Returns
        -------
        display : LocalizationDisplay
        """
        from matplotlib.patches import Rectangle

        n = len(self.images)
        n_cols = min(n_cols, n) if ax is None else n
        n_rows = -(-n // n_cols)
        fig, axes = _grid(n_rows, n_cols, size, ax)
        for i, (img, heat, box) in enumerate(zip(self.images, self.heatmaps, self.boxes)):
            a = axes.ravel()[i]
            w, h = img.size
            a.imshow(img)
            a.imshow(heat, extent=(0, w, h, 0), alpha=heatmap_alpha, cmap=cmap, interpolation="bilinear")
            a.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="white", linewidth=2))
            if self.true_boxes is not None:
                t = self.true_boxes[i]
                a.add_patch(Rectangle(t[:2], t[2] - t[0], t[3] - t[1], fill=False, color="yellow", linewidth=2,
                                      linestyle="--"))
            a.set(xlim=(0, w), ylim=(h, 0))
        self.ax_, self.figure_ = axes, fig
        return self

    @classmethod
    def from_estimator(cls, estimator, X, *, source="student", true_boxes=None, ax=None, **plot_kw):
        """Heat maps and boxes of a fitted :class:`~skfg.ObjectCropper`.

        Parameters
        ----------
        estimator : ObjectCropper
        X : array-like
            Images (paths, arrays, PIL images).
        source : {"student", "teacher"}, default="student"
            As in :meth:`~skfg.ObjectCropper.predict_heatmaps`.
        true_boxes : array-like of shape (n_images, 4), optional
        ax : array of matplotlib Axes, optional
        **plot_kw
            Passed to :meth:`plot`.

        Returns
        -------
        display : LocalizationDisplay
        """
        heatmaps = estimator.predict_heatmaps(X, source=source)
        boxes = estimator.predict_boxes(X, source=source)
        return cls.from_predictions(X, heatmaps, boxes, true_boxes=true_boxes, ax=ax, **plot_kw)

    @classmethod
    def from_predictions(cls, X, heatmaps, boxes, *, true_boxes=None, ax=None, **plot_kw):
        """From heat maps and boxes already predicted for images X (see :meth:`from_estimator`)."""
        return cls(images=_images(X), heatmaps=heatmaps, boxes=boxes, true_boxes=true_boxes).plot(ax=ax, **plot_kw)


# -------------------------------------------------------------------- low shot
class LowShotDisplay:
    """Accuracy against the number of training images per class (a low-shot curve).

    Parameters
    ----------
    n_exemplars : array-like of shape (n_points,)
        Training images per class.
    scores : array-like of shape (n_points, n_repeats)
        Test accuracy of each repeat (a different draw of the training images).
    estimator_name : str, optional
        The legend label.

    Attributes
    ----------
    line_ : matplotlib Line2D
        The mean over repeats.
    fill_ : matplotlib PolyCollection or None
        Mean ± one standard deviation (with more than one repeat).
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, *, n_exemplars, scores, estimator_name=None):
        self.n_exemplars = np.asarray(n_exemplars)
        self.scores = np.asarray(scores, dtype=float).reshape(len(self.n_exemplars), -1)
        self.estimator_name = estimator_name

    def plot(self, ax=None, *, label=None):
        """Draw the mean accuracy (and ± one standard deviation over repeats).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draw into it (e.g. to compare estimators on one plot).
        label : str, optional
            Legend label; default ``estimator_name``.

        Returns
        -------
        display : LowShotDisplay
        """
        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4))
        mean, std = self.scores.mean(1), self.scores.std(1)
        (self.line_,) = ax.plot(self.n_exemplars, mean, "o-", label=label or self.estimator_name)
        self.fill_ = None
        if self.scores.shape[1] > 1:
            self.fill_ = ax.fill_between(self.n_exemplars, mean - std, mean + std, alpha=0.2,
                                         color=self.line_.get_color())
        ax.set_xscale("log")
        ax.set_xticks(self.n_exemplars, [str(n) for n in self.n_exemplars])
        ax.set(xlabel="training images per class", ylabel="accuracy", title="Low-shot accuracy")
        if label or self.estimator_name:
            ax.legend()
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimator(cls, estimator, X_train, y_train, X_test, y_test, *, n_exemplars=(1, 2, 5, 10), n_repeats=3,
                       random_state=None, ax=None):
        """Fit a clone of ``estimator`` on ``n`` images per class (``n_repeats`` random
        draws for each ``n``) and score it on the test set.

        Parameters
        ----------
        estimator : classifier
            Not fitted (it is cloned), e.g. ``ImprintedClassifier(extractor=...)``.
        X_train, y_train : array-like
            The pool the exemplars are drawn from; every class needs ``max(n_exemplars)``.
        X_test, y_test : array-like
        n_exemplars : sequence of int, default=(1, 2, 5, 10)
        n_repeats : int, default=3
        random_state : int, RandomState or None, default=None
        ax : matplotlib Axes, optional

        Returns
        -------
        display : LowShotDisplay
        """
        y_train = np.asarray(y_train)
        classes, counts = np.unique(y_train, return_counts=True)
        short = classes[counts < max(n_exemplars)]
        if len(short):
            raise ValueError(f"n_exemplars up to {max(n_exemplars)} needs as many training images of every class; "
                             f"class '{short[0]}' has {counts[classes == short[0]][0]}")
        rng = check_random_state(random_state)
        by_class = [np.flatnonzero(y_train == c) for c in classes]
        X_train = np.asarray(X_train) if not isinstance(X_train, list) else X_train
        y_preds = []
        with warnings.catch_warnings(record=True) as caught:  # the fits' warnings: each text once, below
            warnings.simplefilter("always")
            for n in n_exemplars:
                preds = []
                for _ in range(n_repeats):
                    rows = np.concatenate([rng.choice(idx, n, replace=False) for idx in by_class])
                    Xn = [X_train[i] for i in rows] if isinstance(X_train, list) else X_train[rows]
                    preds.append(clone(estimator).fit(Xn, y_train[rows]).predict(X_test))
                y_preds.append(preds)
        counts = collections.Counter((w.category, str(w.message)) for w in caught)
        for (category, message), count in counts.items():
            warn(f"{count} of the {len(n_exemplars) * n_repeats} fits warned: {message}", category)
        return cls.from_predictions(n_exemplars, y_test, y_preds, estimator_name=type(estimator).__name__, ax=ax)

    @classmethod
    def from_predictions(cls, n_exemplars, y_true, y_preds, *, estimator_name=None, ax=None):
        """From predictions of models trained on ``n_exemplars`` images per class.

        Parameters
        ----------
        n_exemplars : sequence of int
        y_true : array-like of shape (n_samples,)
        y_preds : sequence (one per n) of sequences (one per repeat) of predictions
        estimator_name : str, optional
        ax : matplotlib Axes, optional

        Returns
        -------
        display : LowShotDisplay
        """
        y_true = np.asarray(y_true)
        scores = [[float(np.mean(np.asarray(p) == y_true)) for p in per_n] for per_n in y_preds]
        if len({len(s) for s in scores}) > 1:
            raise ValueError("every n_exemplars needs the same number of repeats in y_preds")
        return cls(n_exemplars=n_exemplars, scores=scores, estimator_name=estimator_name).plot(ax=ax)
