"""Training keeps the memory torch frees (skfg._memory)."""

import platform
import resource
import subprocess
import sys
import threading

import pytest
import torch

from skfg import _memory
from skfg._memory import kept_freed_memory

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's malloc only")


class _Recorder:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def recorder(monkeypatch):
    libc = _Recorder()
    monkeypatch.setattr(_memory, "_libc", libc)
    for name in _memory._USER_SETTINGS + ("SKFG_KEEP_FREED_MEMORY",):
        monkeypatch.delenv(name, raising=False)
    return libc


def test_nested_and_concurrent_trainings_set_malloc_once_and_restore_it_after_the_last(recorder):
    keep = [("mallopt", -1, 2**31 - 1), ("mallopt", -2, 256 * 2**20), ("mallopt", -4, 0)]
    # after: the values glibc's dynamic mmap threshold grows to by itself (64-bit: 32 MiB, trim twice it)
    restore = [("mallopt", -1, 64 * 2**20), ("mallopt", -2, 128 * 1024), ("mallopt", -3, 32 * 2**20),
               ("mallopt", -4, 65536), ("malloc_trim", 0)]
    with kept_freed_memory():
        assert recorder.calls == keep
        with kept_freed_memory():  # a fit inside a fit (a teacher, a cross-validation)
            pass
        started, release = threading.Event(), threading.Event()

        def other_fit():
            with kept_freed_memory():
                started.set()
                release.wait(10)

        thread = threading.Thread(target=other_fit)
        thread.start()
        started.wait(10)
        assert recorder.calls == keep  # nothing restored while one still trains
    assert recorder.calls == keep  # the thread's fit still runs
    release.set()
    thread.join()
    assert recorder.calls == keep + restore
    with pytest.raises(RuntimeError):  # a failed fit restores them too
        with kept_freed_memory():
            raise RuntimeError("diverged")
    assert recorder.calls == 2 * (keep + restore)


@pytest.mark.parametrize("env", [{"SKFG_KEEP_FREED_MEMORY": "0"}, {"MALLOC_MMAP_MAX_": "1"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}])
def test_the_users_malloc_settings_or_an_opt_out_leave_malloc_alone(recorder, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with kept_freed_memory():
        pass
    assert recorder.calls == []


def _faults_of_a_second_allocation(n_floats):
    """Minor page faults of filling a tensor of about ``n_floats`` after one of ``n_floats`` was
    freed (a little smaller: an aligned allocation asks malloc for a few bytes more than its size)."""
    torch.ones(n_floats).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(n_floats - 1024).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_while_training_a_freed_tensor_s_pages_are_reused_not_faulted_in_again(monkeypatch):
    for name in _memory._USER_SETTINGS + ("SKFG_KEEP_FREED_MEMORY",):
        monkeypatch.delenv(name, raising=False)
    n = 16 * 2**20  # 64 MiB of float32: above glibc's largest mmap threshold (32 MiB)
    pages = 4 * n // resource.getpagesize()
    assert _faults_of_a_second_allocation(n) > pages // 2  # mmap'd afresh: every page faults in again
    with kept_freed_memory():
        assert _faults_of_a_second_allocation(n) < pages // 20  # the freed block, its pages mapped
    assert _faults_of_a_second_allocation(n) > pages // 2  # mmap'd again (and the memory returned)


_AFTER_A_FIT = """
import resource, sys
import numpy as np
from skfg._memory import kept_freed_memory
if sys.argv[1] == "fit":
    with kept_freed_memory():
        pass
for _ in range(2):  # 16 MiB, freed (without a fit, the first one raises glibc's dynamic threshold)
    np.ones(2 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(2 * 2**20 - 1024).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc
def test_after_training_a_freed_tensor_below_32_mib_is_reused_as_in_a_process_that_never_trained(monkeypatch):
    # mallopt freezes glibc's dynamic mmap threshold for good; frozen at its starting 128 KiB, every
    # activation of a prediction after the fit would be mmap'd and fault in again (2x slower at batch 1)
    for name in _memory._USER_SETTINGS + ("SKFG_KEEP_FREED_MEMORY",):
        monkeypatch.delenv(name, raising=False)
    pages = 16 * 2**20 // resource.getpagesize()
    for mode in ("fit", "no fit"):  # fresh processes: the threshold as glibc starts it
        out = subprocess.run([sys.executable, "-c", _AFTER_A_FIT, mode], capture_output=True, text=True, check=True)
        assert int(out.stdout) < pages // 20, mode
