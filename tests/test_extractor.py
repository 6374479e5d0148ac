import io

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, clear_feature_cache
from skfg._network import PooledTrunk
from skfg.datasets import make_fine_grained


@pytest.fixture(scope="module")
def data():
    return make_fine_grained(n_classes=3, n_per_class=6, image_size=48, random_state=0)


def count_forwards(ext):
    """Images entering the stem, per call: counted on a torch engine (``engine="fused"``, whose
    copy keeps these hooks and, as the network has hooks, runs that copy rather than a
    TorchScript graph), as onnxruntime runs no torch module."""
    calls = []
    ext.network_.stages["stem"].register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape[0]))
    return calls


# Published channel widths of the stages (not computed by skfg, so a wrong stage split fails).
CHANNELS = {
    "efficientnet_lite0": {"stage1": 16, "stage6": 192, "head": 1280},
    "mobilenet_v3_small": {"stage1": 16, "stage5": 96, "head": 576},
    "resnet18": {"layer1": 64, "layer3": 256, "layer4": 512},
    "mobilenet_v2": {"stage3": 32, "stage7": 320, "head": 1280},
    "squeezenet1_1": {"stem": 64, "stage2": 256, "stage3": 512},
}


@pytest.mark.parametrize("backbone", sorted(CHANNELS))
def test_multi_layer_groups_match_stage_channels(backbone, data):
    X, _ = data
    weights = "imagenet" if backbone == "efficientnet_lite0" else None
    expected = CHANNELS[backbone]
    layers = list(expected)
    ext = CNNFeatureExtractor(backbone, weights=weights, layers=layers, image_size=48).fit()
    F = ext.transform(X)
    assert list(ext.feature_groups_) == layers
    widths = [s.stop - s.start for s in ext.feature_groups_.values()]
    assert widths == list(expected.values())
    assert F.shape == (len(X), sum(widths)) and F.dtype == np.float32
    names = ext.get_feature_names_out()
    assert names[0] == f"{layers[0]}_0" and names[-1] == f"{layers[-1]}_{widths[-1] - 1}"
    again = CNNFeatureExtractor(backbone, weights=weights, layers=layers, image_size=48).fit()
    assert again.get_feature_names_out().tolist() == names.tolist()  # stable across fits
    for name, cols in ext.feature_groups_.items():  # each group is L2-normalised on its own
        np.testing.assert_allclose(np.linalg.norm(F[:, cols], axis=1), 1.0, rtol=1e-5)


def test_image_size_too_small_for_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="image_size=16 is too small for backbone 'squeezenet1_1'"):
        CNNFeatureExtractor("squeezenet1_1", weights=None, image_size=16).fit()


def test_set_params_after_fit_never_serves_stale_features(data):
    X, _ = data
    ext = CNNFeatureExtractor(image_size=48).fit()
    ext.transform(X[:2])
    ext.set_params(pooling="gmp")
    fresh = CNNFeatureExtractor(image_size=48, pooling="gmp", cache=False).fit().transform(X)
    np.testing.assert_allclose(ext.transform(X), fresh, rtol=1e-5, atol=1e-6)


def test_pil_cache_key_sees_palette_and_orientation():
    from PIL import Image

    from skfg.images import ImageSource

    a = Image.new("P", (6, 4), 0)
    a.putpalette([255, 0, 0] * 256)
    b = a.copy()
    b.putpalette([0, 0, 255] * 256)
    c = Image.new("RGB", (6, 4), (9, 9, 9))
    d = c.copy()
    d.getexif()[0x0112] = 6
    keys = ImageSource([a, b, c, d])
    assert keys.cache_key(0) != keys.cache_key(1)
    assert keys.cache_key(2) != keys.cache_key(3)


def test_last_layer_default_and_pooling_options(data):
    X, _ = data
    ext = CNNFeatureExtractor(image_size=48).fit()
    assert ext.layers_ == ["head"] and ext.n_features_out_ == 1280
    gmp = CNNFeatureExtractor(image_size=48, pooling="gmp", normalize=False).fit().transform(X)
    k1 = CNNFeatureExtractor(image_size=48, pooling="kmax", k=1, normalize=False).fit().transform(X)
    np.testing.assert_allclose(gmp, k1, rtol=1e-5, atol=1e-6)


