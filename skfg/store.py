"""Features on disk, in chunks: out-of-core storage that an interrupted extraction resumes.

A :class:`FeatureStore` is a folder with ``manifest.json`` (the number of rows, the width,
the chunk size, the dtype and a fingerprint of what the features are of) and one ``.npy``
file per finished chunk, written to a temporary name, flushed to disk and renamed into
place, so a chunk file is either complete or absent: a run killed at any point leaves only
finished chunks, and the next run computes the others
(:func:`skfg.parallel.extract_features`). Chunks read back memory-mapped, or as one lazy
``dask.array``.

The store does not trust its files. Each chunk's checksum is written beside it
(``chunk-<i>.sum``, before the chunk itself, so a chunk never exists without one; a file
per chunk rather than a list in the manifest, which would be rewritten for every chunk).
Every read checks the chunk's header and size against the manifest (its shape and dtype:
a chunk of 3 rows where 4 belong, a float64 chunk in a float32 store, a zero-byte or
truncated file); reading a whole chunk (:meth:`FeatureStore.to_numpy`,
:meth:`~FeatureStore.iter_chunks`, :meth:`~FeatureStore.verify`) also checks its checksum.
A damaged chunk is an error naming its file, and counts as missing, so that the next
extraction recomputes it; rows are never returned misaligned. A folder of chunks without
``manifest.json`` is refused unless adopted explicitly (``create(..., adopt=True)``).

NumPy's ``.npy`` shards and a JSON manifest were picked over Zarr: no extra dependency,
readable by anything that reads NumPy files, and the atomic rename per chunk gives the
resume guarantee directly.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ._files import atomic_path

FORMAT = "skfg-features/2"  # 2: a checksum beside each chunk
_FORMATS = ("skfg-features/1", FORMAT)  # 1: no checksums (read with the other checks only)
logger = logging.getLogger("skfg")


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _checksum(values):
    return hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).hexdigest()


_READ_POOLS = {}  # (process id, threads) -> ThreadPoolExecutor, shared by every store


def _read_pool(n_threads):
    """A thread pool of ``n_threads`` for :meth:`FeatureStore.read_rows`, made once per
    process (a forked child makes its own)."""
    from concurrent.futures import ThreadPoolExecutor

    key = (os.getpid(), n_threads)
    if key not in _READ_POOLS:
        _READ_POOLS[key] = ThreadPoolExecutor(n_threads, thread_name_prefix="skfg-read")
    return _READ_POOLS[key]


class FeatureStore:
    """A chunked on-disk array of features, ``(n_rows, n_features)``.

    Parameters
    ----------
    directory : str or path
        The store's folder (created by :meth:`create`).

    Attributes
    ----------
    n_rows, n_features, chunk_size : int
    dtype : numpy.dtype
    fingerprint : str
        What the rows are (e.g. a hash of the extractor and of its inputs); a store is
        only ever filled with rows of one fingerprint.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from skfg.store import FeatureStore
    >>> store = FeatureStore.create(tempfile.mkdtemp(), n_rows=5, n_features=3, chunk_size=2, fingerprint="x")
    >>> for i in store.missing_chunks():
    ...     rows = store.chunk_slice(i)
    ...     store.write_chunk(i, np.ones((rows.stop - rows.start, 3)))
    >>> store.to_numpy().shape, store.missing_chunks()
    ((5, 3), [])
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        manifest = self.directory / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.directory} is not a feature store: it has no manifest.json")
        try:
            meta = json.loads(manifest.read_text())
        except ValueError as err:
            raise ValueError(f"{manifest} is damaged ({err}); delete the folder and extract again") from err
        if meta.get("format") not in _FORMATS:
            raise ValueError(f"{manifest} is not a {FORMAT} manifest (format {meta.get('format')!r})")
        self.checksums = meta["format"] != "skfg-features/1"
        self.n_rows, self.n_features = int(meta["n_rows"]), int(meta["n_features"])
        self.chunk_size, self.dtype = int(meta["chunk_size"]), np.dtype(meta["dtype"])
        self.fingerprint = meta["fingerprint"]

    @classmethod
    def create(cls, directory, n_rows, n_features, chunk_size, fingerprint, dtype="float32", adopt=False):
        """Open the store at ``directory``, creating it when absent.

        An existing store must have been created with the same shape, chunk size, dtype
        and fingerprint (a ``ValueError`` names what differs): its finished chunks are
        then kept, which is how an interrupted extraction resumes.

        A folder that holds chunk files but no ``manifest.json`` is refused: nothing says
        what its rows are of. With ``adopt=True`` its chunks of the right shape and dtype
        are taken as rows of ``fingerprint`` (their checksums computed now).
        """
        if int(n_rows) < 1 or int(n_features) < 1 or int(chunk_size) < 1:
            raise ValueError(f"n_rows, n_features and chunk_size must be >= 1, got {n_rows}, {n_features}, "
                             f"{chunk_size}")
        directory = Path(directory)
        meta = {"format": FORMAT, "n_rows": int(n_rows), "n_features": int(n_features),
                "chunk_size": int(chunk_size), "dtype": np.dtype(dtype).str, "fingerprint": str(fingerprint)}
        manifest = directory / "manifest.json"
        if manifest.is_file():
            store = cls(directory)
            found = {"n_rows": store.n_rows, "n_features": store.n_features, "chunk_size": store.chunk_size,
                     "dtype": store.dtype.str, "fingerprint": store.fingerprint}
            differ = [f"{k} {found[k]!r} (asked {meta[k]!r})" for k in found if found[k] != meta[k]]
            if differ:
                raise ValueError(f"{directory} holds another feature store: " + ", ".join(differ)
                                 + "; use another folder, or delete this one to start again")
            return store
        orphans = sorted(directory.glob("chunk-*.npy")) if directory.is_dir() else []
        if orphans and not adopt:
            raise ValueError(f"{directory} holds {len(orphans)} chunk files but no manifest.json, so nothing says "
                             "what their rows are of; use another folder, delete them, or pass adopt=True if "
                             "they are rows of this very extraction")
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
        store = cls(directory)
        if adopt:
            store.adopt()
        return store

    @property
    def n_chunks(self):
        return -(-self.n_rows // self.chunk_size)

    def chunk_slice(self, i):
        """The rows of chunk ``i``."""
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} out of range: the store has {self.n_chunks} chunks")
        return slice(i * self.chunk_size, min((i + 1) * self.chunk_size, self.n_rows))

    def _path(self, i):
        return self.directory / f"chunk-{i:08d}.npy"

    def _sum_path(self, i):
        return self.directory / f"chunk-{i:08d}.sum"

    def _header_problem(self, i):
        """What is wrong with chunk ``i``'s file as the manifest describes it (header,
        shape, dtype, size, checksum file), or None; reads the header only."""
        rows = self.chunk_slice(i)
        path = self._path(i)
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = _HEADER_READERS.get(version)
                if read_header is None:
                    return f".npy format version {version}, expected 1.0 or 2.0"
                shape, fortran, dtype = read_header(fh)
                offset = fh.tell()
            size = path.stat().st_size
        except (OSError, ValueError, SyntaxError) as exc:  # a zero-byte or cut header
            return f"not a readable .npy file ({type(exc).__name__}: {exc})"
        expected = (rows.stop - rows.start, self.n_features)
        if tuple(shape) != expected or fortran:
            return f"shape {tuple(shape)}, expected {expected}"
        if np.dtype(dtype) != self.dtype:
            return f"dtype {np.dtype(dtype)}, expected {self.dtype}"
        if size != offset + int(np.prod(shape)) * self.dtype.itemsize:
            return f"{size} bytes, expected {offset + int(np.prod(shape)) * self.dtype.itemsize} (truncated?)"
        if self.checksums and not self._sum_path(i).is_file():
            return f"no checksum file {self._sum_path(i).name}"
        return None

    def _problem(self, i, full=False):
        """``None``, ``"missing"`` or what is wrong with chunk ``i`` (``full``: its checksum too)."""
        if not self._path(i).is_file():
            return "missing"
        problem = self._header_problem(i)
        if problem is None and full and self.checksums:
            if _checksum(np.load(self._path(i), mmap_mode="r")) != self._sum_path(i).read_text().strip():
                problem = "its content does not match its checksum"
        return problem

    def missing_chunks(self):
        """Indices of the chunks not written yet, or damaged (to recompute: each damaged
        file is logged by name)."""
        out = []
        for i in range(self.n_chunks):
            problem = self._problem(i)
            if problem is not None:
                if problem != "missing":
                    logger.warning("skfg feature store: %s is damaged (%s); it counts as missing and is recomputed",
                                   self._path(i), problem)
                out.append(i)
        return out

    def write_chunk(self, i, values):
        """Write chunk ``i`` (atomically: a complete file or none), its checksum first."""
        rows = self.chunk_slice(i)
        values = np.asarray(values, dtype=self.dtype)
        if values.shape != (rows.stop - rows.start, self.n_features):
            raise ValueError(f"chunk {i} must have shape {(rows.stop - rows.start, self.n_features)}, "
                             f"got {values.shape}")
        if self.checksums:
            with atomic_path(self._sum_path(i)) as tmp:
                tmp.write_text(_checksum(values))
        with atomic_path(self._path(i)) as tmp, open(tmp, "wb") as f:
            np.save(f, values)

    def _damaged(self, i, problem):
        return ValueError(f"{self._path(i)} (chunk {i} of {self.directory}) is damaged: {problem}. Run the "
                          "extraction again (skfg.parallel.extract_features recomputes it), or delete the file")

    def read_chunk(self, i, verify=False):
        """Chunk ``i``, memory-mapped (read-only).

        Its header, shape, dtype and size are checked against the manifest; with
        ``verify`` its checksum too (which reads the whole chunk). A damaged chunk raises
        a ``ValueError`` naming its file.
        """
        self.chunk_slice(i)
        problem = self._problem(i, full=verify)
        if problem == "missing":
            raise FileNotFoundError(f"chunk {i} of {self.directory} was never written; extract it first")
        if problem is not None:
            raise self._damaged(i, problem)
        return np.load(self._path(i), mmap_mode="r")

    def adopt(self):
        """Take the chunk files in the folder that have the right header, shape, dtype and
        size as this store's rows, writing their checksums (for chunks written without
        them: a store without a manifest, or of the first format). Returns their indices."""
        adopted = []
        for i in range(self.n_chunks):
            unsummed = f"no checksum file {self._sum_path(i).name}"
            if self._path(i).is_file() and self._header_problem(i) in (None, unsummed):
                with atomic_path(self._sum_path(i)) as tmp:
                    tmp.write_text(_checksum(np.load(self._path(i), mmap_mode="r")))
                adopted.append(i)
        return adopted

    def verify(self):
        """Check every chunk's header and checksum; return ``{chunk: problem}`` of the
        missing or damaged ones (empty when the store is whole)."""
        return {i: p for i in range(self.n_chunks) if (p := self._problem(i, full=True)) is not None}

    def _check_complete(self):
        missing = [i for i in range(self.n_chunks) if not self._path(i).is_file()]
        if missing:
            raise ValueError(f"{self.directory} lacks {len(missing)} of {self.n_chunks} chunks "
                             f"(first: {missing[0]}); finish the extraction first")

    def read_rows(self, rows, n_threads=8):
        """Rows ``rows`` of the store, each read from its chunk file with ``os.pread``.

        For scattered rows of a store larger than memory (re-ranking candidates): the page
        cache keeps what was read, and the process maps nothing (the touched pages of a
        memory map count as its resident memory). The reads are issued from ``n_threads``
        threads at once, so a disk that serves several requests together (an SSD, a
        network volume) answers them in parallel.

        Parameters
        ----------
        rows : array-like of int
        n_threads : int, default=8
            Threads reading at once (1: one read after the other, in this thread).

        Returns
        -------
        values : ndarray of shape (len(rows), n_features)
        """
        if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive int, got {n_threads!r}")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        row_bytes = self.n_features * self.dtype.itemsize
        where = self.__dict__.setdefault("_chunk_files", {})  # chunk -> (file name, data offset)
        out = np.empty((len(rows), self.n_features), dtype=self.dtype)
        files = {}  # chunk -> open file, for this call
        try:
            targets = []  # (file descriptor, byte offset) of each row
            for row in rows:
                c = int(row) // self.chunk_size
                if c not in where:
                    mapped = self.read_chunk(c)  # the file's name and header size; no data is read
                    where[c] = (mapped.filename, mapped.offset)
                if c not in files:
                    files[c] = open(where[c][0], "rb")
                targets.append((files[c].fileno(), where[c][1] + (int(row) - c * self.chunk_size) * row_bytes))

            def read(span):
                for j in span:
                    fd, offset = targets[j]
                    out[j] = np.frombuffer(os.pread(fd, row_bytes, offset), dtype=self.dtype)

            spans = np.array_split(np.arange(len(rows)), min(int(n_threads), max(1, len(rows))))
            if len(spans) == 1:
                read(spans[0])
            else:
                list(_read_pool(len(spans)).map(read, spans))  # os.pread releases the GIL
        finally:
            for fh in files.values():
                fh.close()
        return out

    def iter_chunks(self):
        """Each chunk in row order, memory-mapped (read-only); the store must be complete.

        Yields
        ------
        chunk : ndarray of shape (rows, n_features)
        """
        self._check_complete()
        for i in range(self.n_chunks):
            yield self.read_chunk(i, verify=True)

    def to_numpy(self):
        """All rows in memory (every chunk's checksum checked)."""
        self._check_complete()
        return np.concatenate([self.read_chunk(i, verify=True) for i in range(self.n_chunks)])

    def to_dask(self):
        """All rows as a lazy ``dask.array`` with one block per chunk (needs ``skfg[dask]``)."""
        try:
            import dask.array as da
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("FeatureStore.to_dask needs Dask: pip install 'dask[array]' distributed (skfg's [dask] extra)") from err
        self._check_complete()
        blocks = [da.from_array(self.read_chunk(i), chunks=-1) for i in range(self.n_chunks)]
        return da.concatenate(blocks, axis=0)

