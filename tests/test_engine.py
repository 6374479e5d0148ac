"""Inference engines (skfg/_engine.py): BatchNorm folding, parity of every engine with the
eager network on real images, rebuilding after training, nothing pickled."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

import skfg._engine
import skfg.localization
from skfg import (CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier, ObjectCropper,
                  SoftmaxClassifier)
from skfg._engine import fold_batchnorm, make_engine, resolve_engine
from skfg.backbones import build_backbone
from skfg.datasets import load_image_folder

HAS_ORT = skfg._engine.onnxruntime_available()


@pytest.fixture(scope="module")
def cars(shared_dataset):
    """Twelve real photographs of 3 classes of stanford_cars_a (its train split)."""
    X, y = load_image_folder(shared_dataset("stanford_cars_a") / "train")
    keep = np.concatenate([np.flatnonzero(y == c)[:4] for c in np.unique(y)[:3]])
    return X[keep], y[keep]


def _randomise_batchnorm(module, seed=0):
    """Give every BatchNorm non-trivial running statistics and affine weights."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return module


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v3_small", "resnet18"])
def test_a_folded_network_equals_the_unfolded_one(backbone):
    net = _randomise_batchnorm(build_backbone(backbone, weights=None)).eval()
    folded = fold_batchnorm(net)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # every one folded
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        for (name, a), (_, b) in zip(net.forward_stages(x), folded.forward_stages(x)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())), name
    # the original is untouched: still its BatchNorms, still trainable
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == n_bn
    assert all(p.requires_grad for p in net.parameters())


def test_a_batchnorm_that_does_not_follow_a_convolution_alone_is_kept():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    net = _randomise_batchnorm(net).eval()
    folded = fold_batchnorm(net)
    assert isinstance(folded[2], nn.BatchNorm2d) and isinstance(folded[4], nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(net(x), folded(x), atol=1e-5)


def test_engine_names_are_checked(monkeypatch):
    assert resolve_engine("auto") == ("auto" if HAS_ORT else "fused")
    assert resolve_engine("auto", "cuda:0") == "fused"  # onnxruntime runs on the CPU only
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("tensorrt")
    monkeypatch.setattr(skfg._engine, "onnxruntime_available", lambda: False)
    assert resolve_engine("auto") == "fused"  # without the [onnx] extra
    with pytest.raises(ImportError, match=r"pip install onnx onnxruntime \(skfg.s \[onnx\] extra\)"):
        resolve_engine("onnxruntime")
    with pytest.raises(ImportError, match=r"pip install onnx onnxruntime \(skfg.s \[onnx\] extra\)"):
        CNNFeatureExtractor(engine="onnxruntime").fit()


ENGINES = ["fused", "onnxruntime"] if HAS_ORT else ["fused"]


@pytest.mark.parametrize("engine", ENGINES)
def test_extractor_engines_equal_eager_on_real_images(cars, engine):
    X, _ = cars
    eager = CNNFeatureExtractor(layers=["stage4", "head"], engine="eager", cache=False).fit().transform(X)
    other = CNNFeatureExtractor(layers=["stage4", "head"], engine=engine, cache=False).fit().transform(X)
    np.testing.assert_allclose(other, eager, atol=1e-4)


@pytest.mark.parametrize("make", [
    lambda ext: SoftmaxClassifier(extractor=ext, trainable_blocks=1, max_epochs=1, head_epochs=0, random_state=0),
    lambda ext: ImpostorClassifier(extractor=ext, trainable_blocks=1, embedding_dim=16, max_epochs=1, random_state=0),
    lambda ext: ImprintedClassifier(extractor=ext, trainable_blocks=1, max_epochs=1, random_state=0),
])
def test_classifier_engines_equal_eager_on_real_images(cars, make):
    X, y = cars
    clf = make(CNNFeatureExtractor(image_size=96, engine="eager", cache=False)).fit(X, y)
    eager = clf.predict_proba(X)
    for engine in ENGINES:
        clf.extractor.set_params(engine=engine)
        np.testing.assert_allclose(clf.predict_proba(X), eager, atol=1e-4)
    if isinstance(clf, ImprintedClassifier):  # the embedding has its own engine
        clf.extractor.set_params(engine="eager")
        emb = clf.transform(X)
        clf.extractor.set_params(engine="fused")
        np.testing.assert_allclose(clf.transform(X), emb, atol=1e-4)


def test_the_early_exit_stage_path_on_the_fused_network_equals_eager(cars):
    X, y = cars
    ext = CNNFeatureExtractor(layers=["stage4", "stage5", "head"], image_size=96, engine="eager", cache=False)
    clf = EarlyExitClassifier(extractor=ext, alpha=0.5, random_state=0).fit(X, y)
    eager = clf.decision_function(X), clf.predict(X, return_exit=True)[1]
    clf.extractor_.set_params(engine="fused")
    fused_run = clf.extractor_.inference_engine("fused").module
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused_run.modules())
    np.testing.assert_allclose(clf.decision_function(X), eager[0], atol=1e-4)
    np.testing.assert_array_equal(clf.predict(X, return_exit=True)[1], eager[1])
    # the stages from one exit to the next ran as one frozen graph: one per exit reached
    runner = clf.extractor_.inference_engine("fused").stage_runner()
    assert runner.stages == ["stage4", "stage5", "head"]
    assert runner.segments["stage4"][0] == "stem" and runner.segments["head"][0] == "stage6"
    assert sum(runner.segments.values(), []) == runner.trunk.stages
    assert {name for name, _ in runner._engines} >= {"stage4"}
    assert all(isinstance(e.graph, torch.jit.ScriptModule) for e in runner._engines.values())


