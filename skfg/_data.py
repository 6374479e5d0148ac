"""What the torch classifiers train on: data adapters over features (:class:`FeatureData`,
:class:`PooledData`) or images (:class:`ImageData`), and the per-fit context handed to the
estimators' hooks. An adapter gives a :class:`~skfg._network.FeatureNet` mini-batches of
``(x, target, weight, row)`` (``loader``), its outputs for a mini-batch (``forward``) or
for rows (``outputs``), and the pooled features of rows (``pooled``).
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from ._engine import engine_batches, serving
from ._training import eval_mode
from .images import IMAGE_CACHE_BYTES, ImageCache, cache_transform

logger = logging.getLogger("skfg")
PREFIX_CACHE_BYTES = int(os.environ.get("SKFG_PREFIX_CACHE_MB", "2048")) * 2**20  # the frozen-prefix cache's bound


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


def predict_images(net, source, idx, preprocessing, device):
    """Outputs of ``net`` for images ``idx`` with ``preprocessing`` (a
    :class:`~skfg.images.Preprocessing`, decoding in the calling thread as before)."""
    with serving(net):
        return torch.cat([net(x) for _, x in engine_batches(net, preprocessing, source, device, idx, n_jobs=0)])


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


class _AugmentedImages(torch.utils.data.Dataset):
    """``(augment(cache[i]), target, weight, i)`` for the rows of a training fit."""

    def __init__(self, cache, y, w, transform):
        self.cache, self.y, self.w, self.transform = cache, y, w, transform

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        return self.transform(self.cache[i]), int(self.y[i]), self.w[i], i


class ImageData:
    """Training images: decoded once (:class:`~skfg.images.ImageCache`), augmented as
    tensors, with the frozen-prefix cache.

    Each image is decoded once per fit and kept as a uint8 tensor (at most
    ``SKFG_IMAGE_CACHE_MB`` in all, default 2048 MB), as prediction sees it: with
    ``resize="squash"`` the random crops are taken from that image; with ``"crop"`` from
    the whole image with its shorter side at ``image_size`` (a second decode). ``augment`` (an
    :class:`~skfg.images.Augmentation` or None) runs on those tensors.

    When the first stages are frozen, their output for an image does not change during
    training. Without augmentation it is computed once per image and reused every epoch
    (and for validation); training then starts at the first trainable stage. The cache
    holds one feature map per image in memory, at most ``SKFG_PREFIX_CACHE_MB`` (default
    2048 MB); when the training images' maps would not fit, the frozen stages are
    recomputed every epoch instead (logged once).
    """

    def __init__(self, source, net, preprocessing, device, prefix_cache, augment=None):
        self.source, self.net, self.device, self.prep = source, net, device, preprocessing
        self.augment = augment
        eval_tf = preprocessing.transform()
        if preprocessing.resize == "squash":  # the crops are taken from the image as prediction sees it
            self.eval_images = self.train_images = ImageCache(source, eval_tf)
        else:  # two caches (the whole image for the crops, the centre crop for validation), half the bound each
            self.train_images = ImageCache(source, cache_transform(preprocessing.image_size, "crop"),
                                           IMAGE_CACHE_BYTES // 2)
            self.eval_images = ImageCache(source, eval_tf, IMAGE_CACHE_BYTES // 2)
        start = net.first_trainable
        # the cache is possible when some stage is frozen and no feature layer is frozen
        self.cut = start not in (None, net.stages[0]) and not set(net.layers) & set(net.frozen)
        self.start = start if self.cut else None
        self.prefix_cache = prefix_cache and self.cut
        self._prefix, self._bytes = {}, 0

    def _inputs(self, idx, batch_size=16):
        """``(rows, input batch)`` of images ``idx`` as prediction sees them (decoded once)."""
        for c in chunks(np.asarray(idx), batch_size):
            yield c, self.prep.to_input(torch.stack([self.eval_images[i] for i in c]), self.device)

    def prefix(self, net, idx):
        """Frozen-prefix outputs of images ``idx`` (kept for reuse while within the memory bound)."""
        found = {i: self._prefix[i] for i in idx if i in self._prefix}
        missing = [i for i in idx if i not in found]
        if missing:
            with eval_mode(net):
                for chunk, x in self._inputs(missing):
                    for i, h in zip(chunk.tolist(), net.prefix(x).cpu()):
                        found[i] = h
                        if self._bytes + h.nbytes <= PREFIX_CACHE_BYTES:
                            self._prefix[i], self._bytes = h, self._bytes + h.nbytes
        return torch.stack([found[i] for i in idx])

    def loader(self, idx, y, w, batch_size, generator, augment):
        if self.prefix_cache and len(idx):
            n = len(np.unique(idx))
            need = self.prefix(self.net, idx[:1])[0].nbytes * n
            if need > PREFIX_CACHE_BYTES:
                self.prefix_cache = False
                logger.warning("skfg: the frozen stages' outputs of the %d training images need %.1f MB, over "
                               "SKFG_PREFIX_CACHE_MB=%g; recomputing them every epoch instead", n, need / 2**20,
                               PREFIX_CACHE_BYTES / 2**20)
        if self.prefix_cache:
            ds = TensorDataset(self.prefix(self.net, idx), torch.as_tensor(y[idx]), torch.as_tensor(w[idx]),
                               torch.as_tensor(idx))
            return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)
        aug = self.augment if augment else None
        if aug is None:
            images, erase = self.eval_images, None
            ds = _AugmentedImages(images, y, w, lambda img: img)
        else:
            ds = _AugmentedImages(self.train_images, y, w, aug.image_transform(self.prep.image_size))
            erase = aug.batch_transform()

        def collate(items):  # uint8 images -> the network's input, batched
            x, *rest = default_collate(items)
            x = self.prep.to_input(x, self.device)
            return (x if erase is None else erase(x).contiguous(memory_format=torch.channels_last)), *rest

        ds = torch.utils.data.Subset(ds, idx)
        # a last batch of one image cannot train BatchNorm (one value per channel at 1x1)
        drop_last = len(idx) > 2 * batch_size or (len(idx) > 1 and len(idx) % batch_size == 1)
        return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate,
                          drop_last=drop_last)

    def forward(self, net, x):
        return net(x, self.start) if self.prefix_cache else net(x)

    def features(self, net, x):
        """The head's input (standardised pooled features) of a training batch."""
        return net.features(x, self.start) if self.prefix_cache else net.features(x)

    def outputs(self, net, idx):
        if self.cut:
            return torch.cat([net(self.prefix(net, c).to(self.device), self.start) for c in chunks(idx)])
        return torch.cat([net(x) for _, x in self._inputs(idx, self.prep.batch_size)])

    def pooled(self, net, idx):
        with torch.no_grad():
            if self.cut:
                return torch.cat([net.pooled(self.prefix(net, c).to(self.device), self.start) for c in chunks(idx)])
            return torch.cat([net.pooled(x) for _, x in self._inputs(idx)])
