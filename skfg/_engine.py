"""Inference engines: how a fitted network runs at ``predict`` / ``transform`` time.

Training always runs the plain torch module. At inference, an estimator hands its network
(a module taking the normalised, channels-last batches of :class:`skfg.images.Preprocessing`)
to :func:`make_engine`, which returns a callable with the same outputs:

- ``"eager"``: the module itself, under ``torch.inference_mode`` (the reference);
- ``"fused"``: a copy with every BatchNorm folded into the convolution before it
  (:func:`fold_batchnorm`; BatchNorm and the activations were ~40 % of CPU time), traced
  and frozen by TorchScript for the input size it serves (:class:`_Fused`), same outputs
  within float32 rounding;
- ``"onnxruntime"``: the module exported to ONNX in memory and run by onnxruntime (the
  ``[onnx]`` extra), the fastest at every batch size on this 2-core CPU
  (``benchmarks/results/engines.md``); the export takes about half a second once per
  fitted model and process;
- ``"auto"``: ``"onnxruntime"`` where the extra is installed, the model is on the CPU
  and its network exports; else ``"fused"``.

Engines are built lazily at the first prediction and kept outside the estimator
(:func:`cached_engine`), so a pickled model never carries one.
"""

import copy
import io
import operator
import warnings
import weakref
from contextlib import contextmanager

import numpy as np
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


def _has_hooks(module):
    """Whether a forward hook would run in ``module`` (a traced graph runs none)."""
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _same(a, b, tol=1e-4):
    """Whether two outputs (tensors, or tuples / lists / dicts of them) agree within ``tol``."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(_same, a, b, [tol] * len(a)))
    return a == b


class _Fused(_Torch):
    """The folded module (``module``, kept for callers that run its parts) and, for inputs
    of the example's shape, the same module traced and frozen by TorchScript on
    :func:`static_shapes`: constants folded, no Python between the operators (the folded
    module alone was 1.10-1.13x eager, the engine with the graph about 1.5x:
    ``benchmarks/results/engines.md``).

    The graph is used only where it is safe: no forward hooks (a graph runs none), traced
    on a batch of 2 (so the batch axis is not specialised) and checked against the folded
    module on a batch of 3; where tracing fails or the check disagrees, the folded module
    runs alone. Other input shapes always run the folded module."""

    def __init__(self, module, example):
        super().__init__(module, "fused")
        self.shape, self.graph = tuple(example.shape[1:]), None
        if _has_hooks(self.module):
            return
        fmt = torch.channels_last if example.dim() == 4 and example.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format
        two = example.expand(2, *self.shape).contiguous(memory_format=fmt)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer messages
                static = static_shapes(copy.deepcopy(self.module), two)
                graph = torch.jit.freeze(torch.jit.trace(static, two, check_trace=False, strict=False).eval())
                check = torch.randn(3, *self.shape, device=example.device).contiguous(memory_format=fmt)
                with torch.inference_mode():
                    for _ in range(2):  # (the profiling executor optimises after its first runs)
                        out = graph(check)
                    if _same(out, self.module(check)):
                        self.graph = graph
        except Exception:  # noqa: BLE001 - a module TorchScript cannot trace runs folded
            self.graph = None

    def __call__(self, x):
        with torch.inference_mode():
            if self.graph is not None and tuple(x.shape[1:]) == self.shape:
                return self.graph(x)
            return self.module(x)

    def stage_runner(self):
        """The folded :class:`~skfg._network.PooledTrunk` run stage by stage with each
        stage a frozen graph (:class:`_FusedStages`): the early exits' path. Built once."""
        if getattr(self, "_stages", None) is None:
            self._stages = _FusedStages(self.module)
        return self._stages


class _FusedStages:
    """A folded :class:`~skfg._network.PooledTrunk` from exit to exit, as the early exits run
    it (``stage(name, x)``, ``pool(maps)``, ``stages``, ``layers``).

    Its ``stages`` are the trunk's exit layers: ``stage(name, x)`` runs every stage after
    the previous exit up to ``name`` as one :class:`_Fused` engine (one frozen graph),
    built for the input shape it first sees (the batch axis stays free). The exits only
    read the segments' outputs, so this equals running the trunk stage by stage, with
    one graph call per exit instead of one per stage.
    """

    def __init__(self, trunk):
        self.trunk, self.layers = trunk.eval(), trunk.layers
        ends = [name for name in trunk.stages if name in trunk.layers]  # (the last stage is an exit layer)
        starts = [0] + [trunk.stages.index(name) + 1 for name in ends[:-1]]
        self.stages = ends
        self.segments = {end: trunk.stages[a: trunk.stages.index(end) + 1] for end, a in zip(ends, starts)}
        self._engines = {}

    def eval(self):
        return self

    def stage(self, name, x):
        key = (name, tuple(x.shape[1:]))
        engine = self._engines.get(key)
        if engine is None:
            stages = self.trunk.trunk.stages
            segment = nn.Sequential(*(stages[n] for n in self.segments[name]))
            engine = self._engines[key] = _Fused(segment, x[:1])
        return engine(x)

    def pool(self, maps):
        return self.trunk.pool(maps)


