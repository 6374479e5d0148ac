import io
import math

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from skfg import CNNFeatureExtractor, EarlyExitClassifier
from skfg.datasets import make_fine_grained
from skfg._exits import Cascade
from skfg.early_exit import bh_threshold

LAYERS = ["stage3", "stage5", "head"]


def layered(n_per_class=40, n_classes=3, seed=0):
    """Two 'layers': a weak one (classes overlap) and a strong one."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    onehot = np.eye(4)[y]
    return np.c_[rng.randn(len(y), 4) + 2 * onehot, rng.randn(len(y), 4) + 8 * onehot], y


@pytest.fixture(scope="module")
def images():
    train = make_fine_grained(n_classes=4, n_per_class=12, image_size=48, random_state=0)
    test = make_fine_grained(n_classes=4, n_per_class=5, image_size=48, random_state=1)
    return train, test


@pytest.fixture(scope="module")
def image_model(images):
    (X, y), _ = images
    ext = CNNFeatureExtractor(layers=LAYERS, image_size=48, batch_size=4, cache=False)
    return EarlyExitClassifier(extractor=ext, alpha=0.5, random_state=0).fit(X, y)


# ------------------------------------------------------------------ thresholds
def test_bh_threshold_is_the_kth_largest_score():
    S = [0.3, 2.0, -1.0, 0.9, 1.5, 0.1, 0.7, 1.1, -0.4, 0.5]  # sorted: 2.0 1.5 1.1 0.9 0.7 ...
    assert bh_threshold(S, alpha=0.3) == 1.1  # floor(0.3 * 10) = 3rd largest
    # Benjamini-Hochberg: layer m of M uses floor(alpha * m * n / M)
    assert bh_threshold(S, alpha=0.3, m=1, n_layers=3) == 2.0  # floor(1.0) = 1st
    assert bh_threshold(S, alpha=0.3, m=2, n_layers=3) == 1.5  # floor(2.0) = 2nd
    assert bh_threshold(S, alpha=0.25, m=2, n_layers=3) == 2.0  # floor(1.67) = 1st
    assert bh_threshold(S, alpha=0.05) == math.inf  # rank 0: nobody exits
    assert bh_threshold(S, alpha=50.0) == -1.0  # rank beyond n: the smallest score


def test_fitted_thresholds_follow_the_training_algorithm():
    X, y = layered()
    clf = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.3, train_fraction=0.75, random_state=3).fit(X, y)
    # the algorithm by hand: stratified split (K = ceil(0.75 N)), SVM on the first part,
    # max inter-class scores on the rest, the floor(alpha * 1 * (N - K) / 2)-th largest
    K = math.ceil(0.75 * len(y))
    split = StratifiedShuffleSplit(1, train_size=K, test_size=len(y) - K, random_state=np.random.RandomState(3))
    tr, va = (np.sort(i) for i in next(split.split(X, y)))
    X1 = X[:, :4] / np.linalg.norm(X[:, :4], axis=1, keepdims=True)
    scores = LinearSVC().fit(X1[tr], y[tr]).decision_function(X1[va])
    scores[np.arange(len(va)), y[va]] = -np.inf
    inter = np.sort(scores.max(1))[::-1]
    rank = math.floor(0.3 * 1 * (len(y) - K) / 2)
    assert rank >= 2
    assert clf.thresholds_[0] == pytest.approx(inter[rank - 1])
    assert clf.thresholds_[-1] == -np.inf
    np.testing.assert_allclose(clf.alphas_, [0.15, 0.3])
    fixed = clone(clf).set_params(thresholds="fixed").fit(X, y)
    np.testing.assert_allclose(fixed.alphas_, [0.3, 0.3])
    assert fixed.thresholds_[0] == pytest.approx(inter[math.floor(0.3 * (len(y) - K)) - 1])
    # step 13: the kept classifiers are retrained on all the data
    full = LinearSVC().fit(X1, y)
    np.testing.assert_allclose(clf.estimators_[0].coef_, full.coef_)


def test_tiny_alpha_sends_everything_to_the_last_layer_and_huge_alpha_exits_first():
    X, y = layered()
    _, exits = EarlyExitClassifier(feature_groups=[4, 4], alpha=1e-6, random_state=0).fit(X, y).predict(X, True)
    assert (exits == 1).all()
    clf = EarlyExitClassifier(feature_groups=[2, 2, 4], alpha=1.0, thresholds="fixed", random_state=0).fit(X, y)
    _, exits = clf.predict(X, return_exit=True)
    assert (exits == 0).mean() > 0.9


def test_exits_follow_eq_3():
    X, y = layered()
    clf = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.2, random_state=0).fit(X, y)
    y_pred, exits = clf.predict(X, return_exit=True)
    first, last = clf.estimators_
    X1 = X[:, :4] / np.linalg.norm(X[:, :4], axis=1, keepdims=True)
    X2 = X[:, 4:] / np.linalg.norm(X[:, 4:], axis=1, keepdims=True)
    s1 = first.decision_function(X1)
    confident = s1.max(1) > clf.thresholds_[0]
    assert 0 < confident.sum() < len(y)  # both exits used
    np.testing.assert_array_equal(exits, np.where(confident, 0, 1))
    expected = np.where(confident, s1.argmax(1), last.decision_function(X2).argmax(1))
    np.testing.assert_array_equal(y_pred, expected)
    staged = list(clf.staged_predict(X))
    np.testing.assert_array_equal(staged[0], s1.argmax(1))
    np.testing.assert_array_equal(clf.decision_function(X)[confident], s1[confident])


# --------------------------------------------------------------- feature mode
def test_feature_groups_from_a_dataframe_with_layer_prefixed_names():
    X, y = layered()
    names = [f"stage2_{i}" for i in range(4)] + [f"head_{i}" for i in range(4)]
    clf = EarlyExitClassifier(alpha=0.2, random_state=0).fit(pd.DataFrame(X, columns=names), y)
    assert clf.exit_names_ == ["stage2", "head"]
    assert clf.feature_groups_ == [slice(0, 4), slice(4, 8)]
    by_list = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.2, random_state=0).fit(X, y)
    np.testing.assert_array_equal(clf.predict(pd.DataFrame(X, columns=names)), by_list.predict(X))
    assert EarlyExitClassifier().fit(X, y).exit_names_ == ["all"]  # no names: one layer


def test_predict_proba_with_a_probabilistic_estimator():
    X, y = layered()
    clf = EarlyExitClassifier(LogisticRegression(), feature_groups=[4, 4], alpha=0.2, random_state=0).fit(X, y)
    # LogisticRegression has decision_function: exits use it; proba from the deciding layer
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(X))
    assert not hasattr(EarlyExitClassifier(), "predict_proba")  # LinearSVC has none


@pytest.mark.parametrize(
    "groups, match",
    [([3, 3], "sum to the 8 features"), ([slice(0, 4), slice(4, 12)], "within the 8 features"),
     ([], "empty"), ({"a": "0:4"}, "expected a slice"), ([slice(0, 4), 4], "expected a slice")],
)
def test_bad_feature_groups(groups, match):
    X, y = layered()
    with pytest.raises(ValueError, match=match):
        EarlyExitClassifier(feature_groups=groups).fit(X, y)


def test_estimator_without_scores_and_one_class_are_refused():
    X, y = layered()
    with pytest.raises(ValueError, match="neither decision_function nor predict_proba"):
        EarlyExitClassifier(_NoScores()).fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        EarlyExitClassifier().fit(X, np.zeros(len(y)))
    clf = EarlyExitClassifier(feature_groups=[4, 4]).fit(X, y)
    with pytest.raises(ValueError, match="8 features"):
        clf.predict(X[:, :6])


class _NoScores:
    def fit(self, X, y):
        return self

    def get_params(self, deep=True):
        return {}


def test_binary_and_string_labels_and_joblib():
    X, y = layered(n_classes=2)
    labels = np.array(["left", "right"])[y]
    clf = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.2, random_state=0).fit(X, labels)
    y_pred, exits = clf.predict(X, return_exit=True)
    assert set(y_pred) <= {"left", "right"} and clf.score(X, labels) > 0.9
    assert clf.decision_function(X).shape == (len(y),)
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    np.testing.assert_array_equal(loaded.predict(X, return_exit=True)[1], exits)


@parametrize_with_checks(
    [
        EarlyExitClassifier(random_state=0),
        EarlyExitClassifier(LogisticRegression(), thresholds="fixed", alpha=0.3, random_state=0),
    ],
    expected_failed_checks=lambda est: est._expected_failed_checks,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ----------------------------------------------------------------- image mode
def count_stage_inputs(network):
    counts = {}

    def hook(name):
        def record(module, inputs):
            counts[name] = counts.get(name, 0) + inputs[0].shape[0]

        return record

    handles = [network.stages[n].register_forward_pre_hook(hook(n)) for n in network.stage_names]
    return counts, handles


def test_image_mode_skips_deeper_stages_for_exited_samples(image_model, images):
    _, (Xt, yt) = images
    net = image_model.extractor_.inference_engine("fused").module.trunk  # the stages the image path runs
    counts, handles = count_stage_inputs(net)
    try:
        y_pred, exits = image_model.predict(Xt, return_exit=True)
    finally:
        for h in handles:
            h.remove()
    n = len(Xt)
    per_exit = np.bincount(exits, minlength=3)
    assert per_exit[0] > 0 and per_exit[0] < n  # some exit early, some go on
    names = net.stage_names
    for name in names:
        # samples entering a stage = samples that have not exited at an earlier exit
        exited_before = sum(per_exit[m] for m, e in enumerate(LAYERS) if names.index(e) < names.index(name))
        assert counts.get(name, 0) == n - exited_before, name
    assert counts["head"] == per_exit[2] < n


def test_image_mode_equals_the_pipeline_on_the_same_images(image_model, images):
    (X, y), (Xt, yt) = images
    ext = CNNFeatureExtractor(layers=LAYERS, image_size=48, batch_size=4, cache=False).fit()
    pipe = Pipeline([("cnn", ext), ("clf", EarlyExitClassifier(feature_groups=ext.feature_groups_, alpha=0.5,
                                                                random_state=0))]).fit(X, y)
    np.testing.assert_allclose(pipe[-1].thresholds_, image_model.thresholds_, rtol=1e-6)
    y_img, e_img = image_model.predict(Xt, return_exit=True)
    y_pipe, e_pipe = pipe[-1].predict(ext.transform(Xt), return_exit=True)
    np.testing.assert_array_equal(y_img, y_pipe)
    np.testing.assert_array_equal(e_img, e_pipe)
    np.testing.assert_array_equal(image_model.predict(Xt), pipe.predict(Xt))
    # staged_predict runs every layer for every image
    staged = list(image_model.staged_predict(Xt))
    assert len(staged) == 3 and all(len(s) == len(Xt) for s in staged)


def test_image_mode_joblib_round_trip(image_model, images):
    _, (Xt, _) = images
    buf = io.BytesIO()
    joblib.dump(image_model, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    a, b = image_model.predict(Xt, return_exit=True), loaded.predict(Xt, return_exit=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_layers_must_be_in_forward_order(images):
    (X, y), _ = images
    ext = CNNFeatureExtractor(layers=["head", "stage3"], image_size=48, cache=False)
    with pytest.raises(ValueError, match="not in forward order"):
        EarlyExitClassifier(extractor=ext).fit(X, y)


def test_fine_tuning_step_trains_the_backbone_with_branch_heads(images):
    (X, y), (Xt, _) = images
    ext = CNNFeatureExtractor(layers=["stage5", "head"], image_size=48, cache=False)
    clf = EarlyExitClassifier(extractor=ext, alpha=0.5, fine_tune_epochs=1, trainable_blocks=2,
                              fine_tune_params={"augment": False, "batch_size": 8, "validation_fraction": 0.0},
                              random_state=0).fit(X, y)  # (every image trains: no comparison with the probe)
    base = ext.fit().network_.state_dict()
    tuned = clf.extractor_.network_.state_dict()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert changed and all(k.startswith(("stages.stage7", "stages.head")) for k in changed)
    assert clf.extractor_._cache_key() != ext.fit()._cache_key()  # the cache follows the tuned weights
    a = clf.predict(Xt, return_exit=True)
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    b = joblib.load(buf).predict(Xt, return_exit=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_a_failed_fit_keeps_the_previous_model():
    X, y = layered()
    clf = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.2, random_state=0).fit(X, y)
    before = clf.predict(X, return_exit=True)
    with pytest.raises(ValueError, match="sum to the 8 features"):
        clf.set_params(feature_groups=[2, 2]).fit(X, y)
    with pytest.raises(ValueError, match="sum to the 6 features"):
        clf.set_params(feature_groups=[4, 4]).fit(X[:, :6], y)  # a new width, and a failure
    assert clf.feature_groups_ == [slice(0, 4), slice(4, 8)] and clf.n_features_in_ == 8
    after = clf.predict(X, return_exit=True)
    np.testing.assert_array_equal(before[1], after[1])


def test_stored_held_out_scores_give_the_thresholds_of_another_alpha():
    X, y = layered()
    clf = EarlyExitClassifier(feature_groups=[2, 2, 4], alpha=0.1, random_state=0).fit(X, y)
    other = clone(clf).set_params(alpha=0.3).fit(X, y)
    for m in range(2):
        assert bh_threshold(clf.inter_class_scores_[m], 0.3, m + 1, 3) == other.thresholds_[m]
    assert len(clf.inter_class_scores_[-1]) == 0


@pytest.mark.parametrize("scheme", ["bh", "fixed"])
def test_with_alpha_equals_a_refit_and_leaves_the_original(scheme):
    X, y = layered()
    clf = EarlyExitClassifier(feature_groups=[2, 2, 4], alpha=0.1, random_state=0).fit(X, y)
    before = clf.thresholds_.copy()
    moved = clf.with_alpha(0.3, scheme)
    refit = clone(clf).set_params(alpha=0.3, thresholds=scheme).fit(X, y)
    np.testing.assert_array_equal(moved.thresholds_, refit.thresholds_)
    np.testing.assert_allclose(moved.alphas_, refit.alphas_)
    np.testing.assert_array_equal(moved.predict(X), refit.predict(X))
    assert (moved.alpha, moved.thresholds) == (0.3, scheme) and clf.alpha == 0.1
    np.testing.assert_array_equal(clf.thresholds_, before)
    with pytest.raises(ValueError, match="alpha must be in"):
        clf.with_alpha(0.0)


def test_exit_needs_a_score_strictly_above_the_threshold():
    X, y = layered()
    clf = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.2, random_state=0).fit(X, y)
    X1 = X[:, :4] / np.linalg.norm(X[:, :4], axis=1, keepdims=True)
    top = clf.estimators_[0].decision_function(X1).max(1)
    clf.thresholds_[0] = top[5]  # eq. (3) is strict: sample 5 itself does not exit
    _, exits = clf.predict(X, return_exit=True)
    assert exits[5] == 1
    np.testing.assert_array_equal(exits == 0, top > top[5])


def test_binary_with_a_tiny_class_and_the_sign_of_the_decision():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 4)
    y = np.r_[np.zeros(39, int), 1]
    X[-1] += 3
    for seed in range(8):  # the unstratified fallback split may hold the lone sample out
        clf = EarlyExitClassifier(feature_groups=[2, 2], alpha=0.5, random_state=seed).fit(X, y)
        d = clf.decision_function(X)
        np.testing.assert_array_equal(clf.predict(X), clf.classes_[(d > 0).astype(int)])


def test_misuse_of_the_fine_tuning_parameters_and_no_held_out_data(images):
    X, y = layered()
    with pytest.raises(ValueError, match="needs extractor="):
        EarlyExitClassifier(fine_tune_epochs=1).fit(X, y)
    (Xi, yi), _ = images
    ext = CNNFeatureExtractor(layers=["stage5", "head"], image_size=48, cache=False)
    with pytest.raises(ValueError, match=r"cannot set \['max_epochs'\]"):
        EarlyExitClassifier(extractor=ext, fine_tune_epochs=1, fine_tune_params={"max_epochs": 3}).fit(Xi, yi)
    with pytest.warns(UserWarning, match="No held-out samples"):
        clf = EarlyExitClassifier(feature_groups=[4, 4], train_fraction=0.999).fit(X, y)
    assert clf.thresholds_[0] == np.inf


def test_dataframe_names_without_layer_suffixes_are_one_layer():
    X, y = layered()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"] * 2
    names = [f"{n}{i // 4}" for i, n in enumerate(names)]
    assert EarlyExitClassifier().fit(pd.DataFrame(X, columns=names), y).exit_names_ == ["all"]


def test_zero_weight_samples_do_not_move_the_thresholds():
    X, y = layered()
    w = np.ones(len(y))
    w[::7] = 0
    clf = EarlyExitClassifier(feature_groups=[4, 4], alpha=0.2, random_state=0).fit(X, y, sample_weight=w)
    assert np.isfinite(clf.thresholds_[0])
    rng = np.random.RandomState(0)
    Xw = X.copy()
    Xw[w == 0] = rng.randn((w == 0).sum(), 8) * 50  # garbage in zero-weight rows
    other = clone(clf).fit(Xw, y, sample_weight=w)
    np.testing.assert_allclose(other.thresholds_, clf.thresholds_, rtol=1e-6)


def test_batches_skip_per_image_and_equal_the_per_image_path(image_model, images):
    """Exited images leave a batch of 16 (the deeper stages see only the rest), with the
    same predictions and exits as one image at a time."""
    _, (Xt, _) = images
    batched, single = clone(image_model), clone(image_model)
    for model, size in ((batched, 16), (single, 1)):
        model.__dict__.update({k: v for k, v in image_model.__dict__.items() if k.endswith("_")})
        model.extractor_ = clone(image_model.extractor_).fit()
        model.extractor_.set_params(batch_size=size)
        model.extractor_.network_ = image_model.extractor_.network_
    net = batched.extractor_.inference_engine("fused").module.trunk  # (one engine: the network is shared)
    assert net is single.extractor_.inference_engine("fused").module.trunk
    sizes = {}
    handles = [net.stages[n].register_forward_pre_hook(
        lambda mod, inp, n=n: sizes.setdefault(n, []).append(inp[0].shape[0])) for n in ("stage5", "head")]
    try:
        y_b, e_b = batched.predict(Xt, return_exit=True)
    finally:
        for h in handles:
            h.remove()
    y_s, e_s = single.predict(Xt, return_exit=True)
    np.testing.assert_array_equal(y_b, y_s)
    np.testing.assert_array_equal(e_b, e_s)
    counts = np.bincount(e_b, minlength=3)
    assert 0 < counts[0] < len(Xt)
    assert sum(sizes["stage5"]) == len(Xt) - counts[0] and max(sizes["stage5"]) > 1  # batched, minus exits
    assert sum(sizes["head"]) == counts[2]


def test_the_stages_run_with_one_blas_thread_and_restore_it(image_model, images, monkeypatch):
    """BLAS threads spinning after an exit's matrix product would take the cores from
    the next stage: prediction limits BLAS to one thread, and puts the limit back."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}

    _, (Xt, _) = images
    before, seen = blas_threads(), []
    decide = Cascade.exit

    def spy(self, *args):
        seen.append(blas_threads())
        return decide(self, *args)

    monkeypatch.setattr(Cascade, "exit", spy)
    image_model.predict(Xt)
    assert seen and all(set(s.values()) <= {1} for s in seen)
    assert blas_threads() == before


