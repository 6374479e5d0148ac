"""The network wrapper every backbone is turned into: named stages run in order."""

from collections import OrderedDict

import torch
from torch import nn


class StagedNetwork(nn.Module):
    """A CNN split into named stages, plus its ImageNet classifier.

    The stages are the points at which features can be tapped, the cut point for
    ``trainable_blocks`` and the exits of early-exit classifiers.

    Parameters
    ----------
    stages : OrderedDict of str -> nn.Module
        The stages in forward order. Each maps the previous stage's output to a
        ``(n, C, H, W)`` feature map.
    classifier : nn.Module or None
        Maps the last stage's feature map to class logits (pooling included).
    """

    def __init__(self, stages, classifier=None):
        super().__init__()
        self.stages = nn.ModuleDict(OrderedDict(stages))
        self.classifier = classifier

    @property
    def stage_names(self):
        return list(self.stages.keys())

    def forward_stages(self, x, start=None, stop=None):
        """Yield ``(name, output)`` for the stages from ``start`` to ``stop`` inclusive.

        ``x`` is the input of stage ``start`` (the image batch when ``start`` is None).
        """
        names = self.stage_names
        i0 = 0 if start is None else names.index(start)
        i1 = len(names) - 1 if stop is None else names.index(stop)
        for name in names[i0 : i1 + 1]:
            x = self.stages[name](x)
            yield name, x

    def forward_features(self, x, layers):
        """Return ``{name: feature map}`` for ``layers``, stopping after the deepest one."""
        wanted = set(layers)
        last = max(layers, key=self.stage_names.index)
        return {n: out for n, out in self.forward_stages(x, stop=last) if n in wanted}

    def forward(self, x):
        """Class logits (needs a classifier)."""
        if self.classifier is None:
            raise RuntimeError("this network has no classifier head")
        for _, x in self.forward_stages(x):
            pass
        return self.classifier(x)


def count_parameters(module):
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def probe_channels(network, image_size=64):
    """``{stage: (channels, reduction)}`` found by one forward pass on a blank image."""
    was_training = network.training
    network.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    info = {n: (int(out.shape[1]), image_size / out.shape[-1]) for n, out in network.forward_stages(x)}
    network.train(was_training)
    return info
