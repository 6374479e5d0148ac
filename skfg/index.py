"""Nearest-neighbour index over embeddings: exact, HNSW, IVF and PQ/OPQ-compressed.

One small class, :class:`NearestNeighborIndex`, wraps faiss (and a torch brute-force
search for small sets) behind ``fit`` / ``search`` / ``reconstruct``. Every search returns
*squared* L2 distances and row indices, nearest first. The index pickles: faiss indexes
are serialised to bytes (a GPU index is moved to the CPU first).

Methods
-------
``"brute"``  torch, exact; no faiss needed (the fallback for small sets).
``"exact"``  faiss ``IndexFlatL2``.
``"hnsw"``   faiss ``IndexHNSWFlat`` (graph, approximate, no training).
``"ivf"``    faiss ``IndexIVFFlat`` (inverted lists, approximate, k-means training).
``"pq"``     faiss ``IndexPQ``: ``code_size`` bytes per vector (lossy compression).
``"opq"``    an OPQ rotation before the PQ (better codes, slower training).
``"ivfpq"``  inverted lists over PQ codes (compressed *and* fast at millions of vectors).

For the compressed methods, distances are computed to the *decoded* vectors (ADC), so
they equal the distances to :meth:`NearestNeighborIndex.reconstruct`'s output. For
``"pq"`` and ``"opq"``, :meth:`NearestNeighborIndex.pq_codebooks` exposes the codes and
codebooks, :func:`decode_pq` decodes them in torch (differentiably in the codebooks) and
:meth:`NearestNeighborIndex.set_pq_centroids` stores tuned codebooks back.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ._distances import decode_pq, squared_distances
from ._messages import warn
from ._files import atomic_path

__all__ = ["COMPRESSED", "METHODS", "NearestNeighborIndex", "RefinedIndex", "ShardedIndex", "decode_pq",
           "squared_distances"]

_MIN_POINTS = 39  # faiss's default training points per k-means centroid


@dataclass(frozen=True)
class _Method:
    """One row of the table of index types: everything :class:`NearestNeighborIndex` does
    differently for a ``method``. Adding an index type is adding a row to :data:`_TABLE`.

    ``build(ix, faiss, n, d, m)`` returns ``(faiss index, done)`` for an index ``ix`` over
    ``n`` training vectors of dimension ``d`` with ``m`` bytes per code (compressed types),
    ``done`` called once trained (or None); ``build=None``: a torch brute-force search.
    """

    build: Callable = None
    compressed: bool = False  # codes of ``code_size`` bytes from 256-centroid sub-quantizers
    inverted_lists: bool = False  # IVF cells, visited ``n_probe`` at a time
    graph: bool = False  # an HNSW graph, searched ``ef_search`` wide
    rotation: bool = False  # a learned d x d rotation before the codes (OPQ)
    exposes_pq: bool = False  # pq_codebooks / set_pq_centroids
    direct_map: bool = False  # reconstruct needs faiss's id -> list map
    extra_bytes: Callable = None  # (ix, n, d) -> bytes besides the vectors / codes and codebooks


def _build_opq(ix, faiss, n, d, m):
    opq = faiss.OPQMatrix(d, m)
    opq.niter = 10  # faiss's default 50 took ~70 s at 100k vectors
    opq_pq = faiss.ProductQuantizer(d, m, 8)  # the PQ the rotation is trained with
    opq.pq = opq_pq

    def done(keep=opq_pq):  # drop the pointer to the training PQ before ``opq_pq`` (kept until here) is freed
        opq.pq = None

    return faiss.IndexPreTransform(opq, faiss.IndexPQ(d, m, 8)), done


def _ivf_bytes(ix, n, d):
    return ix.faiss_index.nlist * d * 4 + n * 8  # centroids + ids


_TABLE = {
    "brute": _Method(),
    "exact": _Method(build=lambda ix, faiss, n, d, m: (faiss.IndexFlatL2(d), None)),
    "hnsw": _Method(build=lambda ix, faiss, n, d, m: (faiss.IndexHNSWFlat(d, int(ix.hnsw_m)), None), graph=True,
                    extra_bytes=lambda ix, n, d: n * int(ix.hnsw_m) * 2 * 4),  # level 0 has 2*M links
    "ivf": _Method(build=lambda ix, faiss, n, d, m: (
        faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, ix.resolved_lists(n)), None),
        inverted_lists=True, extra_bytes=_ivf_bytes),
    # not index_factory("PQm"): that turns on slow polysemous training
    "pq": _Method(build=lambda ix, faiss, n, d, m: (faiss.IndexPQ(d, m, 8), None), compressed=True,
                  exposes_pq=True),
    "opq": _Method(build=_build_opq, compressed=True, rotation=True, exposes_pq=True,
                   extra_bytes=lambda ix, n, d: d * d * 4),
    "ivfpq": _Method(build=lambda ix, faiss, n, d, m: (
        faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, ix.resolved_lists(n), m, 8), None),
        compressed=True, inverted_lists=True, direct_map=True, extra_bytes=_ivf_bytes),
}
METHODS = tuple(_TABLE)
COMPRESSED = tuple(name for name, row in _TABLE.items() if row.compressed)


def _check_probe(n_probe):
    if n_probe is not None and (isinstance(n_probe, bool) or int(n_probe) < 1):
        raise ValueError(f"n_probe must be a positive int or None, got {n_probe!r}")
    return None if n_probe is None else int(n_probe)


def _faiss():
    """faiss, imported on first use (never at ``import skfg``)."""
    try:
        import faiss
    except ImportError as exc:
        import importlib.util

        if importlib.util.find_spec("faiss") is None:  # pragma: no cover - faiss-cpu is a dependency
            raise ImportError("this index method needs faiss: pip install faiss-cpu (or use method='brute')") from exc
        raise ImportError(f"faiss is installed but cannot be loaded ({exc}){_address_space_hint()}; or use "
                          "method='brute' (exact search in torch, no faiss)") from exc
    return faiss


def _address_space_hint():
    """Why a shared library fails to map: an address-space limit (``ulimit -v``), if one is set."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return ""
    if soft == resource.RLIM_INFINITY:
        return ""
    return (f". This process may use only {soft / 2**30:.1f} GiB of address space (ulimit -v): torch and faiss "
            "together reserve more than they use; raise the limit (ulimit -v unlimited), or cap the memory "
            "with ulimit -m or a cgroup instead")


