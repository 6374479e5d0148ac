"""Saving and loading fitted models in a safe format, which never runs code from the file.

:func:`save_model` writes the skops format (a zip of JSON and arrays; torch weights are
stored as state-dict bytes and read back with ``torch.load(weights_only=True)``).
:func:`load_model` builds only the types of skfg and scikit-learn and the plain data
types skops trusts (numpy arrays and dtypes, containers); a file naming any other type is
refused, and the message names it.

Weights still equal to a backbone's packaged ImageNet weights are saved by reference
(the backbone's name and a SHA-256 digest; :mod:`skfg.backbones._reference`) in every format, so a
model with a frozen EfficientNet-Lite0 takes kilobytes, not 19 MB; loading restores them
from the installed package and refuses clearly when they differ. ``save_model(...,
embed_weights=True)`` or :func:`embedded_weights` keeps every weight in the file.

Pickle and joblib files (``joblib.dump``) can run any code they hold when they are
loaded: load them only from sources you trust (``load_model(path, allow_pickle=True)``).
Every saved model, in either format, carries the skfg version; loading one saved by
another version warns (:class:`skfg._base.SkfgVersionWarning`).
"""

import contextlib
import importlib
import os
import zipfile

from .backbones import embedded_weights

TRUSTED_PREFIXES = ("skfg.", "sklearn.")


def _is_trusted(name):
    """A class (never a function) of skfg, or a scikit-learn estimator class."""
    module, _, attr = name.rpartition(".")
    if not module.startswith(TRUSTED_PREFIXES):
        return False
    try:
        obj = getattr(importlib.import_module(module), attr)
    except Exception:
        return False
    if not isinstance(obj, type):
        return False
    from sklearn.base import BaseEstimator

    return obj.__module__.startswith("skfg.") or issubclass(obj, BaseEstimator)


def _skops():
    try:
        import skops.io
    except ImportError as exc:
        raise ImportError("The safe model format needs skops: pip install 'skfg[safe]' (or pip install skops).") from exc
    return skops.io


def save_model(model, path, *, embed_weights=False):
    """Save a fitted model (an estimator or a Pipeline) in the safe format.

    Parameters
    ----------
    model : estimator
    path : str or path-like
        The file to write (``.skops`` by convention).
    embed_weights : bool, default=False
        Store every weight in the file. By default the tensors still equal to a
        backbone's packaged ImageNet weights are stored by reference (the backbone's name
        and a SHA-256 digest) and restored from the installed package on loading, which
        refuses, naming both digests, when the installed weights differ: a frozen
        EfficientNet-Lite0 takes kilobytes instead of 19 MB. Embed them for a machine
        without the weights package.
    """
    sio = _skops()
    with embedded_weights() if embed_weights else contextlib.nullcontext():
        sio.dump(model, os.fspath(path))


def is_safe_format(path):
    """Whether ``path`` starts as skfg's safe format does (a zip archive: ``PK\\x03\\x04``).

    A pickle or joblib file starts with the pickle protocol's bytes instead, even when it
    holds torch state (itself zip archives) further on; a file that starts as a zip but is
    truncated still counts, and :func:`load_model` reports it as damaged.
    """
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def load_model(path, *, trusted=(), allow_pickle=False):
    """Load a model saved by :func:`save_model`, without running code from the file.

    Parameters
    ----------
    path : str or path-like
    trusted : sequence of str, default=()
        Further type names (``"module.Class"``) to build, after you have inspected them:
        by default only skfg's classes and scikit-learn's estimator classes are (never
        a function: a function stored in a model could be called on the attacker's terms).
    allow_pickle : bool, default=False
        Also accept a pickle or joblib file. It can run any code it holds: only for
        files from sources you trust.

    Returns
    -------
    model : estimator

    Raises
    ------
    ValueError
        If the file names a type that is not trusted (the message lists them), is not a
        model file, or is truncated or damaged (the message names the file).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skfg import SoftmaxClassifier, load_model, save_model
    >>> X = np.random.RandomState(0).randn(20, 3)
    >>> clf = SoftmaxClassifier(max_epochs=2, random_state=0).fit(X, X[:, 0] > 0)
    >>> path = os.path.join(tempfile.mkdtemp(), "clf.skops")
    >>> save_model(clf, path)
    >>> bool((load_model(path).predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path}.")
    if is_safe_format(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is a damaged (truncated?) model file of skfg's safe format.")
    if not is_safe_format(path):
        if not allow_pickle:
            raise ValueError(
                f"{path} is not a file of skfg's safe format (save one with skfg.save_model). If it is a "
                "pickle or joblib file from a source you trust, pass allow_pickle=True: loading a pickle "
                "can run any code it holds."
            )
        import joblib

        try:
            return joblib.load(path)
        except Exception as exc:  # truncated, damaged, or not a pickle
            raise ValueError(f"{path} is truncated or damaged ({type(exc).__name__}: {exc}).") from exc
    sio = _skops()
    try:
        types = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ValueError(f"{path} is damaged or not a model file ({type(exc).__name__}: {exc}).") from exc
    trusted = {trusted} if isinstance(trusted, str) else set(trusted)
    refused = sorted(t for t in types if not _is_trusted(t) and t not in trusted)
    if refused:
        raise ValueError(
            f"{path} holds types that skfg does not trust: {', '.join(refused)}. Load only files from "
            "sources you trust; after inspecting these types, pass them as trusted=[...]."
        )
    try:
        return sio.load(path, trusted=types)
    except Exception as exc:
        raise ValueError(f"{path} could not be loaded ({type(exc).__name__}: {exc}).") from exc