def test_joint_exit_training_takes_the_exit_weights_and_distillation(images):
    (X, y), _ = images
    ext = CNNFeatureExtractor(layers=["stage5", "head"], image_size=48, cache=False)
    # stage5 trains, so the first exit's loss reaches the CNN
    common = dict(extractor=ext, alpha=0.5, fine_tune_epochs=1, trainable_blocks=4,
                  fine_tune_params={"augment": False, "batch_size": 8, "head_epochs": 0}, random_state=0)

    def stage5(**kw):
        state = EarlyExitClassifier(**common, **kw).fit(X, y).extractor_.network_.state_dict()
        return {k: v for k, v in state.items() if k.startswith("stages.stage5") and v.is_floating_point()}

    both, again = stage5(), stage5()
    assert all(torch.equal(both[k], again[k]) for k in both)  # deterministic, so the differences below are real
    for other in (stage5(exit_weights=[0.0, 1.0]), stage5(distillation=5.0)):
        assert any(not torch.equal(both[k], other[k]) for k in both)
    with pytest.raises(ValueError, match="exit_weights has 3 entries"):
        EarlyExitClassifier(**common, exit_weights=[1, 1, 1]).fit(X, y)


def test_predict_never_moves_the_thresholds(image_model, images):
    _, (Xt, _) = images
    before = image_model.thresholds_.copy()
    image_model.predict(Xt)
    image_model.staged_predict(Xt)
    np.testing.assert_array_equal(image_model.thresholds_, before)


def test_the_old_module_name_still_imports_with_a_warning():
    import importlib

    import skfg.early_exit
    import skfg.persistence

    with pytest.warns(FutureWarning, match="renamed skfg.early_exit"):
        old = importlib.reload(importlib.import_module("skfg.sequential"))
    assert old.EarlyExitClassifier is skfg.early_exit.EarlyExitClassifier is skfg.EarlyExitClassifier
    assert "skfg.sequential.EarlyExitClassifier" in skfg.persistence.loadable_types()
