import io

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.images import Preprocessing
import logging
import skfg._data


@pytest.fixture(scope="module")
def images():
    return make_fine_grained(n_classes=3, n_per_class=8, image_size=40, random_state=0)


def small(**kw):
    return SoftmaxClassifier(**{"max_epochs": 3, "random_state": 0, **kw})


def trunk_state(clf):
    return {k: v.clone() for k, v in clf.module_.trunk.state_dict().items()}


def test_pipeline_on_extractor_features(images):
    X, y = images
    pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=40)), ("clf", SoftmaxClassifier(random_state=0))])
    pipe.fit(X, y)
    proba = pipe.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)
    assert (pipe.predict(X) == pipe.classes_[proba.argmax(1)]).all()


def test_predict_is_argmax_of_proba_and_labels_round_trip(features):
    X, y = features
    clf = SoftmaxClassifier(embedding_dim=16, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    assert clf.classes_.tolist() == ["cat", "dog", "owl"]
    assert (clf.predict(X) == clf.classes_[proba.argmax(1)]).all()
    assert clf.score(X, y) > 0.9
    assert clf.n_iter_ == len(clf.history_) and 1 <= clf.best_epoch_ <= clf.n_iter_


def test_sample_weight_changes_the_fit_and_is_validated(features):
    X, y = features
    w = np.where(y == "owl", 0.0, 1.0)
    owl = y == "owl"
    plain = SoftmaxClassifier(random_state=0, validation_fraction=0).fit(X, y)
    weighted = SoftmaxClassifier(random_state=0, validation_fraction=0).fit(X, y, sample_weight=w)
    p_plain = plain.predict_proba(X)[owl, 2].mean()
    p_weighted = weighted.predict_proba(X)[owl, 2].mean()
    assert p_weighted < p_plain - 0.2  # owls with no weight are no longer learned as owls
    with pytest.raises(ValueError, match="non-negative"):
        SoftmaxClassifier().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError):
        SoftmaxClassifier().fit(X, y, sample_weight=np.ones(3))


def test_single_class_is_a_clear_error(features):
    X, _ = features
    with pytest.raises(ValueError, match="at least 2 classes"):
        SoftmaxClassifier().fit(X, np.zeros(len(X)))


@pytest.mark.parametrize("blocks, trained", [(0, []), (1, ["head"]), (2, ["stage7", "head"])])
def test_end_to_end_updates_only_requested_stages(images, blocks, trained):
    X, y = images
    ext = CNNFeatureExtractor(image_size=40)
    clf = small(extractor=ext, trainable_blocks=blocks, lr=1e-2).fit(X, y)
    before = CNNFeatureExtractor(image_size=40).fit().network_.state_dict()
    after = clf.module_.trunk.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k].float(), after[k].float().to(before[k].device))}
    assert changed == set(trained)


def test_trainable_all_updates_the_stem(images):
    X, y = images
    clf = small(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks="all", max_epochs=1).fit(X, y)
    before = CNNFeatureExtractor(image_size=40).fit().network_.state_dict()
    after = clf.module_.trunk.state_dict()
    assert not torch.equal(before["stages.stem.0.weight"], after["stages.stem.0.weight"])


def test_frozen_prefix_cache_runs_frozen_stages_once(images, stem_inputs):
    X, y = images
    cached = small(extractor=CNNFeatureExtractor(image_size=40, engine="fused"),  # (torch: the stem hook counts)
                   trainable_blocks=1, augment=False, max_epochs=4).fit(X, y)
    # every image once for 4 epochs + validation (+1: the extractor's channel probe at fit)
    assert sum(stem_inputs) == len(X) + 1
    stem_inputs.clear()
    small(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=1, augment=True, max_epochs=4).fit(X, y)
    n_train = len(X) - round(0.1 * len(X))
    assert sum(stem_inputs) >= 4 * n_train  # augmented crops differ every epoch: no cache
    stem_inputs.clear()
    cached.predict(X)
    assert sum(stem_inputs) == len(X)


