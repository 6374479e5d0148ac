"""Export of fitted models to ONNX, for serving with onnxruntime (the ``[onnx]`` extra).

:func:`export_onnx` writes one graph from uint8 images to the model's outputs: the
input normalisation, the CNN, pooling, and the head. :class:`~skfg.serving.OnnxModel`
(also importable from here) runs such a file with onnxruntime behind the familiar
``predict`` / ``predict_proba`` / ``transform``, with skfg's own image preprocessing
(decode, resize) in front, so it predicts what the exported estimator predicts; it
needs neither torch nor torchvision.

What a graph holds, by model:

- :class:`~skfg.CNNFeatureExtractor` (or a Pipeline of it alone): ``features``.
- :class:`~skfg.SoftmaxClassifier`, :class:`~skfg.ImprintedClassifier` given an
  ``extractor`` (or after one in a Pipeline): ``logits`` and ``probabilities``.
- :class:`~skfg.ImpostorClassifier` likewise: ``embeddings`` and, when it sums over every
  impostor (``n_neighbors=None``, the default), ``probabilities``: the RBF vote of
  impostor-networks eq. (3), with the impostors as constants of the graph. With
  ``n_neighbors`` set the vote runs over a faiss search; it is not in the graph (search
  the embeddings with the estimator's ``index_``).

The :class:`~skfg.EarlyExitClassifier` (per-layer linear SVMs that stop the CNN
early) and :class:`~skfg.ObjectCropper` are not exported.
"""

import copy
import json
import os

import numpy as np
import torch
from torch import nn

from ._engine import export_graph
from ._files import atomic_path
from ._version import __version__
from .serving import OnnxModel, onnx_input  # noqa: F401 - (their home before 0.4; torch-free there)

OPSET = 18


