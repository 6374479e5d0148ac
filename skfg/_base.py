"""What every skfg estimator that holds torch modules shares: device choice and pickling.

Pickles store torch state as bytes (``torch.save`` of the state dicts), never live
modules, and load them back with ``weights_only=True``. A model fitted on a GPU loads on a
CPU-only machine, with a warning.
"""

import io
import warnings

import torch
from torch import nn


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


def image_transformer_tags(tags):
    """sklearn tags of a transformer whose X holds images (paths, arrays, PIL images)."""
    tags.input_tags.one_d_array = True  # image paths
    tags.input_tags.two_d_array = False
    tags.input_tags.three_d_array = True
    tags.input_tags.string = True
    tags.transformer_tags.preserves_dtype = []
    return tags