def test_end_to_end_joblib_round_trip(images):
    X, y = images
    clf = small(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=1).fit(X, y)
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    # the CNN is stored once, in module_; the extractor's settings as plain data
    assert [k for k, v in vars(loaded).items() if isinstance(v, torch.nn.Module)] == ["module_"]
    assert loaded.preprocessing_ == clf.preprocessing_ == Preprocessing.from_extractor(CNNFeatureExtractor(image_size=40))
    assert loaded.trunk_settings_ == clf.trunk_settings_
    assert clf.trunk_settings_["backbone"] == "efficientnet_lite0" and clf.trunk_settings_["packaged_weights"]


def test_extractor_attribute_is_a_deprecated_alias_and_old_pickles_load(images):
    X, y = images
    clf = small(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=1, max_epochs=1).fit(X, y)
    with pytest.warns(FutureWarning, match="extractor_ is deprecated"):
        old = clf.extractor_
    assert old.get_params() == clf.extractor.get_params() and not hasattr(old, "network_")
    # a model pickled before skfg 0.4 held the unfitted extractor instead of the settings
    state = clf.__getstate__()
    legacy = {k: v for k, v in state.items() if k not in ("preprocessing_", "trunk_settings_")}
    legacy["extractor_"] = clone(clf.extractor)
    loaded = SoftmaxClassifier.__new__(SoftmaxClassifier)
    loaded.__setstate__(legacy)
    assert loaded.preprocessing_ == clf.preprocessing_ and loaded.trunk_settings_ == clf.trunk_settings_
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert not hasattr(SoftmaxClassifier(), "extractor_")


def test_feature_mode_joblib_round_trip_and_gpu_pickle_on_cpu(features):
    X, y = features
    clf = SoftmaxClassifier(embedding_dim=4, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).predict_proba(X), proba)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    clf.device_ = "cuda"  # as if fitted on a GPU
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    with pytest.warns(RuntimeWarning, match="loading it on the CPU"):
        loaded = joblib.load(buf)
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)


