"""Atomic writes: the old file or the new one, never half of one; dead writers' leftovers removed."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from skfg._files import atomic_path, remove_stale_temporaries
from skfg._training import _Checkpoint


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the ne")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.bin"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.bin"]


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_killed_writers_temporary_file_is_removed_on_the_next_write(tmp_path):
    ckpt = _Checkpoint(tmp_path, "sig")
    dead, alive = _dead_pid(), os.getppid()
    left = tmp_path / f".checkpoint.pt.{dead}-0a1b2c3d.tmp"  # what kill -9 during a write leaves
    running = tmp_path / f".checkpoint.pt.{alive}-0a1b2c3d.tmp"  # another process, still writing
    other = tmp_path / f".other.pt.{dead}-0a1b2c3d.tmp"
    for path in (left, running, other):
        path.write_bytes(b"partial")
    ckpt.save({"epoch": 1})
    assert not left.exists() and running.exists() and other.exists()
    assert torch.load(ckpt.path, weights_only=True)["epoch"] == 1
    assert remove_stale_temporaries(tmp_path, "*") == [other]


def test_the_feature_cache_cleans_its_folders_once(tmp_path):
    from skfg._cache import FeatureCache

    cache = FeatureCache(max_bytes=2**20)
    folder = tmp_path / ("c" * 20) / "ab"
    folder.mkdir(parents=True)
    left = folder / f".abcd.npy.{_dead_pid()}-00000000.tmp"
    left.write_bytes(b"x")
    cache.put("c" * 20, ["abcd", "abce"], [np.ones(3), np.zeros(3)], directory=tmp_path)
    assert not left.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["abcd.npy", "abce.npy"]


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*nowhere to write m.skops into"):
        with atomic_path(tmp_path / "nowhere" / "m.skops"):
            pass
