"""Training keeps the memory torch frees for the next step (glibc's malloc).

Each training step allocates and frees the same large activation and gradient tensors.
glibc's malloc serves allocations above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives them back with ``munmap`` on ``free``, and trims the top of its heap when
enough is free: the next step faults every 4 KiB page in again, zero-filled by the kernel.
Fine-tuning EfficientNet-Lite0 on 2 cores spent a third of its CPU time in the kernel that
way (about 200,000 page faults a second). While :func:`kept_freed_memory` is active, malloc
serves every size from its heap, grows it 256 MiB at a time and keeps what is freed
(``mallopt``: ``M_MMAP_MAX`` 0, ``M_TOP_PAD``, a high ``M_TRIM_THRESHOLD``); afterwards
``malloc_trim`` returns the free memory to the system and malloc goes on as in a process that
never trained (below). The numbers computed are unchanged, only where the memory comes
from; the peak resident memory is somewhat higher (``benchmarks/results/allocator.md``
measures both).

Nothing happens off glibc (macOS, Windows, musl), when the malloc settings were tuned
through the environment (``MALLOC_*_`` variables or ``GLIBC_TUNABLES``: the user's choice
stands), or when ``SKFG_KEEP_FREED_MEMORY=0``.
"""

import ctypes
import os
import platform
import threading
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4  # mallopt(3) parameter numbers
# While training: every size from the heap, grown 256 MiB at a time, nothing trimmed
_TRAINING = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_TOP_PAD: 256 * 2**20, _M_MMAP_MAX: 0}
# After the outermost training. A mallopt call turns glibc's dynamic mmap threshold off for
# the life of the process, so its starting values (128 KiB) would then mmap, and fault in
# again, every activation above 128 KiB that a prediction after the fit allocates. These are
# the values the dynamic threshold reaches by itself in a process that frees large blocks
# (the largest freed mmap'd size, at most 4 MiB x sizeof(long); the trim threshold twice it).
_LARGEST_THRESHOLD = 4 * 2**20 * ctypes.sizeof(ctypes.c_long)
_AFTER = {_M_TRIM_THRESHOLD: 2 * _LARGEST_THRESHOLD, _M_TOP_PAD: 128 * 1024,
          _M_MMAP_THRESHOLD: _LARGEST_THRESHOLD, _M_MMAP_MAX: 65536}
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_",
                  "GLIBC_TUNABLES")

_lock = threading.Lock()
_depth = 0  # trainings in progress (nested fits, or fits in threads)
_libc = None


def _glibc():
    """glibc's ``mallopt`` and ``malloc_trim`` (a ``ctypes.CDLL``), or None where they are not
    to be touched (see the module's docstring)."""
    global _libc
    if os.environ.get("SKFG_KEEP_FREED_MEMORY", "1") == "0" or any(k in os.environ for k in _USER_SETTINGS):
        return None
    if _libc is None:
        _libc = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):  # pragma: no cover - an unusual libc
                pass
    return _libc or None


@contextmanager
def kept_freed_memory():
    """Within it, glibc's malloc keeps freed memory for reuse (module docstring); nested and
    concurrent uses share one setting, undone when the last ends."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            for param, value in _TRAINING.items():
                libc.mallopt(param, value)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for param, value in _AFTER.items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)
