"""The torch modules of skfg's networks: :class:`PooledTrunk` (a CNN trunk and the pooling
of its layers: the one place the "trunk -> pooled features" forward is written) and
:class:`FeatureNet` (a head over it, with the standardisation of the pooled features)."""

import torch
from torch import nn

from .backbones import build_backbone
from .pooling import WeightedKMaxPool, pool_stage_outputs

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def trunk_settings(backbone, layers, pooling, k, normalize, packaged_weights):
    """What rebuilds a fitted trunk's architecture and pooling (plain data, saved with a model).

    ``packaged_weights``: whether the trunk started from the backbone's packaged ImageNet
    weights (its unchanged tensors are then saved by reference)."""
    return {"backbone": str(backbone), "layers": list(layers), "pooling": str(pooling), "k": int(k),
            "normalize": bool(normalize), "packaged_weights": bool(packaged_weights)}


def build_trunk(settings):
    """An untrained (randomly initialised) backbone of :func:`trunk_settings`' ``backbone``,
    channels-last, to load a saved state into."""
    return build_backbone(settings["backbone"], weights=None).to(memory_format=torch.channels_last)


class PooledTrunk(nn.Module):
    """``pool(trunk(x))``: the pooled (not standardised) features of ``layers`` of a CNN.

    Without a trunk ``x`` is already a feature vector and passes through.

    Parameters
    ----------
    trunk : StagedNetwork, optional
        The CNN. Stages in ``frozen`` run without gradients and in eval mode.
    layers, pooling, k, normalize : as in :class:`skfg.CNNFeatureExtractor`.
    frozen : list of str
        Stage names that are not trained.
    freeze_batchnorm : bool
        Keep every BatchNorm layer of the trunk in eval mode (its running statistics)
        also while training; their weights still train in stages that are not frozen.

    With a trunk and ``pooling="kmax_weighted"``, each layer has its own
    :class:`~skfg.pooling.WeightedKMaxPool` (ELoPE eq. 4) in ``pools``.
    """

    def __init__(self, trunk=None, layers=(), pooling="gap", k=4, normalize=True, frozen=(), freeze_batchnorm=False):
        super().__init__()
        self.freeze_batchnorm = freeze_batchnorm
        self.trunk = trunk
        self.layers = list(layers)
        self.pooling, self.k, self.normalize = pooling, k, normalize
        self.frozen = list(frozen)
        self.pools = None
        if trunk is not None and pooling == "kmax_weighted":
            self.pools = nn.ModuleDict({name: WeightedKMaxPool(k) for name in self.layers})
        if trunk is not None:
            names = trunk.stage_names
            self.stages = names[: max(names.index(n) for n in self.layers) + 1]
            for name in self.frozen:
                trunk.stages[name].requires_grad_(False)

    @property
    def first_trainable(self):
        """The first stage that trains (None without a trunk or when all are frozen)."""
        if self.trunk is None:
            return None
        return next((n for n in self.stages if n not in self.frozen), None)

    def train(self, mode=True):
        super().train(mode)
        if self.trunk is not None:
            for name in self.frozen:  # frozen BatchNorm keeps its running statistics
                self.trunk.stages[name].eval()
            if mode and getattr(self, "freeze_batchnorm", False):  # (absent in models saved before 0.3)
                for m in self.trunk.modules():
                    if isinstance(m, _BATCHNORMS):
                        m.eval()
        return self

    def pool_parameters(self):
        """The learned pooling weights (empty unless ``pooling="kmax_weighted"``)."""
        return [] if self.pools is None else list(self.pools.parameters())

    def trunk_parameters(self):
        """Trainable parameters of the stages in use (not, e.g., an unused ImageNet classifier)."""
        if self.trunk is None:
            return []
        return [p for name in self.stages for p in self.trunk.stages[name].parameters() if p.requires_grad]

    def prefix(self, x):
        """Output of the frozen stages before :attr:`first_trainable` (its input)."""
        for name in self.stages[: self.stages.index(self.first_trainable)]:
            x = self.trunk.stages[name](x)
        return x

    def stage(self, name, x):
        """Stage ``name`` of the trunk on ``x`` (the previous stage's output), without
        gradients when the stage is frozen: one step of a stage-by-stage forward (early exits)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and name not in self.frozen):
            return self.trunk.stages[name](x)

    def pool(self, maps):
        """Pooled features of ``maps`` (``{layer: feature map}``, layers of :attr:`layers`),
        concatenated in the order of :attr:`layers`."""
        names = [n for n in self.layers if n in maps]
        return pool_stage_outputs(maps, names, self.pooling, self.k, self.normalize, self.pools)

    def pooled(self, x, start=None):
        """Pooled (not yet standardised) features; ``start`` names the stage ``x`` feeds."""
        if self.trunk is None:
            return x
        maps = {}
        begin = 0 if start is None else self.stages.index(start)
        for name in self.stages[begin:]:
            x = self.stage(name, x)
            if name in self.layers:
                maps[name] = x
        return self.pool(maps)

    def forward(self, x, start=None):
        return self.pooled(x, start)


class FeatureNet(PooledTrunk):
    """``head(standardise(pool(trunk(x))))``: a head over a :class:`PooledTrunk`; without a
    trunk ``x`` is already a feature vector.

    Parameters
    ----------
    head : nn.Module
        Features -> outputs (logits, embeddings, ...).
    n_features : int
        Width of the pooled features (sizes the standardisation buffers).
    trunk, layers, pooling, k, normalize, frozen, freeze_batchnorm
        As :class:`PooledTrunk`.
    """

    def __init__(self, head, n_features, trunk=None, layers=(), pooling="gap", k=4, normalize=True, frozen=(),
                 freeze_batchnorm=False):
        super().__init__(trunk, layers, pooling, k, normalize, frozen, freeze_batchnorm)
        self.head = head
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    def standardise(self, pooled):
        """The head's input of pooled features: ``(pooled - mean) / scale``."""
        return (pooled - self.mean) / self.scale

    def features(self, x, start=None):
        return self.standardise(self.pooled(x, start))

    def forward(self, x, start=None):
        return self.head(self.features(x, start))