def test_unknown_layer_lists_valid_ones():
    with pytest.raises(ValueError, match="Valid layers for this backbone: stem, layer1"):
        CNNFeatureExtractor("resnet18", weights=None, layers=["layer9"]).fit()


def test_bad_parameters_raise_and_leave_no_fitted_state():
    ext = CNNFeatureExtractor(layers=["stage9"])
    with pytest.raises(ValueError):
        ext.fit()
    assert not hasattr(ext, "network_")
    with pytest.raises(ValueError, match="pooling"):
        CNNFeatureExtractor(pooling="avg").fit()
    with pytest.raises(NotFittedError):
        CNNFeatureExtractor().transform(np.zeros((1, 8, 8, 3), np.uint8))


def test_cache_skips_the_network_on_second_transform(data):
    X, _ = data
    ext = CNNFeatureExtractor(image_size=48, engine="fused").fit()
    calls = count_forwards(ext)
    F1 = ext.transform(X)
    assert sum(calls) == len(X)
    F2 = ext.transform(X)
    assert sum(calls) == len(X)  # nothing recomputed
    np.testing.assert_array_equal(F1, F2)
    ext.transform(np.concatenate([X[:2], X[:2][:, ::-1]]))  # 2 cached + 2 new images
    assert sum(calls) == len(X) + 2


def test_cache_distinguishes_settings(data):
    X, _ = data
    a = CNNFeatureExtractor(image_size=48).fit().transform(X)
    b = CNNFeatureExtractor(image_size=48, pooling="gmp").fit().transform(X)
    assert not np.allclose(a, b)


def test_cache_off_always_runs_the_network(data):
    X, _ = data
    ext = CNNFeatureExtractor(image_size=48, cache=False, engine="fused").fit()
    calls = count_forwards(ext)
    ext.transform(X)
    ext.transform(X)
    assert sum(calls) == 2 * len(X)


def test_disk_cache_survives_the_process_cache(tmp_path, data):
    X, _ = data
    ext = CNNFeatureExtractor(image_size=48, cache=str(tmp_path)).fit()
    F1 = ext.transform(X)
    clear_feature_cache()
    calls = count_forwards(ext)
    np.testing.assert_array_equal(ext.transform(X), F1)
    assert sum(calls) == 0
    assert len(list(tmp_path.rglob("*.npy"))) == len(X)


def test_grid_search_extracts_each_image_once(data, monkeypatch):
    X, y = data
    seen = []
    original = PooledTrunk.pooled

    def counting(self, x, start=None):
        seen.append(len(x))
        return original(self, x, start)

    monkeypatch.setattr(PooledTrunk, "pooled", counting)
    # (the eager engine runs the module's Python methods, which the patch counts)
    pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=48, engine="eager")), ("clf", LogisticRegression())])
    search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=3).fit(X, y)
    assert sum(seen) == len(X)
    assert search.best_estimator_.score(X, y) > 0.5


def test_clone_and_joblib_round_trip(tmp_path, data):
    X, _ = data
    ext = CNNFeatureExtractor(layers=["stage5", "head"], image_size=48, pooling="kmax", k=3)
    params = clone(ext).get_params()
    assert params == ext.get_params()
    ext.fit()
    F = ext.transform(X)
    path = tmp_path / "ext.joblib"
    joblib.dump(ext, path)
    clear_feature_cache()
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(X), F)
    assert loaded.feature_groups_ == ext.feature_groups_
    assert hasattr(ext, "network_")  # dumping does not strip the original


def test_gpu_fitted_pickle_loads_on_cpu(data):
    X, _ = data
    ext = CNNFeatureExtractor(image_size=48, cache=False).fit()
    F = ext.transform(X[:2])
    ext.device_ = "cuda"  # as if it had been fitted on a GPU
    buf = io.BytesIO()
    joblib.dump(ext, buf)
    buf.seek(0)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.warns(RuntimeWarning, match="loading it on the CPU"):
        loaded = joblib.load(buf)
    assert loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.transform(X[:2]), F)
