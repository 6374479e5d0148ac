"""Turning X (image paths, uint8 arrays or PIL images) into normalised tensors.

This is the only module that decodes images. Every estimator that takes images goes
through :class:`ImageSource` (what X holds) and :class:`Preprocessing` (how an image becomes
the network's input at inference: :func:`eval_transform`, PIL image -> uint8 CHW tensor;
:func:`iter_batches`, uint8 batches decoded ahead; :func:`to_input`, uint8 batch -> normalised
with the backbone's mean/std, channels-last, on the device). Training views come from
:class:`Augmentation` and :func:`train_transform`.
"""

import os
from collections import deque
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.transforms as T

from . import _decode
from ._decode import ImageSource, ResizeGuard, check_pixels, eval_image, to_rgb, uint8_batches
from .exceptions import ImageDecodeError, ImageTooLargeError

# Most pixels an image may have when decoded, and after resizing, checked before either
# allocates: a 667-byte 1 x 150000 PNG passes Pillow's bomb check (it counts input pixels)
# yet becomes ~22 GB when its short side is resized to 224. 2**27 pixels are 384 MiB as
# RGB. Raise it (or set SKFG_MAX_PIXELS) for larger images: decoding reads it from here.
MAX_PIXELS = _decode.MAX_PIXELS

__all__ = [
    "ImageDecodeError",
    "ImageTooLargeError",
    "MAX_PIXELS",
    "ResizeGuard",
    "check_pixels",
    "Augmentation",
    "Preprocessing",
    "ImageCache",
    "ImageDataset",
    "ImageSource",
    "eval_transform",
    "decode_jobs",
    "iter_batches",
    "iter_inputs",
    "normalize_batch",
    "to_input",
    "to_rgb",
    "cache_transform",
    "train_transform",
]


# ---------------------------------------------------------------- transforms
class _EvalResize:
    """:func:`skfg._decode.eval_image` as a transform step (picklable)."""

    def __init__(self, image_size, resize):
        self.image_size, self.resize = int(image_size), resize

    def __call__(self, img):
        return eval_image(img, self.image_size, self.resize)


def eval_transform(image_size, resize="crop"):
    """Inference preprocessing: PIL RGB -> uint8 tensor ``(3, S, S)``.

    Parameters
    ----------
    image_size : int
        Side ``S`` of the square network input.
    resize : {"crop", "squash"}
        ``"crop"`` resizes the shorter side to ``S`` and takes the centre crop;
        ``"squash"`` resizes the whole image to ``S x S`` (keeps all of it, distorts
        the aspect ratio). Both are :func:`skfg._decode.eval_image` (torchvision's
        ``Resize``/``CenterCrop`` on PIL images, bilinear), which a torch-free process
        serving an exported model runs too.
    """
    if resize not in ("crop", "squash"):
        raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}")
    return T.Compose([_EvalResize(image_size, resize), T.PILToTensor()])


def train_transform(image_size, scale=(0.25, 1.0), flip=True):
    """Random resized crop (+ horizontal flip) of a PIL image -> uint8 tensor (used for
    imprinting's averaged views; training uses :class:`Augmentation` on cached tensors)."""
    steps = [T.RandomResizedCrop(image_size, scale=scale)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.PILToTensor()])


def cache_transform(image_size, resize="crop"):
    """What the training-image cache keeps of an image: PIL RGB -> uint8 tensor, resized
    (never enlarged) so the shorter side is ``image_size`` (``resize="crop"``; the whole
    image is kept for the random crops), or squashed to ``image_size x image_size``
    (``resize="squash"``, as :func:`eval_transform` does)."""
    if resize == "squash":
        return eval_transform(image_size, "squash")

    def shrink(img):
        w, h = img.size
        if min(w, h) > image_size:
            img = T.functional.resize(img, image_size)
        return img

    return T.Compose([ResizeGuard(image_size), shrink, T.PILToTensor()])


