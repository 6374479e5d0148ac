"""Decoding images without torch: what X holds (:class:`ImageSource`), each image as an
RGB PIL image, and the inference resize (:func:`eval_image`) as a uint8 array.

Everything here needs only numpy and Pillow, so a process that serves an exported model
(``skfg predict`` on its ONNX copy, :class:`skfg.export.OnnxModel`) decodes exactly as
``transform`` and ``predict`` do without importing torch. :mod:`skfg.images` re-exports
these names; it is the module to use.
"""

import hashlib
import os
import sys

import numpy as np
from PIL import Image, ImageOps

from .exceptions import ImageDecodeError, ImageTooLargeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Most pixels an image may have when decoded, and after resizing, checked before either
# allocates: a 667-byte 1 x 150000 PNG passes Pillow's bomb check (it counts input pixels)
# yet becomes ~22 GB when its short side is resized to 224. 2**27 pixels are 384 MiB as
# RGB. Raise it (or set SKFG_MAX_PIXELS) for larger images.
MAX_PIXELS = int(os.environ.get("SKFG_MAX_PIXELS", 2**27))


def max_pixels():
    """The limit in force: ``skfg.images.MAX_PIXELS`` where that module is loaded (the
    documented place to raise it), else this module's."""
    images = sys.modules.get("skfg.images")
    return getattr(images, "MAX_PIXELS", MAX_PIXELS)


def check_pixels(width, height, what="the image"):
    """Raise :class:`ImageTooLargeError` when ``width * height`` exceeds :data:`MAX_PIXELS`."""
    limit = max_pixels()
    if width * height > limit:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height:,} pixels, over skfg.images.MAX_PIXELS = "
            f"{limit:,}; raise it (or the SKFG_MAX_PIXELS environment variable) for such images."
        )


class ResizeGuard:
    """First step of a shorter-side resize to ``size``: refuses (:class:`ImageTooLargeError`)
    an image whose resized pixel count would exceed :data:`MAX_PIXELS`, and passes it on."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, img):
        w, h = img.size
        long_side = int(self.size * max(w, h) / max(1, min(w, h)))
        check_pixels(self.size, long_side, f"resized to {self.size} px on its short side, the {w}x{h} image")
        return img


# ------------------------------------------------------------------ decoding
def to_rgb(img):
    """Convert a PIL image of any mode to 8-bit RGB.

    Grayscale, palette, CMYK, YCbCr and LAB go through Pillow's conversion; images with
    an alpha channel are composited onto white; 16- and 32-bit integer images (16-bit
    PNG) are scaled from their bit depth to 0-255 instead of being clipped.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        else:
            top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _dtype_hint(arr):
    """How to convert an image array of another dtype to uint8, by its dtype and range."""
    if arr.dtype.kind == "b":
        return "convert with x.astype(np.uint8) * 255."
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        return "convert it to uint8 (values 0-255)."
    top = float(np.nanmax(arr))
    if arr.dtype.kind == "f" and top <= 1.0:
        return "its values look like floats in [0, 1]: convert with (x * 255).round().astype(np.uint8)."
    if top <= 255 and float(np.nanmin(arr)) >= 0:
        return "its values lie in 0-255: convert with " + ("x.round().astype(np.uint8)." if arr.dtype.kind == "f"
                                                           else "x.astype(np.uint8).")
    return (f"its values reach {top:g}: scale them to 0-255 first, e.g. (x * (255 / x.max())).round()"
            ".astype(np.uint8).")


def _array_to_pil(arr, name):
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        arr = np.rint(arr / 257.0).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: image arrays must be uint8 (or uint16), got dtype {arr.dtype}; "
                               + _dtype_hint(arr))
    if 0 in arr.shape[:2]:
        raise ImageDecodeError(f"{name}: an empty image (shape {arr.shape}).")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))
    raise ImageDecodeError(
        f"{name}: expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}."
    )


def _open_path(path, draft=None):
    try:
        with Image.open(path) as img:
            check_pixels(*img.size, "decoded")  # the header's size, before decoding
            if draft is not None and img.format == "JPEG":
                # DCT scaling: decode at 1/2, 1/4 or 1/8 of the size while both sides stay >= draft
                img.draft("RGB", tuple(int(v) for v in draft))
            img.load()  # force the full decode so truncated files fail here
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{path}: file not found") from exc
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{path}: {exc}") from None
    except Exception as exc:
        raise ImageDecodeError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