def test_pickle_with_cuda_storage_loads_on_cpu(features, monkeypatch):
    """Simulate a GPU-made pickle: the saved tensors carry the storage tag 'cuda:0'."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from torch import serialization

    from skfg._base import state_from_bytes

    X, y = features
    clf = SoftmaxClassifier(embedding_dim=4, random_state=0, max_epochs=3).fit(X, y)
    proba = clf.predict_proba(X)
    clf.device_ = "cuda:0"
    buf = io.BytesIO()
    with monkeypatch.context() as m:
        m.setattr(serialization, "location_tag", lambda storage: "cuda:0")
        joblib.dump(clf, buf)
        cuda_blob = clf.__getstate__()["_torch_state"]["module_"]
    with pytest.raises(RuntimeError, match="CUDA"):  # the tag is real: as-is it needs a GPU
        torch.load(io.BytesIO(cuda_blob), weights_only=True)
    assert all(v.device.type == "cpu" for v in state_from_bytes(cuda_blob).values())
    buf.seek(0)
    with pytest.warns(RuntimeWarning, match="loading it on the CPU"):
        loaded = joblib.load(buf)
    assert loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)


def test_image_input_errors_name_the_problem(images):
    X, y = images
    with pytest.raises(ValueError, match="24 images but y has 3 labels"):
        small(extractor=CNNFeatureExtractor(image_size=40)).fit(X, y[:3])


def test_warm_start_continues_from_the_fitted_network(features):
    X, y = features
    clf = SoftmaxClassifier(embedding_dim=8, max_epochs=4, lr=1e-2, random_state=0).fit(X, y)
    before = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    # a tiny learning rate: the warm fit must end where the first one did, standardisation included
    # (X * 2 would change a fresh standardisation); a cold fit ends near its random start
    clf.set_params(warm_start=True, max_epochs=1, lr=1e-9).fit(X * 2, y)
    after = clf.module_.state_dict()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-5, atol=1e-6)
    assert clf.n_iter_ == 1 and len(clf.history_) == 1
    cold = SoftmaxClassifier(embedding_dim=8, max_epochs=1, lr=1e-9, random_state=1).fit(X, y)
    assert not torch.allclose(cold.module_.head[0].weight, before["head.0.weight"], atol=1e-3)


def test_warm_start_mismatch_is_a_clear_error_and_keeps_the_model(features):
    X, y = features
    clf = SoftmaxClassifier(embedding_dim=8, max_epochs=2, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    clf.set_params(warm_start=True)
    with pytest.raises(ValueError, match="classes of the previous fit"):
        clf.fit(X[y != "owl"], y[y != "owl"])
    with pytest.raises(ValueError, match=r"differs from the previous fit's \(e.g. in head"):
        clf.set_params(embedding_dim=4).fit(X, y)
    with pytest.raises(ValueError, match="differs from the previous fit's"):
        clf.set_params(embedding_dim=8).fit(X[:, :5], y)
    np.testing.assert_array_equal(clf.predict_proba(X), proba)  # the failed fits changed nothing


def test_warm_start_checkpoint_is_not_resumed_from_another_start(features, tmp_path):
    X, y = features
    # the first fit starts cold (nothing fitted yet), the second from its weights: same
    # parameters, another run, so the first run's checkpoint must be refused, not resumed
    clf = SoftmaxClassifier(max_epochs=2, random_state=0, warm_start=True, checkpoint_dir=str(tmp_path)).fit(X, y)
    state = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    with pytest.raises(ValueError, match="different model"):
        clf.fit(X, y)
    for k, v in clf.module_.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_end_to_end_warm_start_keeps_the_fine_tuned_cnn(images):
    X, y = images
    # (Adam: a step of lr=1e-9 moves no weight by more than 1e-9, whatever the gradient)
    clf = small(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=1, lr=1e-2, optimizer="adam").fit(X, y)
    tuned = trunk_state(clf)
    pretrained = CNNFeatureExtractor(image_size=40).fit().network_.state_dict()
    assert any(not torch.equal(tuned[k].float(), pretrained[k].float()) for k in tuned)
    clf.set_params(warm_start=True, max_epochs=1, lr=1e-9, trainable_blocks=2).fit(X, y)
    for k, v in clf.module_.trunk.named_parameters():  # (BatchNorm statistics of the trained stages move)
        torch.testing.assert_close(v.float(), tuned[k].float(), rtol=1e-5, atol=1e-6)
    # this fit's trainable_blocks apply: stage 7 now trains (and is not frozen)
    assert any(p.requires_grad for n, p in clf.module_.trunk.named_parameters() if n.split(".")[1] == "stage7")


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

def test_labels_mixing_numpy_strings_and_ints_get_a_clear_error(easy_blobs):
    X, y = easy_blobs
    labels = np.array([np.str_("a"), 1] * 30, dtype=object)
    with pytest.raises(ValueError, match=r"y mixes labels of different types \(int, str\)"):
        SoftmaxClassifier(max_epochs=1).fit(X, labels)

@pytest.mark.parametrize("factor", [1e30, 1e-30])
def test_features_at_an_extreme_scale_train_as_well_as_at_unit_scale(easy_blobs, factor):
    X, y = easy_blobs
    unit = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y).score(X, y)
    assert unit > 0.9
    assert SoftmaxClassifier(max_epochs=20, random_state=0).fit(X * factor, y).score(X * factor, y) == unit

def test_tiny_sample_weights_train_as_their_ratios_say(easy_blobs):
    X, y = easy_blobs
    ones = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y)
    # weights of one change nothing, to the bit (they stay float32: no float64 promotion in the loss)
    same = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y, sample_weight=np.full(len(y), 3.0))
    np.testing.assert_array_equal(same.predict_proba(X), ones.predict_proba(X))
    tiny = SoftmaxClassifier(max_epochs=20, random_state=0).fit(X, y, sample_weight=np.full(len(y), 1e-21))
    np.testing.assert_allclose(tiny.predict_proba(X), ones.predict_proba(X), atol=1e-5)