class Augmentation:
    """Training augmentation for fine-grained images, run on uint8 tensors.

    A random resized crop of ``crop_ratio * image_size`` pixels (training at a lower
    resolution than the test images: Touvron et al., "Fixing the train-test resolution
    discrepancy", 2019), a horizontal flip, TrivialAugmentWide (Muller & Hutter, 2021)
    and random erasing (Zhong et al., 2020). Each step can be turned on or off; the
    defaults were chosen on the val split of ``stanford_cars_a`` (``benchmarks/recipe.py``):
    TrivialAugmentWide and random erasing are off, as removing either did not lower val
    accuracy (paired over 3 seeds) and each costs training time.

    Parameters
    ----------
    crop_ratio : float, default=0.8
        Side of the training crops as a fraction of the extractor's ``image_size``
        (prediction runs at ``image_size``). 1.0 trains at the test size.
    scale : tuple of float, default=(0.35, 1.0)
        Range of the crop's area as a fraction of the image (``RandomResizedCrop``).
    ratio : tuple of float, default=(3/4, 4/3)
        Range of the crop's aspect ratio.
    flip : bool, default=True
        Random horizontal flips.
    trivial_augment : bool, default=False
        One random photometric or geometric operation per image (``TrivialAugmentWide``).
    erasing : float, default=0.0
        Probability of erasing a random rectangle of the normalised image (0: never).

    Examples
    --------
    >>> from skfg.images import Augmentation
    >>> aug = Augmentation(trivial_augment=True, erasing=0.25)
    >>> aug.crop_size(160)
    128
    """

    def __init__(self, crop_ratio=0.8, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=True, trivial_augment=False,
                 erasing=0.0):
        self.crop_ratio = crop_ratio
        self.scale = scale
        self.ratio = ratio
        self.flip = flip
        self.trivial_augment = trivial_augment
        self.erasing = erasing

    def __repr__(self):
        defaults = Augmentation()
        args = [f"{k}={v!r}" for k, v in vars(self).items() if v != getattr(defaults, k)]
        return f"Augmentation({', '.join(args)})"

    def __eq__(self, other):
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self):
        return hash(repr(self))

    def check(self):
        """Raise ``ValueError`` naming the first invalid setting."""
        if not 0 < self.crop_ratio <= 4:
            raise ValueError(f"Augmentation(crop_ratio={self.crop_ratio!r}) must be in (0, 4].")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"Augmentation(scale={self.scale!r}) must satisfy 0 < low <= high <= 1.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"Augmentation(ratio={self.ratio!r}) must satisfy 0 < low <= high.")
        if not 0 <= self.erasing <= 1:
            raise ValueError(f"Augmentation(erasing={self.erasing!r}) must be a probability in [0, 1].")
        return self

    def crop_size(self, image_size):
        """Side of the training crops for images predicted at ``image_size``."""
        return max(8, int(round(self.crop_ratio * image_size)))

    def image_transform(self, image_size):
        """uint8 tensor ``(3, H, W)`` -> augmented uint8 tensor ``(3, s, s)``, ``s = crop_size(image_size)``."""
        from torchvision.transforms import v2

        steps = [v2.RandomResizedCrop(self.crop_size(image_size), scale=tuple(self.scale), ratio=tuple(self.ratio),
                                      antialias=True)]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        if self.trivial_augment:
            steps.append(v2.TrivialAugmentWide())
        return v2.Compose(steps)

    def batch_transform(self):
        """Normalised float batch -> the batch with random erasing (or None when off)."""
        if not self.erasing:
            return None
        from torchvision.transforms import v2

        erase = v2.RandomErasing(p=self.erasing)
        return lambda x: torch.stack([erase(xi) for xi in x])