class NearestNeighborIndex:
    """A nearest-neighbour index over the rows of a float matrix (squared L2 distance).

    Parameters
    ----------
    method : {"brute", "exact", "hnsw", "ivf", "pq", "opq", "ivfpq"}, default="exact"
        See the module docstring.
    code_size : int, default=16
        Bytes per vector of the compressed methods (``"pq"``, ``"opq"``, ``"ivfpq"``): the
        number of PQ sub-quantizers, each an 8-bit code. Must divide the dimension.
    n_lists : int or None, default=None
        IVF cells; ``None`` picks ``4 * sqrt(n)`` (at most ``n // 39``, at least 1).
    n_probe : int or None, default=None
        IVF cells visited per query; ``None`` picks ``max(8, n_lists // 8)``.
    hnsw_m : int, default=32
        HNSW graph degree.
    ef_search : int, default=128
        HNSW search breadth (higher: better recall, slower).
    random_state : int, default=0
        Seed of faiss's k-means (IVF, PQ, OPQ training).

    Attributes
    ----------
    n_vectors_ : int
    dim_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from skfg.index import NearestNeighborIndex
    >>> X = np.array([[0, 0], [1, 0], [0, 3]], dtype=np.float32)
    >>> d, i = NearestNeighborIndex("brute").fit(X).search([[0.9, 0.0]], 2)
    >>> i.tolist(), [round(float(v), 2) for v in d[0]]
    ([[1, 0]], [0.01, 0.81])
    """

    def __init__(self, method="exact", *, code_size=16, n_lists=None, n_probe=None, hnsw_m=32, ef_search=128,
                 random_state=0):
        if method not in METHODS:
            raise ValueError(f"Unknown index method {method!r}; valid: {', '.join(METHODS)}")
        self.method = method
        self.code_size = code_size
        self.n_lists = n_lists
        self._n_probe = _check_probe(n_probe)
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.random_state = random_state

    # ---------------------------------------------------------------- building
    def _check(self, X, what="X"):
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"{what} must be 2-D (n, dim); got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        return X

    def check_trainable(self, n, d):
        """Raise a clear ``ValueError`` when ``n`` vectors of dimension ``d`` cannot train
        this compressed index (before any work is spent on them); returns the bytes per code."""
        m = int(self.code_size)
        if m < 1 or d % m:
            divisors = [k for k in range(1, d + 1) if d % k == 0]
            raise ValueError(
                f"code_size={self.code_size} must divide the dimension {d}; valid sizes: "
                f"{', '.join(map(str, divisors[:12]))}{', ...' if len(divisors) > 12 else ''}"
            )
        if n < 256:
            raise ValueError(
                f"{self.method!r} compression trains 256 centroids per sub-quantizer and needs at "
                f"least 256 vectors; got {n}. Use method='exact' for small sets."
            )
        if self._row.rotation and n < d:
            # faiss's OPQ training corrupts memory (crashes the process) with fewer vectors than dimensions
            raise ValueError(
                f"'opq' learns a {d}x{d} rotation and needs at least as many vectors as dimensions "
                f"({d}); got {n}. Use method='pq' for this set."
            )
        return m

    @property
    def _row(self):
        return _TABLE[self.method]

    def resolved_lists(self, n):
        """The IVF cells of an index trained on ``n`` vectors: ``n_lists``, or for ``None``
        ``4 * sqrt(n)`` (at most ``n // 39``, at least 1)."""
        if self.n_lists is not None:
            return int(self.n_lists)
        return int(max(1, min(4 * math.sqrt(n), n // 39)))

    def fit(self, X):
        """Build the index over the rows of ``X`` (training the quantizers it needs):
        :meth:`train` on ``X``, then :meth:`add` of ``X``.

        Parameters
        ----------
        X : array-like of shape (n, dim)

        Returns
        -------
        self
        """
        X = self._check(X)
        return self._train(X).add(X)

    def train(self, X):
        """Train the quantizers on the rows of ``X`` and leave the index empty.

        For a collection larger than memory: train on a sample, then :meth:`add` the
        vectors chunk by chunk (:meth:`add_chunks`); memory holds the sample, one chunk
        and the index (16 bytes a vector for 16-byte IVF-PQ), never the collection.
        ``train(X).add(X)`` is :meth:`fit`, code for code. ``n_lists=None`` sizes the
        IVF cells on the sample: at scale, set ``n_lists`` for the collection (faiss
        wants ~39 training vectors a cell).

        Parameters
        ----------
        X : array-like of shape (n, dim)
            Training vectors (a sample of the collection).

        Returns
        -------
        self
        """
        return self._train(self._check(X))

    def _train(self, X):
        """:meth:`train` on checked ``X`` (warnings point at the caller of fit or train)."""
        n, d = X.shape
        if n == 0:
            raise ValueError("cannot build an index over 0 vectors")
        self.n_vectors_, self.dim_ = 0, d
        row = self._row
        if row.build is None:
            self._vectors = torch.empty((0, d))
            self._index = None
            return self
        faiss = _faiss()
        index, done = row.build(self, faiss, n, d, self.check_trainable(n, d) if row.compressed else None)
        self._configure_kmeans(index)
        # the largest k-means trained: 256 centroids per PQ sub-quantizer, or the IVF cells
        centroids = max(256 if row.compressed else 0, getattr(index, "nlist", 0))
        if n < _MIN_POINTS * centroids:
            warn(f"{self.method!r}: k-means with {centroids} centroids on {n} vectors (faiss recommends at least "
                 f"{_MIN_POINTS * centroids}); the centroids of a small set are less precise. Compare the accuracy "
                 f"with method='exact'.")
        if not index.is_trained:
            index.train(X)
        if done is not None:
            done()
        self._index = index
        self._vectors = None
        self._tune()
        return self

    def _configure_kmeans(self, index):
        """Seed every k-means faiss runs while training ``index`` (reproducible codes) and
        silence faiss's per-k-means "too few points" message (``fit`` warns once instead)."""
        faiss = _faiss()

        def configure(cp):
            cp.seed = int(self.random_state)
            cp.min_points_per_centroid = 1

        for obj in (index, getattr(index, "index", None), getattr(index, "pq", None)):
            if obj is None:
                continue
            obj = faiss.downcast_index(obj) if isinstance(obj, faiss.Index) else obj
            if hasattr(obj, "cp"):
                configure(obj.cp)
            if hasattr(obj, "pq"):
                configure(obj.pq.cp)
        if hasattr(index, "chain"):
            for i in range(index.chain.size()):
                t = faiss.downcast_VectorTransform(index.chain.at(i))
                if hasattr(t, "pq") and t.pq is not None:
                    configure(t.pq.cp)

    @property
    def n_probe(self):
        """IVF cells visited per query (``None``: ``max(8, n_lists // 8)``). Settable on a
        fitted index too (``index.n_probe = 32``): the recall / speed trade-off without
        refitting. No effect for the methods without inverted lists."""
        return self._n_probe

    @n_probe.setter
    def n_probe(self, n_probe):
        self._n_probe = _check_probe(n_probe)
        if getattr(self, "_index", None) is not None:
            self._tune()

    def set_n_probe(self, n_probe):
        """Set :attr:`n_probe` and return ``self`` (for chaining).

        Returns
        -------
        self
        """
        self.n_probe = n_probe
        return self

    def _tune(self):
        """Apply the search settings (``n_probe``, ``ef_search``) to the faiss index."""
        row = self._row
        if row.inverted_lists:
            nlist = self._index.nlist
            self._index.nprobe = int(self._n_probe) if self._n_probe is not None else max(8, nlist // 8)
        if row.graph:
            self._index.hnsw.efSearch = int(self.ef_search)

    def add(self, X):
        """Append rows to a fitted index (compressed methods encode them with the trained codebooks).

        Parameters
        ----------
        X : array-like of shape (n, dim)

        Returns
        -------
        self
        """
        self._fitted()
        X = self._check(X)
        if X.shape[1] != self.dim_:
            raise ValueError(f"X has {X.shape[1]} dimensions; the index holds {self.dim_}-dimensional vectors")
        if self._index is None:
            self._vectors = torch.cat([self._vectors, torch.from_numpy(X.copy())])
        else:
            self._index.add(X)
        self.n_vectors_ += len(X)
        return self

    def add_chunks(self, chunks):
        """:meth:`add` each chunk of vectors in turn (bounded memory: one chunk at a time).

        Parameters
        ----------
        chunks : FeatureStore or iterable of array-like of shape (n_i, dim)
            A complete :class:`skfg.store.FeatureStore` is read chunk by chunk.

        Returns
        -------
        self

        Examples
        --------
        >>> import numpy as np
        >>> from skfg.index import NearestNeighborIndex
        >>> X = np.random.RandomState(0).randn(1000, 8).astype(np.float32)
        >>> index = NearestNeighborIndex("ivf", n_lists=4).train(X[:500])
        >>> index.add_chunks(np.array_split(X, 4)).n_vectors_
        1000
        """
        from .store import FeatureStore

        for chunk in chunks.iter_chunks() if isinstance(chunks, FeatureStore) else chunks:
            self.add(chunk)
        return self

    # --------------------------------------------------------------- querying
    def _fitted(self):
        if not hasattr(self, "n_vectors_"):
            raise RuntimeError("this NearestNeighborIndex is not fitted yet; call fit(X) first")

    def search(self, queries, k):
        """The ``k`` nearest rows of each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim)
        k : int
            Clipped to the number of indexed vectors.

        Returns
        -------
        distances : ndarray of shape (n_queries, k), float32
            Squared L2 distances, ascending.
        indices : ndarray of shape (n_queries, k), int64
            Row numbers of the indexed vectors (-1 where an approximate index found fewer).
        """
        self._fitted()
        Q = self._check(queries, "queries")
        if Q.shape[1] != self.dim_:
            raise ValueError(f"queries have {Q.shape[1]} dimensions; the index holds {self.dim_}-dimensional vectors")
        k = int(min(k, self.n_vectors_))
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        if self._index is None:
            out_d, out_i = [], []
            for start in range(0, len(Q), 1024):
                d = squared_distances(torch.from_numpy(Q[start : start + 1024]), self._vectors)
                v, i = torch.topk(d, k, dim=1, largest=False)
                out_d.append(v.numpy())
                out_i.append(i.numpy())
            if not out_d:
                return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
            return np.concatenate(out_d), np.concatenate(out_i).astype(np.int64)
        d, i = self._index.search(Q, k)
        return d, i.astype(np.int64)

    def reconstruct(self):
        """All indexed vectors as stored: exact copies, or the decoded PQ codes.

        Returns
        -------
        vectors : ndarray of shape (n_vectors, dim), float32
        """
        self._fitted()
        if self._index is None:
            return self._vectors.numpy().copy()
        if self._row.direct_map:
            self._index.make_direct_map()
        return self._index.reconstruct_n(0, self.n_vectors_)

    def _pq_parts(self):
        """(the IndexPQ holding codes and codebooks, the OPQ transform or None)."""
        self._fitted()
        if not self._row.exposes_pq:
            exposing = " or ".join(repr(k) for k, row in _TABLE.items() if row.exposes_pq)
            raise ValueError(f"PQ codebooks are exposed for method {exposing}; this index is {self.method!r}")
        faiss = _faiss()
        if not self._row.rotation:
            return self._index, None
        return faiss.downcast_index(self._index.index), faiss.downcast_VectorTransform(self._index.chain.at(0))

    def pq_codebooks(self):
        """Codes and codebooks of a ``"pq"`` / ``"opq"`` index (copies).

        Returns
        -------
        centroids : ndarray of shape (code_size, 256, dim // code_size), float32
        codes : ndarray of shape (n_vectors, code_size), int64
            Row ``i`` decodes to the concatenation of ``centroids[j, codes[i, j]]``.
        rotation : ndarray of shape (dim, dim) or None
            OPQ's orthonormal rotation ``A`` (the codes encode ``A x``); ``None`` for PQ.
        """
        index, opq = self._pq_parts()
        pq, faiss = index.pq, _faiss()
        centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
        codes = faiss.vector_to_array(index.codes).reshape(index.ntotal, pq.code_size).astype(np.int64)
        rotation = None if opq is None else faiss.vector_to_array(opq.A).reshape(opq.d_out, opq.d_in)
        return centroids, codes, rotation

    def set_pq_centroids(self, centroids):
        """Replace the codebooks of a ``"pq"`` / ``"opq"`` index, keeping every code.

        Searches and :meth:`reconstruct` then use the new centroids; vectors added later
        are encoded with them.

        Parameters
        ----------
        centroids : array-like of shape (code_size, 256, dim // code_size)

        Returns
        -------
        self
        """
        index, _ = self._pq_parts()
        pq, faiss = index.pq, _faiss()
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if centroids.shape != (pq.M, pq.ksub, pq.dsub):
            raise ValueError(f"centroids must have shape {(pq.M, pq.ksub, pq.dsub)}; got {centroids.shape}")
        if not np.isfinite(centroids).all():
            raise ValueError("centroids contain NaN or infinite values")
        faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)
        if pq.transposed_centroids.size() > 0:  # a cached layout some faiss versions search with
            pq.sync_transposed_centroids()
        return self

    @property
    def faiss_index(self):
        """The underlying faiss index (``None`` for ``method="brute"``), e.g. for faiss's own
        composite searches such as ``IndexRefine``."""
        self._fitted()
        return self._index

    @property
    def memory_bytes(self):
        """Bytes held by the stored vectors or codes, plus codebooks/rotations/centroids."""
        self._fitted()
        n, d, row = self.n_vectors_, self.dim_, self._row
        extra = 0 if row.extra_bytes is None else row.extra_bytes(self, n, d)
        if not row.compressed:
            return n * d * 4 + extra
        m = int(self.code_size)
        return n * m + m * 256 * (d // m) * 4 + extra  # codes + codebooks

    @property
    def code_bytes_per_vector(self):
        """Bytes that each indexed vector occupies (``code_size`` for the compressed methods)."""
        self._fitted()
        return int(self.code_size) if self._row.compressed else self.dim_ * 4

    # ---------------------------------------------------------------- pickling
    def __getstate__(self):
        state = self.__dict__.copy()
        index = state.pop("_index", None)
        if index is not None:
            faiss = _faiss()
            if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:  # pragma: no cover - no GPU
                index = faiss.index_gpu_to_cpu(index)
            state["_faiss_bytes"] = faiss.serialize_index(index).tobytes()
        vectors = state.pop("_vectors", None)
        if vectors is not None:
            state["_vectors_np"] = vectors.numpy()
        return state

    def __setstate__(self, state):
        state = dict(state)
        blob = state.pop("_faiss_bytes", None)
        vectors = state.pop("_vectors_np", None)
        if "n_probe" in state:  # pickled before n_probe became a property
            state["_n_probe"] = state.pop("n_probe")
        self.__dict__.update(state)
        if "n_vectors_" not in state:
            return
        self._index = None if blob is None else _faiss().deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        self._vectors = None if vectors is None else torch.from_numpy(np.array(vectors))
        if self._index is not None:
            self._tune()

    def __repr__(self):
        return f"NearestNeighborIndex(method={self.method!r})"

    # ------------------------------------------------------------- files
    def save(self, path):
        """Write the fitted index to ``path`` with faiss's own format (``faiss.write_index``)
        and its parameters to ``path + ".json"``; :meth:`load` reads both back.

        Parameters
        ----------
        path : str or path

        Returns
        -------
        path : pathlib.Path
        """
        self._fitted()
        if self._index is None:
            raise ValueError("method='brute' keeps its vectors in torch; save it with joblib, or use method='exact'")
        path = Path(path)
        meta = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        meta["n_probe"] = self._n_probe
        with atomic_path(path) as tmp:
            _faiss().write_index(self._index, str(tmp))
        with atomic_path(str(path) + ".json") as tmp:
            tmp.write_text(json.dumps(meta))
        return path

    @classmethod
    def load(cls, path, mmap=False):
        """An index written by :meth:`save`.

        Parameters
        ----------
        path : str or path
        mmap : bool, default=False
            Map the file instead of reading it into memory (``faiss.IO_FLAG_MMAP``): an
            IVF index larger than the memory is then searched from disk.

        Returns
        -------
        index : NearestNeighborIndex
        """
        path = Path(path)
        sidecar = Path(str(path) + ".json")
        if not path.is_file() or not sidecar.is_file():
            raise FileNotFoundError(f"{path} (and {sidecar.name}) must both exist: write them with save()")
        meta = json.loads(sidecar.read_text())
        faiss = _faiss()
        self = cls(meta["method"])
        self._n_probe = meta.pop("n_probe", None)
        self.__dict__.update(meta)
        self._index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
        self._vectors = None
        self._tune()
        return self


class ShardedIndex:
    """Several indexes searched as one, for a collection larger than one index or machine.

    Each query's ``k`` nearest over all shards: every shard is searched for ``k``, the
    lists are merged by distance, and a shard's row ``j`` is reported as
    ``offset + j``, where the offset is the number of vectors in the shards before it
    (the rows of the shards, concatenated in order).

    Parameters
    ----------
    shards : list of fitted NearestNeighborIndex
        Of the same dimension.

    Examples
    --------
    >>> import numpy as np
    >>> from skfg.index import NearestNeighborIndex, ShardedIndex
    >>> X = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> both = ShardedIndex([NearestNeighborIndex().fit(X[:3]), NearestNeighborIndex().fit(X[3:])])
    >>> both.search([[7.5, 8.5]], 2)[1].tolist()
    [[4, 3]]
    """

    def __init__(self, shards):
        shards = list(shards)
        if not shards:
            raise ValueError("ShardedIndex needs at least one shard")
        dims = {s.dim_ for s in shards}
        if len(dims) != 1:
            raise ValueError(f"the shards hold vectors of different dimensions: {sorted(dims)}")
        self.shards = shards
        self.dim_ = dims.pop()
        self.offsets_ = np.cumsum([0] + [s.n_vectors_ for s in shards[:-1]])
        self.n_vectors_ = int(sum(s.n_vectors_ for s in shards))

    @property
    def memory_bytes(self):
        """Bytes of all shards' vectors or codes (:attr:`NearestNeighborIndex.memory_bytes`)."""
        return int(sum(s.memory_bytes for s in self.shards))

    def search(self, queries, k):
        """The ``k`` nearest rows over all shards (as :meth:`NearestNeighborIndex.search`)."""
        k = int(min(k, self.n_vectors_))
        dists, ids = [], []
        for shard, offset in zip(self.shards, self.offsets_):
            d, i = shard.search(queries, min(k, shard.n_vectors_))
            dists.append(np.where(i < 0, np.inf, d))
            ids.append(np.where(i < 0, -1, i + offset))
        d, i = np.concatenate(dists, axis=1), np.concatenate(ids, axis=1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        d = np.take_along_axis(d, order, axis=1)
        return d.astype(np.float32), np.take_along_axis(i, order, axis=1)


class RefinedIndex:
    """A compressed index whose candidates are re-ranked by exact distances to the
    original vectors, read from disk (faiss's ``IndexRefine``, with the vectors kept out
    of memory), or by the distances of finer codes held in memory.

    Each query's ``k * k_factor`` nearest candidates under the compressed codes are
    looked up in ``vectors`` (a :class:`~skfg.store.FeatureStore` or an array, typically
    memory-mapped) and the ``k`` nearest by exact squared distance are returned. Memory
    holds the codes and the candidates' rows, never the collection; the recall lost to
    the codes is recovered as long as the true neighbours are among the candidates.

    Reading a candidate from a store larger than the page cache costs a disk access, so
    a large ``k_factor`` is slow. ``vectors`` may therefore also be a second,
    finer compressed :class:`NearestNeighborIndex` over the same rows (e.g. ``"opq"`` with
    64-byte codes, trained on the same sample): the candidates are then re-ranked in
    memory by its distances (faiss's ``IndexRefine``, in C++). Chaining both keeps the
    disk reads few: ``RefinedIndex(RefinedIndex(coarse, fine, 16), store, 3)`` re-ranks
    ``k * 3 * 16`` coarse candidates with the fine codes and reads only the best
    ``k * 3`` from disk.

    Parameters
    ----------
    index : NearestNeighborIndex, ShardedIndex or RefinedIndex
        Fitted, over the rows of ``vectors`` in order (a :class:`NearestNeighborIndex`
        backed by faiss when ``vectors`` is an index).
    vectors : FeatureStore, NearestNeighborIndex or array-like of shape (n_vectors, dim)
        The exact vectors, row ``i`` being the index's row ``i``; or a finer index over
        the same rows, whose (approximate) distances re-rank.
    k_factor : int, default=8
        Candidates searched per neighbour returned.
    read_threads : int, default=8
        Threads reading the candidates' rows from a :class:`~skfg.store.FeatureStore`
        at once (:meth:`~skfg.store.FeatureStore.read_rows`; 1 reads one after the other).

    Examples
    --------
    >>> import numpy as np
    >>> from skfg.index import NearestNeighborIndex, RefinedIndex
    >>> X = np.random.RandomState(0).randn(2000, 16).astype(np.float32)
    >>> pq = NearestNeighborIndex("pq", code_size=4).fit(X)
    >>> exact = NearestNeighborIndex("exact").fit(X).search(X[:5], 3)[1]
    >>> bool((RefinedIndex(pq, X, k_factor=20).search(X[:5], 3)[1] == exact).all())
    True
    """

    def __init__(self, index, vectors, k_factor=8, read_threads=8):
        from .store import FeatureStore

        if int(k_factor) < 1:
            raise ValueError(f"k_factor must be >= 1; got {k_factor}")
        if isinstance(read_threads, bool) or not isinstance(read_threads, (int, np.integer)) or read_threads < 1:
            raise ValueError(f"read_threads must be a positive int; got {read_threads!r}")
        if isinstance(vectors, NearestNeighborIndex):
            if (not isinstance(index, NearestNeighborIndex) or index.faiss_index is None
                    or vectors.faiss_index is None):
                raise ValueError("re-ranking by a finer index needs two faiss-backed NearestNeighborIndex "
                                 f"objects (not method='brute'); got {index!r} and {vectors!r}")
            n, d = vectors.n_vectors_, vectors.dim_
        elif isinstance(vectors, FeatureStore):
            n, d = vectors.n_rows, vectors.n_features
        else:
            n, d = len(vectors), np.shape(vectors)[1]
        if (n, d) != (index.n_vectors_, index.dim_):
            raise ValueError(f"vectors of shape {(n, d)} do not match the index ({index.n_vectors_} vectors of "
                             f"dimension {index.dim_})")
        self.index, self.vectors, self.k_factor = index, vectors, int(k_factor)
        self.read_threads = int(read_threads)
        self.n_vectors_, self.dim_ = index.n_vectors_, index.dim_
        self._block_floats = 2**24  # candidate vector entries held per block of queries (64 MB)

    @property
    def memory_bytes(self):
        """Bytes of the compressed index, and of the finer one re-ranking (the exact
        vectors stay on disk)."""
        fine = self.vectors.memory_bytes if isinstance(self.vectors, NearestNeighborIndex) else 0
        return self.index.memory_bytes + fine

    def _rows(self, ids):
        """The exact vectors of sorted, unique row ids."""
        from .store import FeatureStore

        if isinstance(self.vectors, FeatureStore):
            return self.vectors.read_rows(ids, n_threads=getattr(self, "read_threads", 8)).astype(np.float32, copy=False)
        return np.asarray(self.vectors[ids], dtype=np.float32)

    def search(self, queries, k):
        """The ``k`` nearest rows by exact distance among the compressed index's candidates
        (as :meth:`NearestNeighborIndex.search`)."""
        Q = np.ascontiguousarray(queries, dtype=np.float32)
        k = int(min(k, self.n_vectors_))
        if isinstance(self.vectors, NearestNeighborIndex):  # faiss re-ranks without gathering vectors
            return self._search_refined(Q, k)
        block = max(1, self._block_floats // max(1, k * self.k_factor * self.dim_))  # queries a block
        if len(Q) > block:  # bounded memory: candidates x dim per block of queries
            parts = [self.search(Q[i : i + block], k) for i in range(0, len(Q), block)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        _, cand = self.index.search(Q, k * self.k_factor)
        ids = np.unique(cand[cand >= 0])
        if len(ids) == 0:
            return np.full((len(Q), k), np.inf, np.float32), np.full((len(Q), k), -1, np.int64)
        rows = self._rows(ids)
        pos = np.searchsorted(ids, np.where(cand >= 0, cand, ids[0]))
        diff = rows[pos] - Q[:, None, :]  # (n_queries, candidates, dim)
        d = np.where(cand >= 0, np.einsum("qcd,qcd->qc", diff, diff), np.inf)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d, order, 1).astype(np.float32), np.take_along_axis(cand, order, 1)

    def _search_refined(self, Q, k):
        """Candidates of the coarse index re-ranked by the finer index's distances (faiss's
        ``IndexRefine``, which searches the coarse index with its own ``n_probe``)."""
        if self.vectors.n_vectors_ != self.index.n_vectors_:
            raise ValueError(f"the finer index holds {self.vectors.n_vectors_} vectors, the index "
                             f"{self.index.n_vectors_}; add the same rows to both")
        refine = _faiss().IndexRefine(self.index.faiss_index, self.vectors.faiss_index)  # borrows both
        refine.k_factor = float(self.k_factor)
        d, i = refine.search(Q, k)
        return d, i.astype(np.int64)
