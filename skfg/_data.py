"""What the torch classifiers train on: data adapters over features (:class:`FeatureData`,
:class:`PooledData`) or images (:class:`ImageData`), and the per-fit context handed to the
estimators' hooks. An adapter gives a :class:`~skfg._network.FeatureNet` mini-batches of
``(x, target, weight, row)`` (``loader``), its outputs for a mini-batch (``forward``) or
for rows (``outputs``), and the pooled features of rows (``pooled``).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .images import ImageDataset, eval_transform, iter_inputs, to_input, train_transform

__all__ = ["FeatureData", "FitContext", "ImageData", "PooledData", "predict_images"]


@dataclass
class FitContext:
    """One training run, as the estimator's hooks see it (rows index every sample)."""

    net: torch.nn.Module  # the FeatureNet being trained
    data: object  # FeatureData or ImageData of every sample
    y: np.ndarray  # encoded labels
    train_idx: np.ndarray  # rows trained on
    val_idx: np.ndarray  # rows held out to pick the best epoch, or None
    sample_weight: np.ndarray
    generator: torch.Generator  # seeds shuffling
    device: str
    start_data: object = None  # pooled features before training, if computed anyway (see begin_data)
    aux: torch.nn.Module = None  # what _begin_training returned: a loss's state, trained with net
    memo: dict = field(default_factory=dict)  # per-fit values a hook leaves for a later hook

    @property
    def begin_data(self):
        """What ``_begin_training`` reads: ``start_data`` when given, else ``data``."""
        return self.data if self.start_data is None else self.start_data

    def labels(self, idx=None):
        """Encoded labels of rows ``idx`` (all rows by default) as a tensor on the device."""
        y = self.y if idx is None else self.y[idx]
        return torch.as_tensor(y, device=self.device)


def chunks(idx, size=256):
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def predict_images(net, source, idx, extractor, device):
    """Outputs of ``net`` for images ``idx`` with the extractor's inference preprocessing."""
    mean, std = extractor.input_normalization()
    tf = eval_transform(extractor.image_size, extractor.resize)
    return torch.cat([net(x) for _, x in iter_inputs(source, tf, extractor.batch_size, mean, std, device, idx)])


class FeatureData:
    """Training data that is already a feature matrix."""

    def __init__(self, X, device):
        self.X, self.device = torch.as_tensor(X), device

    def loader(self, idx, y, w, batch_size, generator, augment):
        ds = TensorDataset(self.X[idx], torch.as_tensor(y[idx]), torch.as_tensor(w[idx]), torch.as_tensor(idx))
        return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)

    def forward(self, net, x):
        return net(x)

    def features(self, net, x):
        """The head's input (standardised pooled features) of a training batch."""
        return net.features(x)

    def outputs(self, net, idx):
        return torch.cat([net(self.X[c].to(self.device)) for c in chunks(idx, 4096)])

    def pooled(self, net, idx):
        return self.X[idx].to(self.device)


class PooledData(FeatureData):
    """Every sample's pooled features (rows in sample order), computed once with the CNN
    as it is before training: what ``_begin_training`` reads (initial impostors, class
    means) while the CNN is unchanged, instead of a second pass over the images."""

    def outputs(self, net, idx):
        """``net``'s outputs: its head on the standardised pooled features (as ``net(x)``)."""
        return torch.cat([net.head((self.pooled(net, c) - net.mean) / net.scale) for c in chunks(idx, 4096)])


class _WeightedImageDataset(ImageDataset):
    def __init__(self, X, y, w, transform):
        super().__init__(X, y, transform)
        self.w = w

    def __getitem__(self, i):
        x, t = super().__getitem__(i)
        return x, t, self.w[i], i


class _InputBatches:
    """A DataLoader of uint8 image batches, re-iterable, yielding the network's input."""

    def __init__(self, loader, mean, std, device):
        self.loader, self.mean, self.std, self.device = loader, mean, std, device

    def __iter__(self):
        for x, *rest in self.loader:
            yield (to_input(x, self.mean, self.std, self.device), *rest)


class ImageData:
    """Training images, with the frozen-prefix cache.

    When the first stages are frozen, their output for an image does not change during
    training. Without augmentation it is computed once per image and reused every epoch
    (and for validation); training then starts at the first trainable stage. The cache
    holds one feature map per training image in memory.
    """

    def __init__(self, source, net, extractor, device, prefix_cache):
        self.source, self.net, self.device, self.ext = source, net, device, extractor
        self.mean, self.std = extractor.input_normalization()
        self.eval_tf = eval_transform(extractor.image_size, extractor.resize)
        start = net.first_trainable
        # the cache is possible when some stage is frozen and no feature layer is frozen
        self.cut = start not in (None, net.stages[0]) and not set(net.layers) & set(net.frozen)
        self.start = start if self.cut else None
        self.prefix_cache = prefix_cache and self.cut
        self._prefix = {}

    def _inputs(self, idx):
        return iter_inputs(self.source, self.eval_tf, 16, self.mean, self.std, self.device, idx)

    def prefix(self, net, idx):
        """Frozen-prefix outputs of images ``idx`` (computed once each)."""
        missing = [i for i in idx if i not in self._prefix]
        if missing:
            was_training = net.training
            net.eval()
            with torch.no_grad():
                for chunk, x in self._inputs(missing):
                    self._prefix.update(zip(chunk.tolist(), net.prefix(x).cpu()))
            net.train(was_training)
        return torch.stack([self._prefix[i] for i in idx])

    def loader(self, idx, y, w, batch_size, generator, augment):
        if self.prefix_cache:
            ds = TensorDataset(self.prefix(self.net, idx), torch.as_tensor(y[idx]), torch.as_tensor(w[idx]),
                               torch.as_tensor(idx))
            return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)
        tf = train_transform(self.ext.image_size) if augment else self.eval_tf
        ds = torch.utils.data.Subset(_WeightedImageDataset(self.source, y, w, tf), idx)
        return _InputBatches(DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator),
                             self.mean, self.std, self.device)

    def forward(self, net, x):
        return net(x, self.start) if self.prefix_cache else net(x)

    def features(self, net, x):
        """The head's input (standardised pooled features) of a training batch."""
        return net.features(x, self.start) if self.prefix_cache else net.features(x)

    def outputs(self, net, idx):
        if self.cut:
            return torch.cat([net(self.prefix(net, c).to(self.device), self.start) for c in chunks(idx)])
        return predict_images(net, self.source, idx, self.ext, self.device)

    def pooled(self, net, idx):
        with torch.no_grad():
            if self.cut:
                return torch.cat([net.pooled(self.prefix(net, c).to(self.device), self.start) for c in chunks(idx)])
            return torch.cat([net.pooled(x) for _, x in self._inputs(idx)])
