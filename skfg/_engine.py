"""Inference engines: how a fitted network runs at ``predict`` / ``transform`` time.

Training always runs the plain torch module. At inference, an estimator hands its network
(a module taking the normalised, channels-last batches of :class:`skfg.images.Preprocessing`)
to :func:`make_engine`, which returns a callable with the same outputs:

- ``"eager"``: the module itself, under ``torch.inference_mode`` (the reference);
- ``"fused"``: a copy with every BatchNorm folded into the convolution before it
  (:func:`fold_batchnorm`; BatchNorm and the activations were ~40 % of CPU time), same
  outputs within float32 rounding;
- ``"onnxruntime"``: the module exported to ONNX in memory and run by onnxruntime (the
  ``[onnx]`` extra); the export costs seconds once per fitted model and process;
- ``"auto"``: ``"fused"``. On this 2-core CPU onnxruntime runs the network fastest at
  every batch size, but building it (the export) takes seconds once per fitted model and
  process (``benchmarks/results/engines.md``): a short call should never wait for that,
  so it is the choice of a long-running process or a large job.

Engines are built lazily at the first prediction and kept outside the estimator
(:func:`cached_engine`), so a pickled model never carries one.
"""

import copy
import io
import warnings
import weakref

import torch
from torch import fx, nn

ENGINES = ("auto", "eager", "fused", "onnxruntime")


