"""Serving an exported model without torch: :class:`OnnxModel` runs a file written by
:func:`skfg.export.export_onnx` with onnxruntime, behind ``predict`` / ``predict_proba`` /
``transform``, with skfg's own decoding and resize in front (:mod:`skfg._decode`, the same
code ``transform`` runs), so it predicts what the exported estimator predicts.

Importing this module needs numpy, Pillow and (to run a model) onnxruntime: neither
torch nor torchvision. ``skfg predict`` serves a model this way when an ONNX copy of it is
cached (:func:`onnx_copy_path`).
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ._decode import ImageSource, uint8_batches

__all__ = ["OnnxModel", "onnx_input", "onnx_copy_path"]


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("serving an ONNX model needs onnxruntime: pip install onnxruntime (skfg's [onnx] extra).") from exc
    return onnxruntime


def cache_dir():
    """skfg's cache folder: ``$SKFG_CACHE_DIR``, else ``$XDG_CACHE_HOME/skfg``, else
    ``~/.cache/skfg``."""
    if os.environ.get("SKFG_CACHE_DIR"):
        return Path(os.environ["SKFG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skfg"


def onnx_copy_path(model_path):
    """Where the ONNX copy of the model file ``model_path`` is cached: named by the
    SHA-256 of the file's bytes, so a changed or replaced model file never meets an old
    copy (``cache_dir() / "onnx" / <digest>.onnx``)."""
    h = hashlib.sha256()
    with open(model_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return cache_dir() / "onnx" / f"{h.hexdigest()}.onnx"


def onnx_input(X, image_size, resize="squash", batch_size=64):
    """Images as an exported graph takes them: uint8 ``(n, 3, image_size, image_size)``.

    Parameters
    ----------
    X : array-like
        Image paths, a uint8 array ``(n, H, W[, 3])`` or PIL images (as ``transform`` takes).
    image_size : int
    resize : {"squash", "crop"}, default="squash"
        As the extractor's ``resize`` (whose default is ``"squash"``).
    batch_size : int, default=64
        Images held at a time.

    Returns
    -------
    images : ndarray of shape (n, 3, image_size, image_size), dtype uint8
    """
    source = ImageSource(X)
    out = np.empty((len(source), 3, image_size, image_size), dtype=np.uint8)
    for idx, batch in uint8_batches(source, image_size, resize, batch_size):
        out[idx] = batch
    return out


class OnnxModel:
    """An exported model run with onnxruntime, with skfg's image preprocessing in front.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`skfg.export.export_onnx`.
    providers : list of str, optional
        onnxruntime execution providers (default: the CPU).
    batch_size : int, default=32
        Images per call of the graph.

    Attributes
    ----------
    classes_ : ndarray or None
        The classifier's classes (None for an extractor).
    image_size, resize : int, str
        The preprocessing the graph expects.
    quantized : str or None
        ``"int8"`` for a graph exported with ``quantize="int8"``, else None.
    output_names : list of str

    Examples
    --------
    >>> from skfg.export import export_onnx  # doctest: +SKIP
    >>> from skfg.serving import OnnxModel  # doctest: +SKIP
    >>> export_onnx(fitted_classifier, "model.onnx")  # doctest: +SKIP
    >>> OnnxModel("model.onnx").predict(["car.jpg"])  # doctest: +SKIP
    """

    def __init__(self, path, providers=None, batch_size=32):
        ort = _onnxruntime()
        self.path = os.fspath(path)
        self.session = ort.InferenceSession(self.path, providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "image_size" not in meta:
            raise ValueError(f"{self.path} was not written by skfg.export.export_onnx (no image_size in its metadata).")
        self.image_size, self.resize = int(meta["image_size"]), meta["resize"]
        self.classes_ = np.asarray(json.loads(meta["classes"])) if "classes" in meta else None
        self.quantized = meta.get("quantized")  # "int8" for a graph exported with quantize="int8"
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.batch_size = batch_size

    def run(self, images):
        """The graph's outputs ``{name: array}`` for uint8 images ``(n, 3, S, S)``."""
        parts = [self.session.run(None, {"images": images[i : i + self.batch_size]})
                 for i in range(0, len(images), self.batch_size)]
        return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(self.output_names)}

    def _output(self, X, name):
        """Output ``name`` for images X, decoded ``batch_size`` at a time."""
        if name not in self.output_names:
            raise AttributeError(f"{self.path} has no {name!r} output (it has {self.output_names}).")
        source, out = ImageSource(X), None
        for idx, batch in uint8_batches(source, self.image_size, self.resize, self.batch_size):
            part = self.session.run([name], {"images": batch})[0]
            if out is None:
                out = np.empty((len(source), *part.shape[1:]), dtype=part.dtype)
            out[idx] = part
        return out

    def predict_proba(self, X):
        """Class probabilities of images X; columns follow ``classes_``."""
        return self._output(X, "probabilities")

    def predict(self, X):
        """Predicted labels of images X."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def transform(self, X):
        """The graph's first output for images X: features, or a classifier's logits or embeddings."""
        return self._output(X, self.output_names[0])
