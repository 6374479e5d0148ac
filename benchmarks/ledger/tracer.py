"""Which Python code a benchmark process runs: a C-level profile hook, paused while timing.

:class:`Tracer` records the code objects a process executes with CPython's own profiler
(``cProfile.Profile(builtins=False)``: its hook is C code, so a call costs the timed code
far less than a Python ``sys.settrace`` hook; calls into C functions are not recorded).
One profiler runs in the thread that starts the tracer and one in each thread started
after (``threading.setprofile`` hands the new thread its own); :meth:`Tracer.codes` reads
the code objects they saw.

What the hook costs is measured by ``benchmarks/tracer_overhead.py``. A span that can be
repeated is timed with the hook paused (:meth:`Tracer.paused`, ``_common.alternating_ms``,
``_common.untraced``) after it ran once traced, so its code is recorded and its time is
not touched; a span that runs once (a whole fit) runs traced, at the cost that file shows.
Threads started before a pause (a thread pool kept between calls) keep recording during it.

The tracer starts when a measuring script in ``benchmarks/`` imports it (through
``_common``); the tests and the ledger's own commands import it without starting it.
"""

import cProfile
import multiprocessing
import sys
import threading
from contextlib import contextmanager
from pathlib import Path


class Tracer:
    """Records the Python code objects run in this process (and in threads started after
    :meth:`start`) by cProfile's C hook, without timing anything of its own."""

    def __init__(self):
        self._profiles = []  # every profiler started, one per thread; each keeps what it saw
        self._main = None  # the profiler of the thread that started the tracer
        self._added = set()  # (file, qualified name) of code run by an earlier process (ledger.parts)
        self.active = False

    def _new_thread(self, frame, event, arg):
        """``threading.setprofile``'s hook: the first event of a new thread starts its own
        profiler, which replaces this hook in that thread."""
        profile = cProfile.Profile(builtins=False)
        self._profiles.append(profile)
        profile.enable()

    def start(self):
        if self._main is None:
            self._main = cProfile.Profile(builtins=False)
            self._profiles.append(self._main)
        self._main.enable()
        threading.setprofile(self._new_thread)
        self.active = True

    def stop(self):
        threading.setprofile(None)
        if self._main is not None:
            self._main.disable()
        self.active = False

    @contextmanager
    def paused(self):
        """Switch the hook off in this thread and for the threads started meanwhile, around
        timed code (whose code has run traced before)."""
        was = self.active
        if was:
            self.stop()
        try:
            yield
        finally:
            if was:
                self.start()

    def add(self, codes):
        """Count ``(file, qualified name)`` pairs as run (code an earlier process ran for
        this result, :class:`ledger.parts.Parts`)."""
        self._added.update((str(f), str(q)) for f, q in codes)

    def codes(self):
        """``{(file, qualified name)}`` of every Python code object run while recording."""
        seen = set(self._added)
        for profile in list(self._profiles):
            seen.update((e.code.co_filename, e.code.co_qualname) for e in profile.getstats()
                        if not isinstance(e.code, str))
        return seen

    def calls(self):
        """Python calls recorded so far, over every thread (what the hook has cost is about
        this times its cost per call, ``benchmarks/tracer_overhead.py``)."""
        return sum(e.callcount for profile in list(self._profiles) for e in profile.getstats())

    def executed(self, files):
        """``{file: set of co_qualname}`` of the recorded code objects from ``files``."""
        files = {str(Path(f).resolve()): f for f in files}
        out = {f: set() for f in files.values()}
        for filename, qualname in self.codes():
            f = files.get(filename) or files.get(str(Path(filename).resolve()))
            if f is not None:
                out[f].add(qualname)
        return out


def is_measuring_script(argv0, benchmarks):
    """Whether ``argv0`` (``sys.argv[0]``) is a script directly in ``benchmarks/`` (not the
    ledger's own commands)."""
    path = Path(argv0).resolve() if argv0 else None
    return path is not None and path.suffix == ".py" and path.parent == Path(benchmarks).resolve()


# The record of a benchmark run: on for the scripts in benchmarks/, off in the tests and in
# the processes a script starts (a Dask worker re-imports the script with its argv, but what
# it runs never reaches the stamp, so recording there would only slow it).
TRACER = Tracer()
if (sys.argv and is_measuring_script(sys.argv[0], Path(__file__).resolve().parents[1])
        and multiprocessing.parent_process() is None):
    TRACER.start()