def _onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime (skfg's [onnx] extra).") from exc
    return onnx, onnxruntime


class _RBFVote(nn.Module):
    """Class probabilities of the RBF vote over every impostor (impostor-networks eq. 3), in
    float64 as :func:`skfg.losses.rbf_log_proba`; the per-class sums are a product with
    the impostors' one-hot labels (a scatter would fix the batch size of the graph)."""

    def __init__(self, clf):
        super().__init__()
        vectors = torch.from_numpy(clf.index_.reconstruct()).double()
        labels = torch.as_tensor(clf.impostor_labels_)
        self.register_buffer("vectors", vectors)
        self.register_buffer("sq_norms", (vectors * vectors).sum(1))
        self.register_buffer("one_hot", torch.nn.functional.one_hot(labels, len(clf.classes_)).double())
        weights = clf.impostor_weights_
        self.register_buffer("log_w", None if weights is None else torch.as_tensor(np.log(weights)).double())
        self.gamma = -0.5 / float(clf.sigma) ** 2

    def forward(self, emb):
        emb = emb.double()
        sq_dist = ((emb * emb).sum(1, keepdim=True) - 2 * emb @ self.vectors.T + self.sq_norms).clamp_min(0)
        log_kernel = sq_dist * self.gamma  # eq. 2: log of w_j g(y, c_j)
        if self.log_w is not None:
            log_kernel = log_kernel + self.log_w
        kernel = torch.exp(log_kernel - log_kernel.max(dim=1, keepdim=True).values)
        sums = kernel @ self.one_hot  # eq. 3: sum over each class's impostors
        return (sums / sums.sum(1, keepdim=True)).float()


class _Graph(nn.Module):
    """uint8 images ``(n, 3, S, S)`` -> ``body``'s output (and ``proba`` of it)."""

    def __init__(self, mean, std, body, proba=None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.body, self.proba = body, proba

    def forward(self, images):
        x = (images.float() / 255.0 - self.mean) / self.std  # skfg.images.normalize_batch
        out = self.body(x)
        return out if self.proba is None else (out, self.proba(out))


def _split(model):
    """``(extractor or None, classifier or None)`` of a model, not both None (no extractor: a
    classifier fitted on images); TypeError for what cannot be exported."""
    from sklearn.pipeline import Pipeline

    from ._classifier import BaseTorchClassifier
    from .extractor import CNNFeatureExtractor

    if isinstance(model, Pipeline):
        steps = [s for _, s in model.steps if s not in (None, "passthrough")]
        if len(steps) == 1:
            return _split(steps[0])
        if len(steps) == 2 and isinstance(steps[0], CNNFeatureExtractor):
            ext, clf = steps
            if isinstance(clf, BaseTorchClassifier) and clf.extractor is None:
                return ext, clf
        raise TypeError(
            "export_onnx takes a Pipeline of a CNNFeatureExtractor followed by a torch classifier of skfg on its "
            f"features (or the extractor alone); got steps {[type(s).__name__ for s in steps]}. For another "
            "final step, export the extractor (pipeline[:-1]) and run the step on the exported features."
        )
    if isinstance(model, CNNFeatureExtractor):
        return model, None
    if isinstance(model, BaseTorchClassifier):
        if model.extractor is None:
            raise TypeError(f"this {type(model).__name__} was fitted on features: export the Pipeline of the "
                            "extractor and the classifier, so that the graph starts from images.")
        return None, model
    raise TypeError(f"export_onnx cannot export a {type(model).__name__}: it takes a CNNFeatureExtractor, a "
                    "SoftmaxClassifier, ImprintedClassifier or ImpostorClassifier, or a Pipeline of them.")


def inference_module(model):
    """The torch module that :func:`export_onnx` exports, for running or timing it in torch.

    Parameters
    ----------
    model : estimator or Pipeline
        As for :func:`export_onnx`.

    Returns
    -------
    module : torch.nn.Module
        A copy, on the CPU, in eval mode: uint8 images ``(n, 3, S, S)`` in (``S`` the
        extractor's ``image_size``), the model's outputs out.
    output_names : list of str
    """
    graph, outputs, _ = _graph(model)
    return copy.deepcopy(graph).cpu().eval(), list(outputs)


def _graph(model):
    """``(graph module, output names, metadata)`` of a fitted model."""
    from sklearn.utils.validation import check_is_fitted

    from .impostor import ImpostorClassifier

    ext, clf = _split(model)
    if ext is not None:
        check_is_fitted(ext, "network_")
        prep, backbone, trunk = ext.preprocessing_, ext.backbone, ext.pooled_trunk_
    if clf is not None:
        check_is_fitted(clf, "module_")
    if ext is None:  # a classifier fitted on images holds the trained CNN in its module_
        prep, backbone = clf.preprocessing_, clf.trunk_settings_["backbone"]
    meta = {"skfg_version": __version__, "image_size": prep.image_size, "resize": prep.resize, "backbone": backbone}
    if clf is None:
        return _Graph(prep.mean, prep.std, trunk), ["features"], meta
    net = clf.module_ if ext is None else nn.Sequential(trunk, clf.module_)
    meta["classes"] = json.dumps(np.asarray(clf.classes_).tolist())
    meta["estimator"] = type(clf).__name__
    if isinstance(clf, ImpostorClassifier):
        if clf.n_neighbors is not None and clf.n_neighbors < len(clf.impostor_labels_):
            return _Graph(prep.mean, prep.std, net), ["embeddings"], meta
        return _Graph(prep.mean, prep.std, net, _RBFVote(clf)), ["embeddings", "probabilities"], meta
    return _Graph(prep.mean, prep.std, net, nn.Softmax(dim=1)), ["logits", "probabilities"], meta


def _quantize_int8(path, images, batch_size=16):
    """Quantize the ONNX file ``path`` in place: static, QDQ, int8 weights per channel,
    uint8 activations, MinMax ranges over uint8 ``images`` ``(n, 3, S, S)``; 7-bit weights."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([images[i : i + batch_size] for i in range(0, len(images), batch_size)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    import onnx

    with tempfile.TemporaryDirectory() as work:
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(path, prepared, skip_symbolic_shape=True)  # shape inference, graph clean-up
        # the nodes that write the graph's outputs (and any softmax) stay float32: quantized
        # there, probabilities came in steps of 1/255 and no longer summed to 1
        proto = onnx.load(prepared)
        outputs = {o.name for o in proto.graph.output}
        for i, node in enumerate(proto.graph.node):
            node.name = node.name or f"skfg_node_{i}"
        onnx.save(proto, prepared)
        keep_float = [n.name for n in proto.graph.node if n.op_type == "Softmax" or set(n.output) & outputs]
        # 7-bit weights (reduce_range): x86 CPUs without VNNI (AVX2 only) multiply u8 x s8 with
        # VPMADDUBSW, which saturates with full-range weights (onnxruntime's quantization guide);
        # the file may be served on one, so it is quantized for any
        quantize_static(prepared, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float, reduce_range=True)


def export_onnx(model, path, *, opset_version=OPSET, check=True, quantize=None, calibration=None):
    """Write a fitted model as an ONNX graph from uint8 images to its outputs.

    The graph's input ``images`` is a uint8 array ``(n, 3, S, S)`` (any ``n``), the images
    decoded and resized as the model's extractor does (``image_size`` S and ``resize``):
    :func:`onnx_input` makes it. Its outputs are named in the module docstring. The
    file's metadata holds the skfg version, ``image_size``, ``resize``, the backbone
    and, for a classifier, ``classes`` (JSON); :class:`OnnxModel` reads them.

    Parameters
    ----------
    model : estimator or Pipeline
        A fitted :class:`~skfg.CNNFeatureExtractor`; a fitted SoftmaxClassifier,
        ImprintedClassifier or ImpostorClassifier with an ``extractor``; or a Pipeline of
        a CNNFeatureExtractor and such a classifier fitted on its features.
    path : str or path-like
        The ``.onnx`` file to write (weights inside, no external data file). It is
        written whole or not at all.
    opset_version : int, default=18
        ONNX operator set.
    check : bool, default=True
        Run the written graph with onnxruntime on random images and compare it with the
        torch model; a difference above 1e-3 is an error (and no file is left). For an
        int8 graph, check that it runs on a batch of 3 and gives finite outputs of the
        float graph's shapes (its outputs differ from float32 by design).
    quantize : {None, "int8"}, default=None
        ``"int8"``: quantize the graph with onnxruntime's static quantization (QDQ
        format, int8 weights per output channel, uint8 activations, MinMax ranges
        calibrated on ``calibration``). On 2 CPU cores such a graph of EfficientNet-Lite0
        ran about twice as fast as the float32 one; what it costs in accuracy is measured
        in ``benchmarks/results/int8.md`` (see the inference guide): check it on your
        validation images before serving it.
    calibration : array-like, optional
        Images the activation ranges are calibrated on (paths, arrays or PIL images, as
        ``transform`` takes; a few hundred training images, never the test set). Needed
        with ``quantize="int8"``.

    Returns
    -------
    path : str

    Raises
    ------
    TypeError
        For a model that cannot be exported (the message says what can).
    ImportError
        Without onnx, onnxscript or onnxruntime (skfg's ``[onnx]`` extra).
    """
    onnx, ort = _onnx()
    path = os.fspath(path)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize is not None and (calibration is None or len(calibration) == 0):
        raise ValueError("quantize='int8' needs calibration images (calibration=, e.g. a few hundred training "
                         "images) to set the activation ranges")
    graph, outputs, meta = _graph(model)
    graph = copy.deepcopy(graph).cpu().eval()
    size = meta["image_size"]
    rng = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=rng)
    probe = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=rng)  # another batch size
    with atomic_path(path) as tmp:
        tmp = str(tmp)
        export_graph(graph, example, tmp, "images", outputs, opset_version)
        if quantize is not None:
            _quantize_int8(tmp, onnx_input(calibration, size, meta["resize"]))
            meta = {**meta, "quantized": "int8"}
        proto = onnx.load(tmp)
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=str(value))
        onnx.save(proto, tmp)
        if check and quantize is not None:
            session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            with torch.no_grad():
                expected = graph(probe)
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = session.run(None, {"images": probe.numpy()})
            if any(g.shape != tuple(e.shape) or not np.isfinite(g).all() for g, e in zip(got, expected)):
                raise RuntimeError("the int8 graph's outputs are not finite or not of the float graph's shapes; "
                                   "no file written")
        elif check:
            with torch.no_grad():
                expected = graph(probe)
            expected = expected if isinstance(expected, tuple) else (expected,)
            session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            try:
                got = session.run(None, {"images": probe.numpy()})
            except Exception as exc:  # e.g. a batch size fixed in the graph
                raise RuntimeError(f"the exported graph does not run on a batch of 3 images: {exc}") from exc
            diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
            if diff > 1e-3:
                raise RuntimeError(f"the ONNX graph's outputs differ from the torch model's by {diff:.3g} (> 1e-3); "
                                   "no file written")
    return path
