"""Training keeps the memory torch frees (skfg._memory)."""

import platform
import resource
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


def test_nested_and_concurrent_trainings_set_malloc_once_and_restore_its_defaults_after_the_last(recorder):
    keep = [("mallopt", -1, 2**31 - 1), ("mallopt", -2, 256 * 2**20), ("mallopt", -4, 0)]
    restore = [("mallopt", -1, 128 * 1024), ("mallopt", -2, 128 * 1024), ("mallopt", -4, 65536), ("malloc_trim", 0)]
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
    assert _faults_of_a_second_allocation(n) > pages // 2  # the defaults are back (and the memory returned)