def test_the_cropper_runs_a_folded_student_with_the_eager_maps(cars, monkeypatch):
    X, _ = cars
    cropper = ObjectCropper(teacher=CNNFeatureExtractor(image_size=96), max_epochs=1, random_state=0).fit(X)
    fused = cropper.predict_heatmaps(X)
    monkeypatch.setattr(skfg.localization, "cached_engine", lambda owner, engine, example, key=(): make_engine(
        owner, "eager", example))
    np.testing.assert_allclose(fused, cropper.predict_heatmaps(X), atol=1e-4)


def test_training_after_a_prediction_trains_the_network_and_rebuilds_the_engine(cars):
    X, y = cars
    ext = CNNFeatureExtractor(image_size=96, cache=False)
    clf = SoftmaxClassifier(extractor=ext, trainable_blocks=1, max_epochs=1, head_epochs=0, warm_start=True,
                            random_state=0).fit(X, y)
    first = clf.predict_proba(X)  # builds the fused engine
    assert any(isinstance(m, nn.BatchNorm2d) for m in clf.module_.modules())  # the trained module is not folded
    clf.fit(X, y)  # warm start: trains on from the same weights
    second = clf.predict_proba(X)
    assert not np.allclose(first, second)
    ext.set_params(engine="eager")
    np.testing.assert_allclose(clf.predict_proba(X), second, atol=1e-4)


def test_imprinting_in_place_rebuilds_the_engine(cars):
    X, y = cars
    clf = ImprintedClassifier(extractor=CNNFeatureExtractor(image_size=96, cache=False), trainable_blocks=1,
                              max_epochs=1, random_state=0).fit(X[y != y[-1]], y[y != y[-1]])
    clf.predict_proba(X)
    clf.imprint(X[y == y[-1]], y[y == y[-1]])  # new head rows, same module_
    fused = clf.predict_proba(X)
    clf.extractor.set_params(engine="eager")
    np.testing.assert_allclose(fused, clf.predict_proba(X), atol=1e-4)
    assert fused.shape[1] == 3


def test_a_pickled_model_carries_no_engine_and_loads_without_onnxruntime(cars, monkeypatch):
    X, y = cars
    engine = "onnxruntime" if HAS_ORT else "fused"
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=96, engine=engine, cache=False),
                            trainable_blocks=1, max_epochs=1, head_epochs=0, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    blob = pickle.dumps(clf)
    assert b"onnxruntime.capi" not in blob and b"_engine" not in blob
    assert len(blob) < len(pickle.dumps(clf.module_.state_dict())) + 200_000  # no second copy of the network
    monkeypatch.setattr(skfg._engine, "onnxruntime_available", lambda: False)
    loaded = pickle.loads(blob)
    loaded.extractor.set_params(engine="auto")  # what a machine without the [onnx] extra runs
    np.testing.assert_allclose(loaded.predict_proba(X), proba, atol=1e-4)