def normalize_batch(batch, mean, std):
    """uint8 ``(n, 3, H, W)`` -> float32 ``(batch / 255 - mean) / std``."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return (batch.float().div_(255.0) - mean).div_(std)


class ImageDataset(torch.utils.data.Dataset):
    """A torch Dataset over X: ``dataset[i]`` is ``(transform(image_i), target_i)``.

    Parameters
    ----------
    X : array-like or ImageSource
        Images in any form :class:`ImageSource` accepts.
    y : array-like of int, optional
        Targets (encoded); ``-1`` is returned when absent.
    transform : callable
        PIL image -> tensor, e.g. :func:`train_transform`.
    """

    def __init__(self, X, y=None, transform=None):
        self.source = X if isinstance(X, ImageSource) else ImageSource(X)
        self.y = None if y is None else np.asarray(y)
        self.transform = transform or eval_transform(224)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        target = -1 if self.y is None else int(self.y[i])
        return self.source.transformed(i, self.transform), target


# Most bytes the training-image cache may hold (SKFG_IMAGE_CACHE_MB, default 2048 MB).
IMAGE_CACHE_BYTES = int(os.environ.get("SKFG_IMAGE_CACHE_MB", "2048")) * 2**20


class ImageCache:
    """Images decoded once and kept in memory as uint8 tensors, up to a byte bound.

    ``cache[i]`` is ``transform(image i)`` (e.g. :func:`cache_transform`): decoded on
    first use and kept while the cache holds less than ``max_bytes``; past the bound
    images are decoded on every use instead (logged once). A file that cannot be decoded
    raises :class:`ImageDecodeError` naming it, every time it is asked for: nothing is
    skipped.

    Parameters
    ----------
    source : ImageSource
    transform : callable
        PIL RGB image -> uint8 tensor.
    max_bytes : int, optional
        Defaults to :data:`IMAGE_CACHE_BYTES`.

    Attributes
    ----------
    n_decoded : int
        Images decoded so far (a cached image is decoded once).
    nbytes : int
        Bytes held.
    """

    def __init__(self, source, transform, max_bytes=None):
        self.source, self.transform = source, transform
        self.max_bytes = IMAGE_CACHE_BYTES if max_bytes is None else int(max_bytes)
        self._images, self.nbytes, self.n_decoded, self._full = {}, 0, 0, False

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        i = int(i)
        img = self._images.get(i)
        if img is None:
            img = self.source.transformed(i, self.transform)
            self.n_decoded += 1
            if self.nbytes + img.nbytes <= self.max_bytes:
                self._images[i], self.nbytes = img, self.nbytes + img.nbytes
            elif not self._full:
                self._full = True
                import logging

                logging.getLogger("skfg").warning(
                    "skfg: the decoded training images exceed SKFG_IMAGE_CACHE_MB=%g; the rest are decoded "
                    "on every use", self.max_bytes / 2**20)
        return img


def iter_batches(source, transform, batch_size, indices=None, n_jobs=1, draft=None):
    """Yield ``(indices, uint8 batch)`` decoded by ``n_jobs`` threads, one batch ahead
    (``draft``: as :meth:`ImageSource.load`).

    Decoding (Pillow releases the GIL) overlaps with whatever the caller does with the
    previous batch. The first decode error raises :class:`ImageDecodeError` naming the file.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]

    def work(i):
        return source.transformed(int(i), transform, draft)

    if n_jobs <= 0:
        for chunk in chunks:
            yield chunk, torch.stack([work(i) for i in chunk])
        return
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        pending = deque()
        submit = lambda chunk: pending.append((chunk, [pool.submit(work, i) for i in chunk]))  # noqa: E731
        for chunk in chunks[:2]:  # keep one batch decoding ahead of the one being used
            submit(chunk)
        try:
            for k in range(len(chunks)):
                chunk, futures = pending.popleft()
                if k + 2 < len(chunks):
                    submit(chunks[k + 2])
                yield chunk, torch.stack([f.result() for f in futures])
        finally:  # a decode error or an abandoned generator: drop the queued work
            for _, futures in pending:
                for f in futures:
                    f.cancel()


def to_input(batch, mean, std, device, dtype=None):
    """uint8 ``(n, 3, H, W)`` -> the network's input: normalised, channels-last, on ``device``
    (and cast to ``dtype`` when given)."""
    x = normalize_batch(batch.to(device), mean, std).to(dtype or torch.float32)  # (float32: a no-op)
    return x.contiguous(memory_format=torch.channels_last)


def iter_inputs(source, transform, batch_size, mean, std, device, indices=None, n_jobs=0):
    """Yield ``(indices, input batch)``: :func:`iter_batches` followed by :func:`to_input`."""
    for idx, batch in iter_batches(source, transform, batch_size, indices, n_jobs):
        yield idx, to_input(batch, mean, std, device)


