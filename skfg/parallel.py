"""Scaling out with Dask: distributed, resumable feature extraction and prediction.

Two ways in, both the usual ones for a scikit-learn user on Dask (``pip install
"skfg[dask]"``):

- :class:`ParallelPostFit` (dask-ml's pattern): fit any skfg estimator or pipeline in
  memory on a sample, then ``transform`` / ``predict`` / ``predict_proba`` /
  ``decision_function`` a ``dask.array`` of image paths (or images, or features) block by
  block on the cluster; the fitted model is one node of the task graph, so it travels to
  each worker once. The result is a lazy ``dask.array``.
- :func:`extract_features`: the features of many images into a chunked on-disk
  :class:`~skfg.store.FeatureStore`, on a ``distributed.Client`` or in process. Finished
  chunks are never recomputed: a killed run continues where it stopped. Every chunk is
  attempted; bad images are collected over all of them and reported together, by path,
  at the end (their chunks stay missing, nothing is dropped).

The same code runs on a laptop (``distributed.LocalCluster``) and on a cluster (a
``Client`` with the scheduler's address); the store's folder must then be one the client
can write.
"""

import logging

import joblib
import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils.validation import check_is_fitted

from .images import ImageDecodeError
from .store import FeatureStore

logger = logging.getLogger(__name__)


def _dask():
    try:
        import dask
        import dask.array  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("skfg.parallel needs Dask: pip install 'dask[array]' distributed (skfg's [dask] extra)") from err
    return dask


def _is_dask(X):
    try:
        from dask.base import is_dask_collection
    except ImportError:
        return False
    return is_dask_collection(X)


def _limit_threads():
    """On a Dask worker, let torch use the worker's threads only (no oversubscription)."""
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(max(1, int(threads)))


