"""How skfg talks to its user while it works: warnings that point at the user's call,
and progress bars that warnings and log lines are written above (never glued onto).

``verbose`` follows scikit-learn's conventions (``0``/``False``: silent; ``1``/``True``:
a bar at once) plus ``"auto"``, the estimators' default: a bar only in a terminal or a
Jupyter notebook, and only once the work has run :data:`AUTO_DELAY` seconds, so short
calls (one image, a small fit) print nothing.
"""

import contextlib
import inspect
import logging
import os
import sys
import warnings

AUTO_DELAY = 3.0  # seconds of work before an automatic ("auto") progress bar appears



def _internal_folders():
    """skfg's folder and those of the meta-estimators that call it (scikit-learn's
    Pipeline and GridSearchCV, joblib): frames there are never the user's call."""
    modules = (sys.modules.get(name) for name in (__package__, "sklearn", "joblib"))
    return tuple(os.path.dirname(m.__file__) + os.sep for m in modules if getattr(m, "__file__", None))


def warn(message, category=UserWarning):
    """``warnings.warn`` at the first caller outside skfg (and scikit-learn's or joblib's
    meta-estimators calling it): the warning names the user's file and line, not skfg's."""
    internal = _internal_folders() + ("<frozen ",)
    frame, level = inspect.currentframe().f_back, 2
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def _interactive():
    """Whether a person is watching: stderr is a terminal, or a Jupyter kernel runs us."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stderr
        pass
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def bar_delay(verbose):
    """Seconds before a progress bar appears for ``verbose``; None for no bar."""
    if isinstance(verbose, str):
        if verbose != "auto":
            raise ValueError(f"verbose={verbose!r}: use 'auto', True/False or an int.")
        return AUTO_DELAY if _interactive() else None
    return 0.0 if verbose else None


class _NoBar:
    """What :func:`progress_bar` gives when no bar is shown."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass


@contextlib.contextmanager
def progress_bar(verbose, total, desc, unit, initial=0):
    """A tqdm bar for ``verbose`` (:func:`bar_delay`), closed on leaving, even on an error.

    While it is open, warnings and the log lines of the root and ``skfg`` loggers are
    written above it (``tqdm.external_write_mode``, ``logging_redirect_tqdm``), so neither
    is glued onto the bar; the bar is closed (ending its line) before an error leaves.

    Yields
    ------
    bar : tqdm or a stand-in with ``update`` and ``set_postfix``
    """
    delay = bar_delay(verbose)
    if delay is None:
        yield _NoBar()
        return
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    show = warnings.showwarning

    def show_above(*args, **kwargs):
        with tqdm.external_write_mode(file=sys.stderr):
            show(*args, **kwargs)

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, delay=delay, dynamic_ncols=True)
    warnings.showwarning = show_above
    try:
        with logging_redirect_tqdm(loggers=[logging.root, logging.getLogger("skfg")], tqdm_class=tqdm):
            yield bar
    finally:
        warnings.showwarning = show
        bar.close()
