"""ONNX export: parity with the estimators on real images, and clear refusals."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.export import OnnxModel, export_onnx, onnx_input

SIZE = 64


@pytest.fixture(scope="module")
def cars(shared_dataset):
    """3 stanford_cars_a classes: 8 training and 4 held-out images each."""
    X, y = load_image_folder(shared_dataset("stanford_cars_a") / "train")
    keep = np.isin(y, np.unique(y)[:3])
    X, y = X[keep], y[keep]
    train = np.concatenate([np.flatnonzero(y == c)[:8] for c in np.unique(y)])
    test = np.concatenate([np.flatnonzero(y == c)[8:12] for c in np.unique(y)])
    return X[train], y[train], X[test]


def test_fine_tuned_softmax_matches_onnxruntime(cars, tmp_path):
    X, y, X_test = cars
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=SIZE), trainable_blocks=2, max_epochs=1,
                            head_epochs=1, random_state=0).fit(X, y)
    path = export_onnx(clf, tmp_path / "clf.onnx")
    onnx_model = OnnxModel(path, batch_size=5)  # batches of 5 and a last one of 2: the batch size is free
    assert onnx_model.output_names == ["logits", "probabilities"]
    assert onnx_model.image_size == SIZE and list(onnx_model.classes_) == list(clf.classes_)
    np.testing.assert_allclose(onnx_model.predict_proba(X_test), clf.predict_proba(X_test), atol=1e-4)
    np.testing.assert_array_equal(onnx_model.predict(X_test), clf.predict(X_test))


@pytest.mark.parametrize("make", [lambda: ImpostorClassifier(embedding_dim=16, max_epochs=3, random_state=0),
                                  lambda: ImprintedClassifier(random_state=0)], ids=["impostor", "imprinted"])
def test_pipeline_on_features_matches_onnxruntime(cars, tmp_path, make):
    X, y, X_test = cars
    pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=SIZE)), ("clf", make())]).fit(X, y)
    onnx_model = OnnxModel(export_onnx(pipe, tmp_path / "pipe.onnx"))
    assert onnx_model.output_names[-1] == "probabilities"
    np.testing.assert_allclose(onnx_model.predict_proba(X_test), pipe.predict_proba(X_test), atol=1e-4)
    if isinstance(pipe[-1], ImpostorClassifier):  # the embeddings, as transform gives them
        np.testing.assert_allclose(onnx_model.transform(X_test), pipe.transform(X_test), atol=1e-4)


def test_extractor_features_match_onnxruntime(cars, tmp_path):
    X, _, _ = cars
    ext = CNNFeatureExtractor(image_size=SIZE, layers=["stage5", "stage7"], pooling="kmax").fit()
    onnx_model = OnnxModel(export_onnx(Pipeline([("cnn", ext)]), tmp_path / "ext.onnx"))
    assert onnx_model.output_names == ["features"] and onnx_model.classes_ is None
    images = onnx_input(X[:6], SIZE)
    assert images.dtype == np.uint8 and images.shape == (6, 3, SIZE, SIZE)
    np.testing.assert_allclose(onnx_model.run(images)["features"], ext.transform(X[:6]), atol=1e-4)
    with pytest.raises(AttributeError, match="no 'probabilities' output"):
        onnx_model.predict_proba(X[:2])


def test_an_int8_graph_is_calibrated_and_close_to_the_float_one(cars, tmp_path):
    X, y, X_test = cars
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=SIZE), trainable_blocks=1, max_epochs=2,
                            head_epochs=2, random_state=0).fit(X, y)
    float_model = OnnxModel(export_onnx(clf, tmp_path / "f.onnx"))
    int8_model = OnnxModel(export_onnx(clf, tmp_path / "q.onnx", quantize="int8", calibration=X))
    assert int8_model.quantized == "int8" and float_model.quantized is None
    assert list(int8_model.classes_) == list(clf.classes_) and int8_model.output_names == float_model.output_names
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * (tmp_path / "f.onnx").stat().st_size
    p_float, p_int8 = float_model.predict_proba(X_test), int8_model.predict_proba(X_test)
    assert not np.allclose(p_int8, p_float, atol=1e-6)  # really quantized
    assert np.abs(p_int8 - p_float).max() < 0.25 and np.mean(p_int8.argmax(1) == p_float.argmax(1)) >= 0.75
    with pytest.raises(ValueError, match="needs calibration images"):
        export_onnx(clf, tmp_path / "x.onnx", quantize="int8")
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        export_onnx(clf, tmp_path / "x.onnx", quantize="int4", calibration=X)
    assert not (tmp_path / "x.onnx").exists()


def test_what_cannot_be_exported_is_refused_by_name(cars, tmp_path):
    X, y, _ = cars
    feats = CNNFeatureExtractor(image_size=SIZE).fit_transform(X)
    with pytest.raises(TypeError, match="fitted on features"):
        export_onnx(SoftmaxClassifier(max_epochs=2).fit(feats, y), tmp_path / "a.onnx")
    pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=SIZE)), ("lr", LogisticRegression())]).fit(X, y)
    with pytest.raises(TypeError, match=r"\['CNNFeatureExtractor', 'LogisticRegression'\]"):
        export_onnx(pipe, tmp_path / "b.onnx")
    with pytest.raises(TypeError, match="EarlyExitClassifier"):
        export_onnx(EarlyExitClassifier(), tmp_path / "c.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_file_not_written_by_skfg_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["images"], ["out"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.UINT8, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not written by skfg"):
        OnnxModel(tmp_path / "other.onnx")


def test_the_inference_module_is_the_exported_graph_in_torch(cars):
    import torch

    from skfg.export import inference_module

    X, y, X_test = cars
    pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=SIZE)), ("clf", SoftmaxClassifier(max_epochs=3))])
    pipe.fit(X, y)
    module, names = inference_module(pipe)
    assert "probabilities" in names
    images = torch.as_tensor(onnx_input(X_test, SIZE))
    with torch.no_grad():
        out = module(images)
    proba = (out[names.index("probabilities")] if isinstance(out, tuple) else out).numpy()
    np.testing.assert_allclose(proba, pipe.predict_proba(X_test), atol=1e-4)
    assert module is not inference_module(pipe)[0]  # a copy: the model's own modules are left as they are
