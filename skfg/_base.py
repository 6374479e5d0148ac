"""What every skfg estimator shares: device choice, pickling, all-or-nothing ``fit``,
the held-out split, and the checks of images and labels.

Pickles store torch state as bytes (``torch.save`` of the state dicts), never live
modules, and load them back with ``weights_only=True``; tensors still equal to a backbone's
packaged ImageNet weights are stored by reference (:mod:`skfg.backbones._reference`). A
model fitted on a GPU loads on a CPU-only machine, with a warning.
"""

import functools
import io
import os

import numpy as np
import torch
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils.multiclass import check_classification_targets
from PIL import Image
from sklearn.utils.validation import _check_sample_weight, column_or_1d
from torch import nn

from ._version import __version__
from ._messages import warn
from .exceptions import SkfgVersionWarning  # noqa: F401  (importable from here too)
from .backbones import restore_state, split_state
from .images import ImageSource


def atomic_fit(method):
    """Decorate a method that changes the estimator (``fit``, ``partial_fit``) so that when
    it raises (``KeyboardInterrupt`` included) the estimator's attributes are restored as
    they were before the call: a failed fit never leaves a half-fitted model."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        before = dict(self.__dict__)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    return wrapper


def holdout_split(n, n_holdout, y=None, random_state=None):
    """Sorted ``(train, held_out)`` indices of ``n`` samples with ``n_holdout`` held out.

    Stratified by ``y`` when every class has 2 samples and both parts can hold every
    class, else a plain shuffle split; ``held_out`` is ``None`` when ``n_holdout`` leaves
    either part empty.
    """
    if n_holdout < 1 or n - n_holdout < 1:
        return np.arange(n), None
    splitter = ShuffleSplit(1, test_size=n_holdout, random_state=random_state)
    if y is not None:
        counts = np.unique(y, return_counts=True)[1]
        if counts.min() >= 2 and len(counts) <= n_holdout <= n - len(counts):
            splitter = StratifiedShuffleSplit(1, test_size=n_holdout, random_state=random_state)
    train, held_out = next(splitter.split(np.zeros(n), y))
    return np.sort(train), np.sort(held_out)


def check_images_and_labels(X, y):
    """``(ImageSource(X), y as 1-D)``; a clear error when their lengths differ."""
    source = ImageSource(X)
    y = column_or_1d(y, warn=True)
    if len(y) != len(source):
        raise ValueError(f"X has {len(source)} images but y has {len(y)} labels.")
    return source, y


def check_features(X, estimator_name):
    """Refuse, with the fix, images given to an estimator that expects features."""
    first = X[0] if isinstance(X, (list, tuple)) and len(X) else None
    arr = X if isinstance(X, np.ndarray) else None
    paths = isinstance(first, (str, os.PathLike, Image.Image)) or (
        arr is not None and (arr.ndim >= 3 or (arr.ndim == 1 and arr.dtype.kind in "USO")))
    if paths:
        raise ValueError(
            f"{estimator_name} got images (paths, pixel arrays or PIL images) but has no extractor: "
            f"pass extractor=CNNFeatureExtractor(...) to train on images, or put a CNNFeatureExtractor "
            "before it in a Pipeline to train on features."
        )


def check_sample_weight(sample_weight, n, dtype=np.float32):
    """Sample weights of length ``n`` (ones for None): non-negative, one positive."""
    sample_weight = _check_sample_weight(sample_weight, np.empty((n, 1)), dtype=dtype)
    if np.any(sample_weight < 0) or not np.any(sample_weight > 0):
        raise ValueError("sample_weight must be non-negative with at least one positive value.")
    return sample_weight


def _label_kind(value):
    """``"str"`` for text (``str``, ``numpy.str_``, bytes), ``"int"`` / ``"float"`` / ``"bool"``
    for numbers of Python or NumPy, else the type's name."""
    if isinstance(value, (str, bytes)):
        return "str"
    for kind, types in (("bool", (bool, np.bool_)), ("int", (int, np.integer)), ("float", (float, np.floating))):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def encode_labels(y, estimator_name):
    """``(classes, y_encoded)`` of classification targets; at least 2 classes."""
    values = np.asarray(y)
    kinds = {_label_kind(v) for v in values.ravel()} if values.dtype == object else set()
    if "str" in kinds and len(kinds) > 1:
        raise ValueError(f"y mixes labels of different types ({', '.join(sorted(kinds))}); use one type "
                         "(e.g. all strings).")
    check_classification_targets(y)
    classes, y_enc = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{estimator_name} needs samples of at least 2 classes; got one class: {classes[0]!r}.")
    return classes, y_enc


def resolve_device(device):
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; anything else is checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here.")
    return str(dev)


