import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from skfg import clear_feature_cache

# skfg's cache folder (ONNX copies of models, skfg.serving.cache_dir): never the user's own
os.environ["SKFG_CACHE_DIR"] = tempfile.mkdtemp(prefix="skfg-test-cache-")

DATA_ROOT = Path(os.environ.get("SKFG_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def dataset_root(name):
    """Root of a shared data set; skip when absent, fail when SKFG_REQUIRE_DATA=1."""
    root = DATA_ROOT / name
    if not root.is_dir():
        msg = f"data set {name!r} not found at {root} (set SKFG_DATA_DIR)"
        if os.environ.get("SKFG_REQUIRE_DATA") == "1":
            pytest.fail(msg + " and SKFG_REQUIRE_DATA=1")
        pytest.skip(msg)
    return root


def pytest_configure(config):
    """Under pytest-xdist (the README's ``-n auto``), each worker gets its share of the cores.

    Two workers that each run torch and faiss on every core of a 2-core machine are slower
    than one; one thread each keeps both cores busy without oversubscribing them.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import faiss
        import torch

        threads = max(1, torch.get_num_threads() // workers)
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_dataset():
    """``shared_dataset(name)`` -> root of a shared data set (see :func:`dataset_root`)."""
    return dataset_root


@pytest.fixture(autouse=True)
def _fresh_feature_cache():
    clear_feature_cache()
    yield
    clear_feature_cache()


@pytest.fixture
def rgb_images():
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(4, 40, 56, 3), dtype=np.uint8)


@pytest.fixture
def stem_inputs():
    """Number of images entering the stem convolution of any EfficientNet-Lite0."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    from skfg.backbones._efficientnet_lite import SameConv2d

    seen = []

    def hook(module, inputs):
        if isinstance(module, SameConv2d) and module.in_channels == 3:
            seen.append(inputs[0].shape[0])

    handle = register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


@pytest.fixture
def features():
    """90 samples, 10 features, 3 string classes ("cat", "dog", "owl") that a linear model separates."""
    rng = np.random.RandomState(1)
    y = np.array(["cat", "dog", "owl"] * 30)
    X = rng.randn(len(y), 10).astype(np.float32) + 2.0 * (y[:, None] == np.array(["cat", "dog", "owl"] * 4)[:10])
    return X, y


@pytest.fixture
def easy_blobs():
    """Three well-separated Gaussian classes in 6-D, float32 (60 samples)."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 20)
    return (4 * np.eye(6)[y] + rng.randn(60, 6)).astype(np.float32), y


@pytest.fixture
def pngs(tmp_path):
    """Six 40 px PNG files of two synthetic classes in ``tmp_path/<label>/`` and their labels."""
    from PIL import Image

    from skfg.datasets import make_fine_grained

    X, y = make_fine_grained(n_classes=2, n_per_class=3, image_size=40, random_state=0)
    paths = []
    for i, (img, label) in enumerate(zip(X, y)):
        (tmp_path / str(label)).mkdir(exist_ok=True)
        paths.append(str(tmp_path / str(label) / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    return np.array(paths, dtype=object), y
