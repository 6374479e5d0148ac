"""The torch module of skfg's classifiers: an optional CNN trunk, pooling, scaling, a head."""

import torch
from torch import nn

from .pooling import WeightedKMaxPool, pool_stage_outputs


class FeatureNet(nn.Module):
    """``head(standardise(pool(trunk(x))))``; without a trunk ``x`` is already a feature vector.

    Parameters
    ----------
    head : nn.Module
        Features -> outputs (logits, embeddings, ...).
    n_features : int
        Width of the pooled features (sizes the standardisation buffers).
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

    def __init__(self, head, n_features, trunk=None, layers=(), pooling="gap", k=4, normalize=True, frozen=(),
                 freeze_batchnorm=False):
        super().__init__()
        self.freeze_batchnorm = freeze_batchnorm
        self.head = head
        self.trunk = trunk
        self.layers = list(layers)
        self.pooling, self.k, self.normalize = pooling, k, normalize
        self.frozen = list(frozen)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
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
                    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
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

    def pooled(self, x, start=None):
        """Pooled (not yet standardised) features; ``start`` names the stage ``x`` feeds."""
        if self.trunk is None:
            return x
        maps = {}
        begin = 0 if start is None else self.stages.index(start)
        for name in self.stages[begin:]:
            with torch.set_grad_enabled(torch.is_grad_enabled() and name not in self.frozen):
                x = self.trunk.stages[name](x)
            if name in self.layers:
                maps[name] = x
        return pool_stage_outputs(maps, self.layers, self.pooling, self.k, self.normalize, self.pools)

    def features(self, x, start=None):
        return (self.pooled(x, start) - self.mean) / self.scale

    def forward(self, x, start=None):
        return self.head(self.features(x, start))
