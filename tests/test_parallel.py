"""Scaling out: the chunked feature store, resumable extraction, and Dask execution."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.images import ImageDecodeError
from skfg.parallel import ParallelPostFit, extract_features
from skfg.store import FeatureStore

da = pytest.importorskip("dask.array")


# ----------------------------------------------------------------- the store
def test_the_store_writes_whole_chunks_and_reads_them_back(tmp_path):
    store = FeatureStore.create(tmp_path / "s", n_rows=5, n_features=3, chunk_size=2, fingerprint="f")
    assert store.n_chunks == 3 and store.missing_chunks() == [0, 1, 2]
    rows = np.arange(15, dtype=np.float32).reshape(5, 3)
    store.write_chunk(2, rows[4:])
    store.write_chunk(0, rows[:2])
    assert store.missing_chunks() == [1]
    with pytest.raises(ValueError, match="lacks 1 of 3 chunks"):
        store.to_numpy()
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        store.write_chunk(1, rows[:1])
    store.write_chunk(1, rows[2:4])
    np.testing.assert_array_equal(FeatureStore(tmp_path / "s").to_numpy(), rows)
    np.testing.assert_array_equal(store.to_dask().compute(), rows)
    assert store.to_dask().chunks[0] == (2, 2, 1)
    assert not list((tmp_path / "s").glob("*.tmp"))  # atomic writes leave no partial files


def test_the_store_refuses_another_extraction_and_names_the_difference(tmp_path):
    FeatureStore.create(tmp_path, n_rows=5, n_features=3, chunk_size=2, fingerprint="f")
    with pytest.raises(ValueError, match="fingerprint 'f' \\(asked 'g'\\)"):
        FeatureStore.create(tmp_path, n_rows=5, n_features=3, chunk_size=2, fingerprint="g")
    with pytest.raises(ValueError, match="chunk_size 2 \\(asked 4\\)"):
        FeatureStore.create(tmp_path, n_rows=5, n_features=3, chunk_size=4, fingerprint="f")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match="damaged"):
        FeatureStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        FeatureStore(tmp_path / "elsewhere")


# ----------------------------------------------------- extraction, in process
class _Counting(BaseEstimator):
    """A fitted transformer that counts the images it transforms and can fail on a call."""

    def __init__(self, inner, fail_on_call=None):
        self.inner, self.fail_on_call, self.calls, self.images = inner, fail_on_call, 0, 0

    def fit(self, X=None, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def __getstate__(self):  # what the store's fingerprint sees: the wrapped extractor only
        return {"inner": self.inner}

    def transform(self, X):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # the run is killed here
        self.images += len(X)
        return self.inner.transform(X)


@pytest.fixture(scope="module")
def cars(shared_dataset):
    X, y = load_image_folder(shared_dataset("stanford_cars_a") / "train")
    idx = np.random.RandomState(0).permutation(len(y))[:40]
    return X[idx], y[idx]


@pytest.fixture(scope="module")
def extractor():
    return CNNFeatureExtractor(image_size=96).fit()


def test_extraction_resumes_without_recomputing_finished_chunks(cars, extractor, tmp_path):
    X, _ = cars
    expected = extractor.transform(X)
    killed = _Counting(extractor, fail_on_call=4)  # the probe, two chunks, then killed
    with pytest.raises(KeyboardInterrupt):
        extract_features(killed, X, tmp_path, chunk_size=16)
    assert FeatureStore(tmp_path).missing_chunks() == [2]
    resumed = _Counting(extractor)
    store = extract_features(resumed, X, tmp_path, chunk_size=16)
    assert resumed.images == 1 + 8  # the probe and the one missing chunk only
    np.testing.assert_allclose(store.to_numpy(), expected, atol=1e-5)


def test_every_bad_image_is_reported_by_path_and_the_rest_kept(cars, extractor, tmp_path):
    X, _ = cars
    X = X.copy()
    for i in (5, 30):  # in two different chunks
        bad = tmp_path / f"broken{i}.jpg"
        bad.write_bytes(b"not a jpeg")
        X[i] = str(bad)
    with pytest.raises(ImageDecodeError) as err:
        extract_features(extractor, X, tmp_path / "store", chunk_size=16)
    message = str(err.value)
    assert "2 image(s)" in message and "broken5.jpg" in message and "broken30.jpg" in message
    assert FeatureStore(tmp_path / "store").missing_chunks() == [0, 1]  # chunk 2 finished, kept


def test_a_store_of_other_inputs_is_refused(cars, extractor, tmp_path):
    X, _ = cars
    extract_features(extractor, X[:20], tmp_path, chunk_size=8)
    with pytest.raises(ValueError, match="another feature store"):
        extract_features(extractor, X[:20][::-1], tmp_path, chunk_size=8)


# ----------------------------------------------------------- ParallelPostFit
def test_parallel_post_fit_applies_blockwise_and_matches_in_memory():
    rng = np.random.RandomState(0)
    X = rng.randn(60, 4)
    y = np.where(X[:, 0] > 0, "b", "a")
    model = ParallelPostFit(LogisticRegression()).fit(da.from_array(X, chunks=20), y)
    dX = da.from_array(X, chunks=(25, 2))  # the second axis is merged for the estimator
    np.testing.assert_array_equal(model.predict(dX).compute(), model.estimator_.predict(X))
    np.testing.assert_allclose(model.predict_proba(dX).compute(), model.estimator_.predict_proba(X))
    np.testing.assert_allclose(model.decision_function(dX).compute(), model.estimator_.decision_function(X))
    np.testing.assert_array_equal(model.predict(X), model.estimator_.predict(X))  # in memory: direct
    assert model.predict(dX).chunks == ((25, 25, 10),)
    scaler = ParallelPostFit(StandardScaler()).fit(X)  # float64 out, width from the output itself
    out = scaler.transform(dX)
    assert out.dtype == np.float64 and out.chunks == ((25, 25, 10), (4,))
    np.testing.assert_allclose(out.compute(), scaler.estimator_.transform(X))


# -------------------------------------------------------- on a LocalCluster
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_a_local_cluster_extracts_and_predicts_as_in_process(cars, extractor, client, tmp_path):
    X, y = cars
    store = extract_features(extractor, X, tmp_path, chunk_size=12, client=client)
    np.testing.assert_allclose(store.to_numpy(), extractor.transform(X), atol=1e-5)
    pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=96)), ("clf", SoftmaxClassifier(random_state=0))])
    model = ParallelPostFit(pipe).fit(X, y)
    paths = da.from_array(np.asarray(X, dtype=object), chunks=15)
    np.testing.assert_array_equal(model.predict(paths).compute(), model.estimator_.predict(X))
    features = ParallelPostFit(extractor).fit(X[:2]).transform(paths).compute()
    np.testing.assert_allclose(features, extractor.transform(X), atol=1e-5)


def test_a_bad_image_on_a_worker_is_named(cars, extractor, client, tmp_path):
    X, _ = cars
    X = X[:24].copy()
    bad = tmp_path / "broken.jpg"
    Image.new("RGB", (4, 4)).save(bad)
    bad.write_bytes(bad.read_bytes()[:20])  # truncated
    X[13] = str(bad)
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        extract_features(extractor, X, tmp_path / "store", chunk_size=12, client=client)
    assert FeatureStore(tmp_path / "store").missing_chunks() == [1]
    model = ParallelPostFit(extractor).fit(X[:2])
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        model.transform(da.from_array(np.asarray(X, dtype=object), chunks=12)).compute()
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["n_rows"] == 24