def _shipped(estimator, dask):
    """The fitted model as a graph input sent to each worker once: scattered to every worker
    when a distributed client is active, else a single (pure) delayed node."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return dask.delayed(estimator, pure=True)
    return client.scatter(estimator, broadcast=True, hash=True)


def _apply(block, estimator, method):
    _limit_threads()
    return getattr(estimator, method)(block)


class ParallelPostFit(MetaEstimatorMixin, BaseEstimator):
    """Fit in memory, apply block by block to Dask arrays.

    Parameters
    ----------
    estimator : estimator
        Any fitted-on-images skfg estimator or pipeline (e.g.
        ``Pipeline([CNNFeatureExtractor(), ImpostorClassifier()])``).

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone.

    Notes
    -----
    ``fit`` runs in the calling process on in-memory data (a sample). The other methods
    take in-memory inputs (applied directly) or a ``dask.array`` chunked along the first
    axis only (other axes are merged into one chunk): a 1-D array of image paths
    (``dask.array.from_array(np.asarray(paths, dtype=object), chunks=256)``), a
    ``(n, H, W, 3)`` uint8 array of images, or a 2-D array of features. They return a lazy
    ``dask.array`` with the same chunks along the first axis (its width and dtype are those
    of the estimator's output on the first row, computed in the calling process). A bad
    image fails its block
    with an :class:`~skfg.exceptions.ImageDecodeError` naming the file; to find *all* bad
    images of a collection in one pass use :func:`extract_features` or
    :func:`skfg.datasets.verify_images`.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skfg.parallel import ParallelPostFit
    >>> X = np.random.RandomState(0).randn(40, 3); y = (X[:, 0] > 0).astype(int)
    >>> model = ParallelPostFit(LogisticRegression()).fit(X, y)
    >>> model.predict(da.from_array(X, chunks=10)).compute().shape
    (40,)
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y=None, **fit_params):
        """Fit a clone of ``estimator`` on in-memory ``X`` (a Dask array is computed first)."""
        if _is_dask(X):
            X = X.compute()
        if _is_dask(y):
            y = y.compute()
        self.estimator_ = clone(self.estimator).fit(X, y, **fit_params)
        return self

    @property
    def classes_(self):
        check_is_fitted(self, "estimator_")
        return self.estimator_.classes_

    def _blockwise(self, X, method):
        check_is_fitted(self, "estimator_")
        if not _is_dask(X):
            return getattr(self.estimator_, method)(X)
        dask = _dask()
        if X.ndim > 1 and any(len(c) > 1 for c in X.chunks[1:]):
            X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
        # the output's width and dtype, from the first row (computed here, in the client)
        probe = np.asarray(getattr(self.estimator_, method)(X[:1].compute()))
        chunks = (X.chunks[0], *((n,) for n in probe.shape[1:]))
        kwargs = {"dtype": probe.dtype, "chunks": chunks, "meta": np.empty((0,) * probe.ndim, dtype=probe.dtype)}
        if X.ndim > probe.ndim:
            kwargs["drop_axis"] = list(range(probe.ndim, X.ndim))
        elif X.ndim < probe.ndim:
            kwargs["new_axis"] = list(range(X.ndim, probe.ndim))
        return X.map_blocks(_apply, _shipped(self.estimator_, dask), method, **kwargs)

    def transform(self, X):
        """``estimator_.transform`` block by block."""
        return self._blockwise(X, "transform")

    def predict(self, X):
        """``estimator_.predict`` block by block."""
        return self._blockwise(X, "predict")

    def predict_proba(self, X):
        """``estimator_.predict_proba`` block by block."""
        return self._blockwise(X, "predict_proba")

    def decision_function(self, X):
        """``estimator_.decision_function`` block by block."""
        return self._blockwise(X, "decision_function")

    def score(self, X, y):
        """``estimator_.score`` on in-memory data."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.score(X, y)


def _extract_chunk(transformer, X, rows):
    """Features of ``X[rows]``, or the list of its bad images (all of them)."""
    from .datasets import verify_images

    _limit_threads()
    block = X[rows]
    try:
        return "ok", np.asarray(transformer.transform(block), dtype=np.float32)
    except ImageDecodeError as err:
        bad = verify_images(block, n_jobs=1, image_size=None)
        found = [f"{b.error}" for b in bad] or [str(err)]
        return "bad", found


def extract_features(transformer, X, directory, chunk_size=256, client=None, max_in_flight=None, adopt=False):
    """Features of the images ``X`` into a :class:`~skfg.store.FeatureStore`, resumably.

    Parameters
    ----------
    transformer : fitted transformer
        E.g. a fitted :class:`skfg.CNNFeatureExtractor` (or a fitted pipeline of
        transformers).
    X : array-like of images
        Usually a 1-D array of paths.
    directory : str or path
        The store's folder. If it already holds a store of the same transformer, inputs
        and chunking, its finished chunks are kept and only the others are computed; a
        store of anything else is refused.
    chunk_size : int, default=256
        Images per chunk (one task each).
    client : distributed.Client or None, default=None
        Run the chunks on this cluster; ``None`` runs them in this process. The fitted
        transformer is scattered to the workers once.
    max_in_flight : int or None
        Chunks submitted at a time (bounds the client's memory); default twice the
        workers' threads.
    adopt : bool, default=False
        Take the chunk files of a folder without ``manifest.json`` as rows of this
        extraction (:meth:`FeatureStore.create <skfg.store.FeatureStore.create>`); by
        default such a folder is refused. Damaged chunks (truncated, of the wrong shape or
        dtype, without a checksum) are recomputed either way.

    Returns
    -------
    store : FeatureStore
        Complete: ``store.to_numpy()`` or ``store.to_dask()`` reads it.

    Raises
    ------
    ImageDecodeError
        After every chunk was attempted, when some images could not be read: the message
        lists each of them by path. The chunks without bad images are kept; fix or remove
        the files (which changes the inputs: use a new folder) and run again.
    """
    check_is_fitted(transformer)
    X = np.asarray(X) if not hasattr(X, "shape") else X
    n = len(X)
    if n == 0:
        raise ValueError("X is empty: no images to extract")
    probe = transformer.transform(X[:1])  # the width, and an early error for a wrong input
    paths = getattr(X, "ndim", 0) == 1 and np.asarray(X[:1]).dtype.kind in "OUS"
    inputs = [str(x) for x in X] if paths else X  # a list, an object or a unicode array: the same paths
    store = FeatureStore.create(directory, n, probe.shape[1], chunk_size,
                                fingerprint=joblib.hash((transformer, inputs)), adopt=adopt)
    todo = store.missing_chunks()
    logger.info("extracting %d of %d chunks into %s", len(todo), store.n_chunks, store.directory)
    errors = []

    def finish(i, result):
        status, value = result
        if status == "ok":
            store.write_chunk(i, value)
        else:
            errors.extend(value)

    if client is None:
        for i in todo:
            finish(i, _extract_chunk(transformer, X, store.chunk_slice(i)))
    else:
        from distributed import as_completed

        limit = max_in_flight or 2 * max(1, sum(client.nthreads().values()))
        [remote] = client.scatter([transformer], broadcast=True)
        pending = list(todo)

        chunk_of = {}

        def submit(i):
            future = client.submit(_extract_chunk, remote, X[store.chunk_slice(i)], slice(None), pure=False)
            chunk_of[future.key] = i
            return future

        running = as_completed([submit(pending.pop(0)) for _ in range(min(limit, len(pending)))])
        for future in running:
            finish(chunk_of.pop(future.key), future.result())
            future.release()
            if pending:
                running.add(submit(pending.pop(0)))
    if errors:
        raise ImageDecodeError(f"{len(errors)} image(s) could not be read (their chunks were not written; the "
                               f"others are in {store.directory}):\n" + "\n".join(errors))
    return store