class _LeafTracer(fx.Tracer):
    """Traces a module down to its convolutions and BatchNorms (kept as leaves, so a
    convolution with its own ``forward``, e.g. TensorFlow "SAME" padding, is one node)."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        # ``m.forward``, not ``m(...)``: a user's hooks (per module or global) must never see
        # the tracer's proxies
        return super().call_module(m, m.forward, args, kwargs)


def _conv_bn_pairs(module, prefix=""):
    """``[(conv name, BatchNorm name)]`` in ``module`` where the BatchNorm's only input is
    the convolution's output and nothing else reads that output; found by tracing the
    largest traceable submodules (a module that cannot be traced is searched child by child)."""
    try:
        graph = _LeafTracer().trace(module)
    except Exception:  # data-dependent control flow, or no forward (ModuleDict): its children
        return [pair for name, child in module.named_children()
                for pair in _conv_bn_pairs(child, f"{prefix}{name}.")]
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if (len(node.args) == 1 and not node.kwargs and isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(module.get_submodule(source.target), nn.Conv2d) and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1):
            pairs.append((prefix + source.target, prefix + node.target))
    return pairs


def fold_batchnorm(module):
    """A copy of ``module`` in eval mode with each BatchNorm that directly follows a
    convolution folded into it (the BatchNorm becomes ``nn.Identity``).

    ``BN(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` per output channel and
    ``b' = (b - m) * g / sqrt(v + eps) + beta`` (``g``, ``beta``: the BatchNorm's affine
    weights; ``m``, ``v``: its running statistics). The module's code is unchanged, so its
    outputs equal the original's in eval mode up to float32 rounding. The original is not
    modified (it may go on training).

    Parameters
    ----------
    module : nn.Module

    Returns
    -------
    folded : nn.Module
    """
    folded = copy.deepcopy(module).eval()
    for conv_name, bn_name in _conv_bn_pairs(folded):
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        if bn.running_mean is None or not bn.track_running_stats:
            continue  # batch statistics at inference: nothing fixed to fold
        with torch.no_grad():
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent_name), child, nn.Identity())
    return folded.requires_grad_(False)


class _Torch:
    """A torch module run under ``inference_mode`` (outputs as torch tensors)."""

    def __init__(self, module, name):
        self.module, self.name = module.eval(), name

    def __call__(self, x):
        with torch.inference_mode():
            return self.module(x)


class _OnnxRuntime:
    """The module exported to ONNX in memory (torch.export, opset 18, a dynamic batch) and
    run by onnxruntime on the CPU; outputs come back as torch tensors. (The TorchScript
    exporter's graph of EfficientNet-Lite ran 2.6x slower at batch 1 here.)"""

    name = "onnxruntime"

    def __init__(self, module, example):
        import onnxruntime as ort

        buf = io.BytesIO()
        module = module.cpu().eval()  # (a copy already: make_engine folds into a fresh one)
        example = example.cpu().float().expand(2, *example.shape[1:]).contiguous()  # a batch of 2: batch is dynamic
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecations and messages
            torch.onnx.export(module, (example,), buf, input_names=["x"], output_names=["y"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=18, dynamo=True,
                              external_data=False, verbose=False)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # no busy-waiting between runs: its threads would take the cores from the decoding
        # and the torch code around each call
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        out = self.session.run(None, {"x": x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def onnxruntime_available():
    """Whether onnx and onnxruntime import (the ``[onnx]`` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine, device="cpu"):
    """The engine ``engine`` names, checked: ``"auto"`` is ``"fused"``; ``"onnxruntime"``
    needs the ``[onnx]`` extra and the CPU."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}; got {engine!r}")
    if engine == "auto":
        return "fused"
    if engine == "onnxruntime":
        if str(device) != "cpu":
            raise ValueError(f"engine='onnxruntime' runs on the CPU; this model is on {device!r}: use 'fused'.")
        if not onnxruntime_available():
            raise ImportError("engine='onnxruntime' needs onnx and onnxruntime: pip install 'skfg[onnx]' "
                              "(or use engine='fused').")
    return engine


def make_engine(module, engine, example):
    """A callable running ``module`` (in eval mode) as engine ``engine`` (resolved:
    ``"eager"``, ``"fused"`` or ``"onnxruntime"``); ``example`` is an input batch (the
    export's shapes)."""
    if engine == "eager":
        return _Torch(module, "eager")
    if engine == "fused":
        return _Torch(fold_batchnorm(module), "fused")
    if engine == "onnxruntime":
        return _OnnxRuntime(fold_batchnorm(module), example)
    raise ValueError(f"not a resolved engine: {engine!r}")


_CACHE = weakref.WeakKeyDictionary()  # owner module -> {key: (signature, engine)}


def _tensors(module):
    """``[(weak reference to a submodule, name, tensor)]`` of every parameter and buffer of
    ``module`` (weak: the cache must not keep the module it is keyed by alive)."""
    return [(weakref.ref(m), name, t) for m in module.modules()
            for name, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)) if t is not None]


def _unchanged(entries, versions):
    """Whether every tensor is still in place (not replaced) and unchanged in place since
    ``versions`` (torch's per-tensor version counter) were read: a quick check, one
    attribute read per tensor, where walking the module tree again costs ~2 ms."""
    return all(getattr(m(), name, None) is t and t._version == v for (m, name, t), v in zip(entries, versions))


def cached_engine(owner, engine, example, build=None, key=()):
    """The engine ``engine`` of the module ``build()`` returns (``owner`` itself by default),
    built once and kept while ``owner``'s weights and ``key`` stay the same.

    ``owner`` is the fitted module the estimator keeps (``module_``, ``network_``); the
    cache holds it weakly and lives outside the estimator, so nothing is pickled with a
    model. A ``fit``, ``partial_fit`` or ``set_network`` that changes the weights makes
    the next call rebuild the engine. ``key`` tells apart several engines of one owner
    (e.g. the logits and the embedding of one network).
    """
    if engine == "eager":  # the module itself: nothing to build, nothing to keep (it would keep owner alive)
        return make_engine(owner if build is None else build(), engine, example)
    slots = _CACHE.setdefault(owner, {})
    found = slots.get((engine, key))
    if found is None or not _unchanged(*found[:2]):
        entries = _tensors(owner)
        versions = [t._version for _, _, t in entries]
        found = slots[(engine, key)] = (entries, versions, make_engine(owner if build is None else build(), engine,
                                                                       example))
    return found[2]