def state_to_bytes(state):
    """``torch.save`` bytes of a state dict."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(blob, map_location="cpu"):
    return torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)


class VersionedStateMixin:
    """Saved models (pickle, joblib, skops) carry the skfg version; loading one saved by
    another version warns (:class:`SkfgVersionWarning`), as scikit-learn does for its own."""

    def __getstate__(self):
        return dict(super().__getstate__(), _skfg_version=__version__)

    def __setstate__(self, state):
        state = dict(state)
        version = state.pop("_skfg_version", None)
        if version != __version__:
            warn(f"This {type(self).__name__} was saved with skfg {version or '< 0.2 (no version stamp)'} and is "
                 f"loaded by skfg {__version__}; it may predict wrongly or fail. Refit it, or use the version "
                 "it was saved with.", SkfgVersionWarning)
        super().__setstate__(state)


class TorchStateMixin(VersionedStateMixin):
    """Pickle support for estimators whose fitted attributes include ``nn.Module`` objects.

    Subclasses implement ``_make_module(name)``, which rebuilds the (untrained)
    architecture of fitted attribute ``name`` from the estimator's parameters and
    fitted attributes; the saved state is then loaded into it. The device the model
    was on is kept in ``device_``.
    """

    def _make_module(self, name):  # pragma: no cover - each subclass defines it
        raise AttributeError(f"{type(self).__name__} does not know how to rebuild {name!r}")

    def _pretrained_sources(self, name):
        """``[(prefix, backbone)]``: the parts of fitted module ``name`` that started from a
        backbone's packaged ImageNet weights; their unchanged tensors are saved by
        reference (:mod:`skfg.backbones._reference`). None by default."""
        return []

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns __dict__ itself
        torch_state, refs = {}, {}
        for key in [k for k, v in state.items() if isinstance(v, nn.Module)]:
            kept, refs[key] = split_state(state.pop(key).state_dict(), self._pretrained_sources(key))
            torch_state[key] = state_to_bytes(kept)
        if torch_state:
            state = dict(state, _torch_state=torch_state)
        refs = {key: ref for key, ref in refs.items() if ref}
        if refs:
            state["_pretrained_refs"] = refs
        return state

    def __setstate__(self, state):
        state = dict(state)
        torch_state = state.pop("_torch_state", {})
        refs = state.pop("_pretrained_refs", {})
        super().__setstate__(state)
        if not torch_state:
            return
        device = getattr(self, "device_", "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            warn(f"{type(self).__name__} was fitted on {device}, which is not available here; loading it on the CPU.",
                 RuntimeWarning)
            device = self.device_ = "cpu"
        for key, blob in torch_state.items():
            module = self._make_module(key)
            module_state = state_from_bytes(blob, map_location=device)
            if key in refs:
                module_state = restore_state(module_state, refs[key], type(self).__name__)
            module.load_state_dict(module_state)
            setattr(self, key, module.to(device).eval())


class KnownLabelsScoreMixin:
    """``score`` as scikit-learn's ``ClassifierMixin`` (mean accuracy), with a warning
    naming the labels of ``y`` the model was not trained on: they count as wrong, as
    ``skfg evaluate`` says (it scores them only with ``--known-classes-only`` left out)."""

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of ``predict(X)`` against ``y``.

        Labels of ``y`` that are not in ``classes_`` count as wrong, with a warning
        naming them.

        Parameters
        ----------
        X : array-like
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        score : float
        """
        known = set(np.asarray(getattr(self, "classes_", [])).tolist())
        unknown = sorted({v for v in np.asarray(y).tolist() if v not in known}, key=str) if known else []
        if unknown:
            names = ", ".join(map(str, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            warn(f"y holds labels this {type(self).__name__} was not trained on ({names}): their samples count as "
                 "wrong.")
        return super().score(X, y, sample_weight=sample_weight)


def prefixed_feature_names(estimator, n_features_out):
    """Column names of a transformer whose outputs are not its inputs: scikit-learn's
    convention, the lower-cased class name and the column index (``"impostorclassifier0"``)."""
    prefix = type(estimator).__name__.lower()
    return np.asarray([f"{prefix}{i}" for i in range(n_features_out)], dtype=object)


class EmbeddingNamesMixin:
    """``get_feature_names_out`` of a classifier whose ``transform`` gives its learned
    embedding; the class defines ``_embedding_dim()`` (raising ``NotFittedError`` before fit)."""

    def get_feature_names_out(self, input_features=None):
        """Names of the :meth:`transform` columns (the embedding dimensions): the lower-cased
        class name and the index, e.g. ``"impostorclassifier0"``, ``"impostorclassifier1"``, ...

        With them, ``set_output(transform="pandas")`` gives :meth:`transform` a DataFrame.

        Parameters
        ----------
        input_features : None
            Unused: the embedding's columns are not the input's.

        Returns
        -------
        feature_names_out : ndarray of str objects, shape (embedding dimension,)
        """
        return prefixed_feature_names(self, self._embedding_dim())


def image_input_tags(tags):
    """sklearn tags of an estimator whose X holds images (paths, arrays, PIL images)."""
    tags.input_tags.one_d_array = True  # image paths
    tags.input_tags.two_d_array = False
    tags.input_tags.three_d_array = True
    tags.input_tags.string = True
    if tags.transformer_tags is not None:
        tags.transformer_tags.preserves_dtype = []
    return tags
