"""Atomic file writes: a file is either its old self or complete, never half written.

Every file skfg writes (models, checkpoints, store chunks, exported graphs, cached
features) goes through :func:`atomic_path`: the content is written to a temporary file
in the target's folder, flushed to the disk (``fsync``), and renamed over the target,
which POSIX and Windows both do in one step. A failed write (a full disk, a file-size
limit, an exception in the writer, Ctrl-C) leaves the previous file as it was and removes
the temporary one; a process killed outright leaves its temporary file behind, and the
next write to the same target removes it once that process is gone.
"""

import contextlib
import os
import secrets
from pathlib import Path

_SUFFIX = ".tmp"


def _temporary_name(path):
    # ".<name>.<pid>-<random>.tmp": hidden, tied to its target and to the writing process
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists, owned by someone else (or cannot tell: keep the file)
        return True
    return True


def remove_stale_temporaries(path, name=None):
    """Remove the temporary files that dead processes left while writing ``path``, or
    while writing any file of the folder ``path`` when ``name="*"``.

    Returns
    -------
    removed : list of Path
    """
    path = Path(path)
    folder, name = (path, name) if name else (path.parent, path.name)
    removed = []
    for tmp in folder.glob(f".{name}.*{_SUFFIX}"):
        pid = tmp.name[:-len(_SUFFIX)].rpartition(".")[2].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path, *, fsync=True, clean=True):
    """A temporary path to write ``path``'s new content to; renamed into place on success.

    Parameters
    ----------
    path : str or path-like
        The file to (re)write. Its folder must exist.
    fsync : bool, default=True
        Flush the content and the rename to the disk before returning, so that a power
        cut leaves the old or the new file, not an empty one. Off only for files that are
        recomputed when damaged (the feature cache).
    clean : bool, default=True
        First remove the temporary files that dead processes left for ``path``
        (:func:`remove_stale_temporaries`); off for many small files in one folder, whose
        writer cleans the folder once instead.

    Yields
    ------
    tmp : Path
        Write the new content here (by name or ``open(tmp, "wb")``).

    Examples
    --------
    >>> import os, tempfile
    >>> from skfg._files import atomic_path
    >>> target = os.path.join(tempfile.mkdtemp(), "model.bin")
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_bytes(b"new")
    >>> open(target, "rb").read()
    b'new'
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} to write {path.name} into")
    if clean:
        remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_folder(path.parent)


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse it
        pass
    finally:
        os.close(fd)
