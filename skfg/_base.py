"""What every skfg estimator shares: device choice, pickling, all-or-nothing ``fit``,
the held-out split, and the checks of images and labels.

Pickles store torch state as bytes (``torch.save`` of the state dicts), never live
modules, and load them back with ``weights_only=True``. A model fitted on a GPU loads on a
CPU-only machine, with a warning.
"""

import functools
import io
import warnings

import numpy as np
import torch
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d
from torch import nn

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


def holdout_split(n_samples, n_holdout, y=None, random_state=None):
    """Sorted ``(train, held_out)`` indices with ``n_holdout`` samples held out.

    Stratified by ``y`` when every class has 2 samples and both parts can hold every
    class, else a plain shuffle split; ``held_out`` is ``None`` when ``n_holdout`` leaves
    either part empty.
    """
    n, n_holdout = int(n_samples), int(n_holdout)
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


def encode_labels(y, estimator_name):
    """``(classes, y_encoded)`` of classification targets; at least 2 classes."""
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


def state_to_bytes(module):
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def state_from_bytes(blob, map_location="cpu"):
    return torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)


class TorchStateMixin:
    """Pickle support for estimators whose fitted attributes include ``nn.Module`` objects.

    Subclasses implement ``_make_module(name)``, which rebuilds the (untrained)
    architecture of fitted attribute ``name`` from the estimator's parameters and
    fitted attributes; the saved state is then loaded into it. The device the model
    was on is kept in ``device_``.
    """

    def _make_module(self, name):  # pragma: no cover - each subclass defines it
        raise AttributeError(f"{type(self).__name__} does not know how to rebuild {name!r}")

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns __dict__ itself
        torch_state = {}
        for key in [k for k, v in state.items() if isinstance(v, nn.Module)]:
            torch_state[key] = state_to_bytes(state.pop(key))
        if torch_state:
            state = dict(state, _torch_state=torch_state)
        return state

    def __setstate__(self, state):
        state = dict(state)
        torch_state = state.pop("_torch_state", {})
        super().__setstate__(state)
        if not torch_state:
            return
        device = getattr(self, "device_", "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(
                f"{type(self).__name__} was fitted on {device}, which is not available here; "
                "loading it on the CPU.",
                RuntimeWarning,
                stacklevel=2,
            )
            device = self.device_ = "cpu"
        for key, blob in torch_state.items():
            module = self._make_module(key)
            module.load_state_dict(state_from_bytes(blob, map_location=device))
            setattr(self, key, module.to(device).eval())


def image_input_tags(tags):
    """sklearn tags of an estimator whose X holds images (paths, arrays, PIL images)."""
    tags.input_tags.one_d_array = True  # image paths
    tags.input_tags.two_d_array = False
    tags.input_tags.three_d_array = True
    tags.input_tags.string = True
    if tags.transformer_tags is not None:
        tags.transformer_tags.preserves_dtype = []
    return tags
