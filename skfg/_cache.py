"""Per-image feature cache shared by every extractor in the process (and optionally on disk).

Keys are ``(config, image)`` pairs: ``config`` fingerprints everything that changes the
features (backbone, its weights, layers, pooling, preprocessing), ``image`` fingerprints
the image content (a hash of the file's bytes, or of the pixels). Caching per image, not
per call, is what lets the folds of ``GridSearchCV`` reuse the features of the full
training set.

Memory is bounded (``SKFG_CACHE_MB``, default 1024 MB, least recently used entries
dropped). The disk layer holds one ``.npy`` file per image and configuration
(``4 * n_features`` bytes plus a 128-byte header each) and is never pruned: delete the
folder to reclaim it. Each disk entry ends with the configuration and image keys it was
written for, after the array: an entry that cannot be read, has the wrong shape, holds a
NaN or infinity, or names another key (a file copied over another) is logged by path and
recomputed; a failed write is logged once per folder and skipped (the features are still
returned), and leaves no temporary file behind.
"""

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ._files import atomic_path, remove_stale_temporaries

logger = logging.getLogger("skfg")


class FeatureCache:
    """LRU memory cache of feature vectors with an optional on-disk layer.

    Parameters
    ----------
    max_bytes : int
        Memory budget; least recently used vectors are evicted beyond it.
    """

    def __init__(self, max_bytes):
        self.max_bytes = int(max_bytes)
        self._data = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._unwritable = set()  # disk folders whose write failure was logged
        self._cleaned = set()  # disk folders cleared of dead writers' temporary files

    def __len__(self):
        return len(self._data)

    def clear(self):
        with self._lock:
            self._data.clear()
            self._bytes = 0

    @staticmethod
    def _disk_path(directory, config, key):
        return Path(directory) / config[:20] / key[:2] / f"{key}.npy"

    def get(self, config, keys, directory=None, shape=None):
        """List of cached vectors (``None`` where missing) for ``keys``; disk entries of
        another ``shape`` than expected count as missing."""
        out = []
        with self._lock:
            for key in keys:
                value = self._data.get((config, key))
                if value is not None:
                    self._data.move_to_end((config, key))
                out.append(value)
        if directory is not None:
            for i, key in enumerate(keys):
                if out[i] is None:
                    path = self._disk_path(directory, config, key)
                    if path.is_file():
                        try:
                            value = _read_entry(path, config, key)
                            if shape is not None and value.shape != tuple(shape):
                                raise ValueError(f"shape {value.shape}, expected {tuple(shape)}")
                        except Exception as exc:  # a corrupt entry is recomputed (and rewritten), not trusted
                            logger.warning("skfg feature cache: %s is unreadable (%s: %s); recomputing it",
                                           path, type(exc).__name__, exc)
                            continue
                        out[i] = value
                        self._put_memory(config, key, value)
        return out

    def _put_memory(self, config, key, value):
        with self._lock:
            old = self._data.pop((config, key), None)
            if old is not None:
                self._bytes -= old.nbytes
            self._data[(config, key)] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and self._data:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= dropped.nbytes

    def put(self, config, keys, values, directory=None):
        """Store ``values[i]`` under ``keys[i]`` (read-only copies)."""
        for key, value in zip(keys, values):
            value = np.array(value, copy=True)
            value.setflags(write=False)
            self._put_memory(config, key, value)
            if directory is not None:
                self._write(self._disk_path(directory, config, key), value, directory, config, key)

    def _write(self, path, value, directory, config, key):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent not in self._cleaned:  # what killed writers left here, once per process
                self._cleaned.add(path.parent)
                remove_stale_temporaries(path.parent, "*")
            # atomic: readers never see half a file; no fsync (a damaged entry is recomputed)
            with atomic_path(path, fsync=False, clean=False) as tmp, open(tmp, "wb") as fh:
                np.save(fh, value)
                fh.write(_tail(config, key))
        except OSError as exc:  # full disk, read-only folder: the features are still returned
            if str(directory) not in self._unwritable:
                self._unwritable.add(str(directory))
                logger.warning("skfg feature cache: cannot write to %s (%s); features are computed but not "
                               "stored there", directory, exc)


def _tail(config, key):
    return f"\nskfg-cache {config} {key}\n".encode()


def _read_entry(path, config, key):
    """The vector of a disk entry, checked: finite, and written for ``(config, key)``."""
    with open(path, "rb") as fh:
        value = np.lib.format.read_array(fh, allow_pickle=False)
        tail = fh.read()
    if tail != _tail(config, key):
        raise ValueError("written for another image or configuration (or by an older skfg)")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError("holds NaN or infinite values")
    return value


_MEMORY = FeatureCache(max_bytes=int(os.environ.get("SKFG_CACHE_MB", "1024")) * 2**20)


def get_feature_cache():
    """The process-wide :class:`FeatureCache`."""
    return _MEMORY


def clear_feature_cache():
    """Empty the in-memory feature cache (disk caches are left alone)."""
    _MEMORY.clear()