def static_shapes(module, example):
    """``module`` (changed in place and returned) for inputs shaped like ``example`` only:
    each submodule with a ``static_for(input_size)`` method (e.g. a convolution with
    TensorFlow "SAME" padding, which computes its padding from each input's size) is
    replaced by what that method returns for the spatial size it sees on ``example``.

    What an exporter traces then holds no shape arithmetic. In a one-off check (not a
    results file) the TorchScript exporter's graph of EfficientNet-Lite ran 1.4-2.6x
    slower in onnxruntime with it, and as fast as torch.export's without it, while
    exporting in under a second where torch.export took several.
    """
    sizes, hooks = {}, []

    def record(m, args):  # (a pre-hook that returns something replaces the inputs)
        sizes.setdefault(m, tuple(args[0].shape[2:]))

    for m in module.modules():
        if callable(getattr(m, "static_for", None)):
            hooks.append(m.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if child in sizes:
                setattr(parent, name, child.static_for(sizes[child]))
    return module


def export_graph(module, example, f, input_name="x", output_names=("y",), opset_version=18):
    """Write ``module`` (in eval mode) as an ONNX graph with a dynamic batch axis to ``f``
    (a path or a binary file object): the TorchScript exporter on
    :func:`static_shapes` (``module`` is changed in place: pass a copy), or, where that
    fails (a torch without it, or a module it cannot trace), torch.export. ``example`` is
    an input batch of at least 2 (the batch axis must not be specialised)."""
    output_names = list(output_names)
    dynamic = {name: {0: "batch"} for name in (input_name, *output_names)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecations and messages
        start = f.tell() if hasattr(f, "tell") else None
        try:
            torch.onnx.export(static_shapes(module, example), (example,), f, input_names=[input_name],
                              output_names=output_names, dynamic_axes=dynamic, opset_version=opset_version,
                              dynamo=False)
            return
        except Exception:  # noqa: BLE001 - the second exporter decides
            if start is not None:
                f.seek(start)
                f.truncate()
        torch.onnx.export(module, (example,), f, input_names=[input_name], output_names=output_names,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset_version,
                          dynamo=True, external_data=False, verbose=False)


class _OnnxRuntime:
    """The module exported to ONNX in memory (:func:`export_graph`) and run by onnxruntime
    on the CPU; outputs come back as torch tensors.

    Two sessions of the one graph, by batch size. Batches of several images run on a
    session whose threads sleep between runs, so that busy-waiting threads cannot take the
    cores from the decoding and the torch code around each call. A single image runs on a
    second session, made at its first use, whose threads busy-wait as onnxruntime's
    default does: its run is many short parallel operations, each of which otherwise waits
    for sleeping threads to wake. An early one-off check found spinning slower at batches
    of 1 and 4; a later side-by-side check of both settings (9 interleaved rounds, one file
    at a time through a Pipeline) found it faster in every round for single images and no
    different at batch 4, hence the split.
    """

    name = "onnxruntime"

    def __init__(self, module, example):
        buf = io.BytesIO()
        example = example.cpu().float().expand(2, *example.shape[1:]).contiguous()  # a batch of 2: batch is dynamic
        export_graph(module.cpu().eval(), example, buf)  # (a copy: make_engine folds into a fresh one)
        self._graph = buf.getvalue()
        self.session = self._session(spinning=False)
        self._single = None

    def _session(self, spinning):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        return ort.InferenceSession(self._graph, options, providers=["CPUExecutionProvider"])

    takes_numpy = True  # callers may pass float32 numpy batches (Preprocessing.numpy_batches)

    def __call__(self, x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            # the layout change (channels-last -> NCHW) in numpy: a torch copy wakes torch's
            # thread pool, whose spinning threads then slow onnxruntime's (+0.7 ms at batch 1)
            x = x.numpy() if x.dtype == torch.float32 else x.float().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        session = self.session
        if len(x) == 1:
            if self._single is None:
                self._single = self._session(spinning=True)
            session = self._single
        return torch.from_numpy(session.run(None, {"x": x})[0])


@contextmanager
def serving(run):
    """Context for a loop that feeds the engine ``run``: torch on one thread while an
    onnxruntime engine serves.

    The torch code around each call (normalising the batch) is small, but on more than
    one thread it wakes torch's OpenMP workers, which then busy-wait on the cores that
    onnxruntime's threads need: in a one-off check on 2 cores ``predict_proba`` from files
    in batches of 4 ran 1.2x as fast with torch on one thread (no change at 1 and 32;
    ``benchmarks/engines.py`` measures the engine). Other engines run torch itself and
    keep its threads."""
    if getattr(run, "name", None) != "onnxruntime":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)



def engine_batches(run, preprocessing, source, device, indices=None, n_jobs=None):
    """The input batches of ``preprocessing`` for the engine ``run``: numpy arrays made
    without torch for an engine that takes them (onnxruntime, on the CPU), else torch
    batches (:meth:`~skfg.images.Preprocessing.batches`)."""
    if getattr(run, "takes_numpy", False) and str(device) == "cpu":
        return preprocessing.numpy_batches(source, indices)
    return preprocessing.batches(source, device, indices, n_jobs=n_jobs)


def onnxruntime_available():
    """Whether onnx and onnxruntime import (the ``[onnx]`` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine, device="cpu"):
    """The engine ``engine`` names, checked: ``"auto"`` is ``"onnxruntime"`` when the
    ``[onnx]`` extra is installed and ``device`` is the CPU (``"auto"`` is kept: a network
    that does not export then runs ``"fused"``), else ``"fused"``; ``"onnxruntime"``
    needs the extra and the CPU."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}; got {engine!r}")
    if engine == "auto":
        return "auto" if str(device) == "cpu" and onnxruntime_available() else "fused"
    if engine == "onnxruntime":
        if str(device) != "cpu":
            raise ValueError(f"engine='onnxruntime' runs on the CPU; this model is on {device!r}: use 'fused'.")
        if not onnxruntime_available():
            raise ImportError("engine='onnxruntime' needs onnx and onnxruntime: pip install onnx onnxruntime (skfg's [onnx] extra) "
                              "(or use engine='fused').")
    return engine


def make_engine(module, engine, example):
    """A callable running ``module`` (in eval mode) as engine ``engine`` (resolved:
    ``"eager"``, ``"fused"``, ``"onnxruntime"``, or ``"auto"``: onnxruntime, falling back
    to fused where the export fails); ``example`` is an input batch (the export's shapes).
    The callable's ``name`` says which engine runs."""
    if engine == "eager":
        return _Torch(module, "eager")
    if engine == "fused":
        return _Fused(fold_batchnorm(module), example)
    if engine == "onnxruntime":
        return _OnnxRuntime(fold_batchnorm(module), example)
    if engine == "auto":
        try:
            return _OnnxRuntime(fold_batchnorm(module), example)
        except Exception:  # noqa: BLE001 - a network neither exporter handles still runs, fused
            return _Fused(fold_batchnorm(module), example)
    raise ValueError(f"not a resolved engine: {engine!r}")


_CACHE = weakref.WeakKeyDictionary()  # owner module -> {key: (_Signature, engine)}


class _Signature:
    """What an engine was built from: every parameter, buffer and submodule of a module,
    each with the dict that holds it (a module's own ``_parameters`` / ``_buffers`` /
    ``_modules``, never the module: the cache must not keep the module it is keyed by
    alive), and each tensor's version counter (torch bumps it at every in-place change)."""

    def __init__(self, module):
        entries = [(held, name, value) for m in module.modules()
                   for held in (m._parameters, m._buffers, m._modules) for name, value in held.items()
                   if value is not None]
        self.holders, self.names, self.values = (list(column) for column in zip(*entries)) if entries else ([],) * 3
        self.tensors = [v for v in self.values if isinstance(v, torch.Tensor)]
        self.versions = list(map(_VERSION, self.tensors))

    def unchanged(self):
        """Whether every entry is still in place (not replaced) and every tensor unchanged
        in place: C-level loops, ~0.05 ms per call for EfficientNet-Lite0."""
        return (all(map(operator.is_, map(dict.get, self.holders, self.names), self.values))
                and list(map(_VERSION, self.tensors)) == self.versions)


_VERSION = operator.attrgetter("_version")


def cached_engine(owner, engine, example, build=None, key=()):
    """The engine ``engine`` of the module ``build()`` returns (``owner`` itself by default),
    built once and kept while ``owner``'s weights and ``key`` stay the same.

    ``example`` is an input batch or a function that returns one (called only to build).
    ``owner`` is the fitted module the estimator keeps (``module_``, ``network_``); the
    cache holds it weakly and lives outside the estimator, so nothing is pickled with a
    model. A ``fit``, ``partial_fit`` or ``set_network`` that changes the weights makes
    the next call rebuild the engine. ``key`` tells apart several engines of one owner
    (e.g. the logits and the embedding of one network).
    """
    if engine == "eager":  # the module itself: nothing to build, nothing to keep (it would keep owner alive)
        return make_engine(owner if build is None else build(), engine, example() if callable(example) else example)
    slots = _CACHE.setdefault(owner, {})
    found = slots.get((engine, key))
    if found is None or not found[0].unchanged():
        signature = _Signature(owner)
        example = example() if callable(example) else example
        found = slots[(engine, key)] = (signature, make_engine(owner if build is None else build(), engine, example))
    return found[1]
