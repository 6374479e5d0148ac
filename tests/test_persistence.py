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