class ImageSource:
    """A read-only view over X that decodes one image at a time.

    Parameters
    ----------
    X : array-like
        One of: a 1-D array or list of image paths; a uint8 array ``(n, H, W, 3)``,
        ``(n, H, W, 4)`` or ``(n, H, W)``; a list of PIL images or of ``(H, W[, C])``
        arrays.

    Raises
    ------
    TypeError, ValueError
        If X has none of these forms (the message says what was received).
    """

    def __init__(self, X):
        self.kind, self.items = self._classify(X)

    @staticmethod
    def _classify(X):
        if isinstance(X, ImageSource):
            return X.kind, X.items
        if isinstance(X, (str, os.PathLike, Image.Image)):
            raise TypeError(
                "X must be a collection of images (a list of paths, an (n, H, W, 3) array "
                f"or a list of PIL images), got a single {type(X).__name__}; wrap it in a list."
            )
        if isinstance(X, np.ndarray) and X.dtype != object and X.dtype.kind not in "US":
            if X.ndim == 3 and X.shape[-1] in (3, 4):
                raise ValueError(
                    f"X has shape {X.shape}, which looks like one color image, not a batch; "
                    "pass X[None] or [image] for a single image ((n, H, W) is a batch of "
                    "grayscale images)."
                )
            if X.ndim in (3, 4):
                if len(X) == 0:
                    raise ValueError("X is empty: no images to process.")
                if 0 in X.shape[1:3]:
                    raise ValueError(f"X has shape {X.shape}: images of {X.shape[1]} x {X.shape[2]} pixels are empty.")
                return "array", X
            raise ValueError(
                f"An image array X must have shape (n, H, W), (n, H, W, 3) or (n, H, W, 4); "
                f"got shape {X.shape}. A 2-D array looks like features: put the images, "
                "not their features, before a CNNFeatureExtractor."
            )
        items = list(X)
        if not items:
            raise ValueError("X is empty: no images to process.")
        kinds = set()
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                kinds.add("path")
            elif isinstance(item, Image.Image):
                kinds.add("pil")
            elif isinstance(item, np.ndarray) and item.ndim in (2, 3):
                kinds.add("array")
            else:
                raise TypeError(
                    f"X[{i}] is a {type(item).__name__}; each image must be a path, a PIL "
                    "image or an (H, W[, C]) uint8 array."
                )
        if len(kinds) > 1:
            raise TypeError(f"X mixes image kinds {sorted(kinds)}; use one kind for all images.")
        return kinds.pop(), items

    def __len__(self):
        return len(self.items)

    def transformed(self, i, transform, draft=None):
        """``transform(load(i, draft))``; a refused resize (:class:`ImageTooLargeError`) names the image."""
        try:
            return transform(self.load(i, draft))
        except ImageTooLargeError as exc:
            if str(exc).startswith(self.name(i)):
                raise
            raise ImageTooLargeError(f"{self.name(i)}: {exc}") from None

    def fingerprint(self):
        """A digest of every image's content (:meth:`cache_key`), in order."""
        return hashlib.blake2b("".join(self.cache_key(i) for i in range(len(self))).encode(), digest_size=16).hexdigest()

    def name(self, i):
        """How image ``i`` is named in messages: its path, or ``X[i]``."""
        return os.fspath(self.items[i]) if self.kind == "path" else f"X[{i}]"

    def load(self, i, draft=None):
        """Image ``i`` as an RGB PIL image; raises :class:`ImageDecodeError` naming it.

        ``draft=(w, h)``: a JPEG file is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 of
        its size whose sides are still at least ``w`` and ``h`` (libjpeg's DCT scaling; a
        faster decode of large photographs, with slightly different pixels)."""
        item = self.items[i]
        if self.kind == "path":
            return _open_path(os.fspath(item), draft)
        if self.kind == "pil":
            try:
                return to_rgb(ImageOps.exif_transpose(item))
            except Exception as exc:
                raise ImageDecodeError(f"{self.name(i)}: cannot convert PIL image: {exc}") from exc
        return _array_to_pil(item, self.name(i))

    def cache_key(self, i):
        """A string that identifies image ``i``'s content: a hash of the file's bytes (so a
        rewritten file never gets the features of its old content), of the decoded pixels
        of a PIL image, or of an array's bytes."""
        item = self.items[i]
        h = hashlib.blake2b(digest_size=16)
        if self.kind == "path":
            path = os.fspath(item)
            try:
                with open(path, "rb") as fh:
                    h.update(b"file:")
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
            except OSError:
                h.update(f"missing:{os.path.abspath(path)}".encode())
        elif self.kind == "pil":  # hash the pixels as decoded: palette, EXIF and alpha applied
            rgb = self.load(i)
            h.update(f"pil:{rgb.size}".encode())
            h.update(rgb.tobytes())
        else:
            arr = np.ascontiguousarray(item)
            h.update(f"array:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


# ------------------------------------------------------------------ the inference resize
def eval_image(img, image_size, resize="crop"):
    """The inference resize of an RGB PIL image: ``"crop"`` resizes the shorter side to
    ``image_size`` (bilinear) and takes the centre crop; ``"squash"`` resizes the whole
    image to ``image_size x image_size``. Exactly torchvision's ``Resize`` and
    ``CenterCrop`` on PIL images (the same Pillow calls and rounding), without torch."""
    s = int(image_size)
    if resize == "crop":
        ResizeGuard(s)(img)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if short != s:
            long = int(s * long / short)  # (torchvision's rounding: down)
            img = img.resize((s, long) if w <= h else (long, s), Image.BILINEAR)
        w, h = img.size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return img.crop((left, top, left + s, top + s))
    if resize == "squash":
        return img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)
    raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}")


def eval_array(img, image_size, resize="crop"):
    """:func:`eval_image` as a uint8 array ``(3, S, S)`` (what ``PILToTensor`` gives)."""
    return np.asarray(eval_image(img, image_size, resize), dtype=np.uint8).transpose(2, 0, 1)


def uint8_batches(source, image_size, resize, batch_size, indices=None, draft=None):
    """Yield ``(indices, uint8 batch (n, 3, S, S))`` of the images ``indices`` of ``source``
    (all by default) as :func:`eval_array` makes them, decoded in order in the calling
    thread (``draft``: as :meth:`ImageSource.load`)."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        yield idx, np.stack([source.transformed(int(i), lambda img: eval_array(img, image_size, resize), draft)
                             for i in idx])