def test_the_engine_cache_does_not_keep_a_model_alive(cars):
    import gc
    import weakref

    X, _ = cars
    for engine in ("eager", "fused", *(["onnxruntime"] if HAS_ORT else [])):
        ext = CNNFeatureExtractor(image_size=64, cache=False, engine=engine).fit()
        ext.transform(X[:2])
        network = weakref.ref(ext.network_)
        del ext
        gc.collect()
        assert network() is None, engine


def test_the_fused_engine_runs_a_frozen_graph_equal_to_the_folded_module():
    net = _randomise_batchnorm(build_backbone("efficientnet_lite0", weights=None)).eval()
    example = torch.zeros(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    engine = make_engine(net, "fused", example)
    assert engine.name == "fused" and isinstance(engine.graph, torch.jit.ScriptModule)
    with torch.inference_mode():
        for n in (1, 4, 7):  # the batch axis is not specialised to the example's
            x = torch.randn(n, 3, 64, 64).contiguous(memory_format=torch.channels_last)
            np.testing.assert_allclose(engine(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-4)
        # another input size (the graph's padding is fixed for 64 px): the folded module runs it
        x = torch.randn(2, 3, 80, 80)
        np.testing.assert_allclose(engine(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-4)


class _BatchDependent(nn.Module):
    """Python control flow on the batch size: a trace would bake in the example's branch."""

    def forward(self, x):
        return x * 2 if x.shape[0] == 2 else x - 1


def test_the_fused_engine_keeps_the_module_where_a_graph_would_be_wrong_or_skip_hooks():
    example = torch.zeros(1, 3, 8, 8)
    engine = make_engine(nn.Sequential(nn.Conv2d(3, 3, 1), _BatchDependent()), "fused", example)
    assert engine.graph is None  # traced on a batch of 2, checked on a batch of 3: rejected
    x = torch.randn(3, 3, 8, 8)
    np.testing.assert_allclose(engine(x).numpy(), engine.module(x).numpy())
    calls = []
    hooked = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    hooked[1].register_forward_hook(lambda m, inp, out: calls.append(out.shape[0]))
    engine = make_engine(hooked, "fused", example)
    assert engine.graph is None  # a graph would run no hook
    engine(torch.randn(5, 3, 8, 8))
    assert calls[-1] == 5


def test_folding_never_shows_a_users_hooks_the_tracers_proxies():
    from torch.nn.modules.module import register_module_forward_pre_hook

    net = _randomise_batchnorm(build_backbone("mobilenet_v3_small", weights=None)).eval()
    seen, seen_global = [], []
    net.stages["stem"].register_forward_pre_hook(lambda m, inp: seen.append(type(inp[0])))
    handle = register_module_forward_pre_hook(lambda m, inp: seen_global.append(type(inp[0])))
    try:
        folded = fold_batchnorm(net)
    finally:
        handle.remove()
    assert set(seen) <= {torch.Tensor} and set(seen_global) <= {torch.Tensor}
    seen.clear()
    with torch.inference_mode():
        folded.stages["stem"](torch.randn(1, 3, 32, 32))
    assert seen == [torch.Tensor]  # the copy keeps the user's hooks, which see real tensors


@pytest.mark.parametrize("size", [(64, 64), (65, 63), (97, 96)])
def test_a_same_convolution_made_static_equals_the_dynamic_one(size):
    from skfg.backbones._efficientnet_lite import SameConv2d

    torch.manual_seed(0)
    for kernel, stride in [(3, 2), (5, 2), (3, 1), (1, 1)]:
        conv = SameConv2d(4, 6, kernel, stride=stride, bias=True)
        x = torch.randn(2, 4, *size)
        static = conv.static_for(size)
        assert not isinstance(static, SameConv2d)
        assert static(x).shape == conv(x).shape
        torch.testing.assert_close(static(x), conv(x))
        assert any(p is conv.weight for p in static.parameters())  # the weights are shared, not copied


def test_static_shapes_replaces_only_modules_that_offer_it():
    net = build_backbone("efficientnet_lite0", weights=None).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        expected = net(x)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    static = skfg._engine.static_shapes(net, x)
    assert static is net and not any(callable(getattr(m, "static_for", None)) for m in net.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == n_conv
    with torch.inference_mode():
        torch.testing.assert_close(net(x), expected)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert skfg._engine.static_shapes(plain, x)[0] is plain[0]


@pytest.mark.skipif(not HAS_ORT, reason="needs the [onnx] extra")
def test_the_default_network_exports_by_the_fast_exporter(monkeypatch):
    """EfficientNet-Lite0 goes through the TorchScript exporter (about a second), never the
    torch.export fallback (several seconds)."""
    import io

    calls, export = [], torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(k["dynamo"]) or export(*a, **k))
    ext = CNNFeatureExtractor(image_size=64, cache=False).fit()
    skfg._engine.export_graph(fold_batchnorm(ext.pooled_trunk_), ext.preprocessing_.example_batch("cpu", 2),
                              io.BytesIO())
    assert calls == [False]


@pytest.mark.skipif(not HAS_ORT, reason="needs the [onnx] extra")
def test_auto_runs_onnxruntime_and_falls_back_to_fused_where_the_export_fails(monkeypatch):
    ext = CNNFeatureExtractor(image_size=64, cache=False).fit()
    assert ext.inference_engine().name == "onnxruntime"

    def no_export(*args, **kwargs):
        raise RuntimeError("cannot export")

    monkeypatch.setattr(skfg._engine, "export_graph", no_export)
    ext = CNNFeatureExtractor(image_size=64, cache=False).fit()
    assert ext.inference_engine().name == "fused"
    with pytest.raises(RuntimeError, match="cannot export"):  # asked for by name: the error, not a fallback
        ext.inference_engine("onnxruntime")


@pytest.mark.skipif(not HAS_ORT, reason="needs the [onnx] extra")
def test_torch_runs_on_one_thread_while_onnxruntime_serves_and_gets_its_threads_back(cars, monkeypatch):
    X, _ = cars
    seen = []
    original = skfg._engine._OnnxRuntime.__call__
    monkeypatch.setattr(skfg._engine._OnnxRuntime, "__call__",
                        lambda self, x: seen.append(torch.get_num_threads()) or original(self, x))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # (so that one thread is a change, on any machine)
    try:
        _serve_and_check(X, seen)
    finally:
        torch.set_num_threads(before)


def _serve_and_check(X, seen):
    before = torch.get_num_threads()
    ext = CNNFeatureExtractor(image_size=64, cache=False, engine="onnxruntime", batch_size=4).fit()
    ext.transform(X)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    seen.clear()
    with pytest.raises(Exception):  # an error inside the loop also gives the threads back
        ext.transform(np.asarray([str(X[0]), "/no/such/image.jpg"], dtype=object))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_the_numpy_batches_equal_the_torch_batches(cars, resize):
    from skfg.images import ImageSource, Preprocessing

    X, _ = cars
    prep = Preprocessing(image_size=72, resize=resize, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         batch_size=5)
    source, idx = ImageSource(X), np.array([3, 0, 7, 11, 2, 5, 9])
    torch_batches = list(prep.batches(source, "cpu", idx))
    numpy_batches = list(prep.numpy_batches(source, idx))
    assert [list(i) for i, _ in numpy_batches] == [list(i) for i, _ in torch_batches] == [[3, 0, 7, 11, 2], [5, 9]]
    for (_, a), (_, b) in zip(torch_batches, numpy_batches):
        assert b.dtype == np.float32 and b.flags["C_CONTIGUOUS"]
        np.testing.assert_allclose(b, a.numpy(), rtol=0, atol=1e-6)