@dataclass(frozen=True)
class Preprocessing:
    """How images become a network's input at inference, in one object.

    What a fitted :class:`~skfg.CNNFeatureExtractor` keeps as ``preprocessing_`` and what a
    classifier fitted on images keeps as ``preprocessing_``: every place that decodes images
    for a network at inference (``transform``, ``predict`` on images, early exits, the
    localization teacher, ONNX export) takes its settings from here.

    Parameters
    ----------
    image_size : int
        Side of the square network input.
    resize : {"crop", "squash"}
        As :func:`eval_transform`.
    mean, std : tuple of float
        Per-channel normalisation of pixels scaled to [0, 1] (the backbone's).
    batch_size : int
        Images per forward pass.
    n_jobs : int or None
        Decode threads (:func:`decode_jobs`; None: 0 on the CPU, up to 4 on a GPU).
    jpeg_draft : bool
        Decode JPEG files with DCT scaling down to the smallest size at least
        ``image_size`` on both sides (:meth:`ImageSource.load`'s ``draft``).

    Examples
    --------
    >>> import numpy as np
    >>> from skfg.images import ImageSource, Preprocessing
    >>> prep = Preprocessing(image_size=32, resize="squash", mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=2)
    >>> X = np.zeros((3, 40, 50, 3), dtype=np.uint8)
    >>> [(idx.tolist(), tuple(x.shape)) for idx, x in prep.batches(ImageSource(X), "cpu")]
    [([0, 1], (2, 3, 32, 32)), ([2], (1, 3, 32, 32))]
    """

    image_size: int
    resize: str
    mean: tuple
    std: tuple
    batch_size: int = 4
    n_jobs: object = None
    jpeg_draft: bool = False

    def __post_init__(self):  # tuples of floats: hashable, comparable, saved as plain data
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "batch_size", int(self.batch_size))

    @classmethod
    def from_extractor(cls, extractor, **changes):
        """The preprocessing of a :class:`~skfg.CNNFeatureExtractor`'s parameters (fitted or
        not), with ``changes`` (e.g. ``batch_size=16``)."""
        mean, std = extractor.input_normalization()
        settings = dict(image_size=extractor.image_size, resize=extractor.resize, mean=mean, std=std,
                        batch_size=extractor.batch_size, n_jobs=extractor.n_jobs,
                        jpeg_draft=extractor.jpeg_draft)
        return cls(**{**settings, **changes})

    def transform(self):
        """PIL image -> uint8 tensor ``(3, S, S)`` (:func:`eval_transform`)."""
        return eval_transform(self.image_size, self.resize)

    def to_input(self, batch, device, dtype=None):
        """uint8 batch ``(n, 3, S, S)`` -> the network's input on ``device`` (:func:`to_input`)."""
        return to_input(batch, self.mean, self.std, device, dtype)

    def example_batch(self, device, n=1):
        """A zero input batch ``(n, 3, S, S)`` as :meth:`batches` yields them (float32,
        channels-last, on ``device``): the shapes an engine is built for."""
        x = torch.zeros(n, 3, self.image_size, self.image_size, device=device)
        return x.contiguous(memory_format=torch.channels_last)

    def numpy_batches(self, source, indices=None, batch_size=None):
        """Yield ``(indices, input batch)`` as :meth:`batches` does on the CPU, made without
        torch: float32 numpy arrays ``(n, 3, S, S)`` (contiguous, the layout an onnxruntime
        engine takes), decoded in the calling thread.

        An onnxruntime engine serves these: a torch operation between its runs wakes
        torch's thread pool, whose busy-waiting threads slow onnxruntime's (``_engine``)."""
        draft = (self.image_size, self.image_size) if self.jpeg_draft else None
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        for idx, batch in uint8_batches(source, self.image_size, self.resize, batch_size or self.batch_size, indices,
                                        draft):
            # as normalize_batch: (batch / 255 - mean) / std, in float32
            x = batch.astype(np.float32, order="C")
            x /= np.float32(255.0)
            x -= mean
            x /= std
            yield idx, x

    def decode_jobs(self, device):
        """Decode threads on ``device`` (:func:`decode_jobs`)."""
        return decode_jobs(self.n_jobs, device)

    def batches(self, source, device, indices=None, batch_size=None, transform=None, n_jobs=None):
        """Yield ``(indices, input batch)`` of the images ``indices`` of ``source`` (an
        :class:`ImageSource`; all by default), decoded ahead by :meth:`decode_jobs` threads
        (``n_jobs`` to override), normalised, channels-last, on ``device``. ``transform``
        replaces the inference transform (e.g. :func:`train_transform` for random views)."""
        jobs = self.decode_jobs(device) if n_jobs is None else int(n_jobs)
        draft = (self.image_size, self.image_size) if self.jpeg_draft and transform is None else None
        for idx, batch in iter_batches(source, transform or self.transform(), batch_size or self.batch_size,
                                       indices, jobs, draft):
            yield idx, self.to_input(batch, device)


def decode_jobs(n_jobs, device):
    """Decode threads for ``n_jobs``: as given, or for ``None`` 0 on the CPU (the network
    already uses every core) and up to 4 on a GPU."""
    if n_jobs is None:
        return 0 if str(device) == "cpu" else min(4, os.cpu_count() or 1)
    return int(n_jobs)
