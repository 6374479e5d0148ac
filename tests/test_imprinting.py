import io

import joblib
import numpy as np
import pytest
import torch

from skfg import CNNFeatureExtractor, ImprintedClassifier
from skfg.datasets import low_shot_split, make_fine_grained
import skfg.imprinting


def small(**kw):
    return ImprintedClassifier(**{"max_epochs": 15, "random_state": 0, **kw})


@pytest.fixture
def blobs():
    """3 base classes around the first axes of R^6, and exemplars of 2 novel ones."""
    rng = np.random.RandomState(0)
    y = np.repeat(["a", "b", "c"], 30)
    X = (4 * np.eye(6)[np.repeat([0, 1, 2], 30)] + 0.5 * rng.randn(90, 6)).astype(np.float32)
    novel_X = (4 * np.eye(6)[[3, 3, 3, 4, 4]] + 0.5 * rng.randn(5, 6)).astype(np.float32)
    return X, y, novel_X, np.array(["d", "d", "d", "e", "e"])


def test_one_exemplar_gives_its_normalised_embedding(blobs):
    X, y, nX, ny = blobs
    clf = small(calibrate_imprints=False).fit(X, y)  # the paper's rule
    phi = clf.transform(nX[:1])
    clf.imprint(nX[:1], ny[:1])
    w = clf.class_weights_
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[3], phi[0] / np.linalg.norm(phi[0]), rtol=1e-5, atol=1e-6)
    assert clf.classes_.tolist() == ["a", "b", "c", "d"]


def test_average_rule_and_incremental_order_independence(blobs):
    X, y, nX, ny = blobs
    base = small(calibrate_imprints=False).fit(X, y)
    phi = base.transform(nX)
    together = joblib.load(_dump(base)).imprint(nX, ny)
    mean = phi[:3].mean(0)
    np.testing.assert_allclose(together.class_weights_[3], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    one_by_one = joblib.load(_dump(base))
    for i in [4, 2, 0, 3, 1]:  # another order, one exemplar at a time
        one_by_one.imprint(nX[i : i + 1], ny[i : i + 1])
    assert one_by_one.classes_.tolist() == ["a", "b", "c", "e", "d"]  # new classes in order of arrival
    order = [one_by_one.classes_.tolist().index(c) for c in together.classes_]
    np.testing.assert_allclose(one_by_one.class_weights_[order], together.class_weights_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(together.imprint_counts_, [0, 0, 0, 3, 2])
    # the base templates are untouched
    np.testing.assert_array_equal(together.class_weights_[:3], base.class_weights_)
    # calibrated, too, imprinting one exemplar at a time equals imprinting them together
    base.set_params(calibrate_imprints=True)
    together = joblib.load(_dump(base)).imprint(nX, ny)
    one_by_one = joblib.load(_dump(base))
    for i in [4, 2, 0, 3, 1]:
        one_by_one.imprint(nX[i : i + 1], ny[i : i + 1])
    order = [one_by_one.classes_.tolist().index(c) for c in together.classes_]
    np.testing.assert_allclose(one_by_one.class_weights_[order], together.class_weights_, rtol=1e-5, atol=1e-6)


def _shared_component_data(rng):
    """Inputs that all share one component, as a CNN's embeddings do: 3 base classes and a
    novel one, each 2 units along its own axis of R^8 from a common offset."""
    common, axes = np.r_[np.full(6, 3.0), 0, 0], np.eye(8)

    def draw(k, n):
        return (common + 2.0 * axes[k] + 0.5 * rng.randn(n, 8)).astype(np.float32)

    y = np.repeat(["a", "b", "c"], 40)
    return (np.r_[draw(0, 40), draw(1, 40), draw(2, 40)], y, np.r_[draw(0, 40), draw(1, 40), draw(2, 40)], y,
            draw(3, 3), draw(3, 40))


def test_calibrated_imprinting_leaves_old_classes_far_from_the_new_one_alone():
    """Issue 22's regression test: imprinting one class must not change the predictions of
    the old classes on inputs far from it (here the half of the old classes' test inputs
    least similar to the new class's exemplars, in the embedding)."""
    X, y, Xt, yt, nX, novel_test = _shared_component_data(np.random.RandomState(0))
    changed = {}
    for calibrate in (False, True):
        clf = small(embedding_dim=8, max_epochs=30, calibrate_imprints=calibrate).fit(X, y)
        before, phi = clf.predict(Xt), clf.transform(Xt)
        assert np.mean(before == yt) > 0.9
        clf.imprint(nX, ["d"] * 3)
        after = clf.predict(Xt)
        similarity = phi @ clf.transform(nX).mean(0)
        far = similarity < np.median(similarity)
        changed[calibrate] = (np.mean(before[far] != after[far]), np.mean(before != after))
        assert np.mean(clf.predict(novel_test) == "d") > 0.9  # the new class is recognised either way
        if calibrate:  # its template's cosine with the mean embedding is the trained templates' mean
            u = clf.embedding_mean_ / np.linalg.norm(clf.embedding_mean_)
            assert clf.class_weights_[3] @ u == pytest.approx(np.mean(clf.class_weights_[:3] @ u), abs=1e-5)
    assert changed[True][0] == 0.0
    assert changed[False][0] > 0.0 and changed[False][1] > 2 * changed[True][1]  # the paper's rule steals more


def test_whitened_imprint_is_the_shrunk_whitening_of_the_mean_then_calibrated(blobs):
    """imprint_whitening: d = (I + lambda C)^-1 (m - (m.u) u), C the base embeddings'
    covariance (all 6 components kept here), then the mean calibration."""
    X, y, nX, ny = blobs
    lam = 7.0
    clf = small(imprint_whitening=lam).fit(X, y)
    E = clf.transform(X).astype(np.float64)
    mu = E.mean(0)
    np.testing.assert_allclose(clf.embedding_mean_, mu, atol=1e-6)
    C = np.cov(E.T, bias=True)
    assert clf.embedding_components_.shape == (6, 6) and clf.embedding_noise_variance_ == 0.0
    V = clf.embedding_components_.astype(np.float64)
    np.testing.assert_allclose(V.T @ np.diag(clf.embedding_variance_) @ V, C, atol=1e-6)
    m = clf.transform(nX[:3]).astype(np.float64).sum(0)
    m /= np.linalg.norm(m)
    trained = clf.class_weights_.astype(np.float64)
    clf.imprint(nX[:3], ny[:3])
    u = mu / np.linalg.norm(mu)
    d = np.linalg.solve(np.eye(6) + lam * C, m - (m @ u) * u)
    d -= (d @ u) * u
    a = np.mean(trained @ u)
    expected = a * u + np.sqrt(1 - a * a) * d / np.linalg.norm(d)
    np.testing.assert_allclose(clf.class_weights_[3], expected, atol=1e-5)


def _nuisance_data(rng, n_new=30, noise=0.3):
    """3 base classes and many novel ones, each 2 units along its own axis of R^40, all
    images also spread along one shared nuisance axis (sd 2): the mean of a few exemplars
    carries their nuisance, as a CNN's class means carry the directions every image varies in."""
    dim, axes = 40, np.eye(40)
    common = np.r_[np.full(6, 3.0), np.zeros(dim - 6)]

    def draw(k, n):
        return (common + 2.0 * axes[6 + k] + 2.0 * rng.randn(n, 1) * axes[-1] + noise * rng.randn(n, dim)
                ).astype(np.float32)

    y = np.repeat(["a", "b", "c"], 40)
    X, Xt = (np.concatenate([draw(k, 40) for k in range(3)]) for _ in range(2))
    labels = np.array([f"n{j}" for j in range(n_new)])
    exemplars = [draw(3 + j, 3) for j in range(n_new)]
    tests = [draw(3 + j, 20) for j in range(n_new)]
    return X, y, Xt, labels, exemplars, tests


def test_whitening_keeps_more_old_predictions_with_many_more_new_classes_than_old():
    X, y, Xt, labels, exemplars, tests = _nuisance_data(np.random.RandomState(0))
    changed, novel = {}, {}
    for lam in (0.0, 60.0):
        clf = small(max_epochs=30, imprint_whitening=lam).fit(X, y)
        before = clf.predict(Xt)
        assert np.mean(before == y) > 0.9
        clf.imprint(np.concatenate(exemplars), np.repeat(labels, 3))
        changed[lam] = np.mean(clf.predict(Xt) != before)
        novel[lam] = np.mean(np.concatenate([clf.predict(t) == c for t, c in zip(tests, labels)]))
    assert changed[60.0] < changed[0.0] - 0.1  # fewer old-class images taken by the new templates
    assert novel[60.0] >= novel[0.0]  # and the new classes recognised no worse


def test_whitened_imprinting_leaves_old_predictions_unchanged_with_ten_times_more_new_classes():
    """Issue 48's test: 30 new classes imprinted into a model of 3 (a learned embedding),
    with the shared nuisance axis that the exemplar means carry. The whitened rule (the
    default) changes no old-class prediction, neither on the old inputs far from every
    new class (the half least similar to the nearest new class's exemplars) nor on any;
    the paper's rule and the mean calibration alone take some of them."""
    X, y, Xt, labels, exemplars, tests = _nuisance_data(np.random.RandomState(0), noise=0.1)
    changed = {}
    for name, params in (("paper", {"calibrate_imprints": False}), ("mean", {"imprint_whitening": 0.0}),
                         ("whitened", {})):
        clf = small(max_epochs=60, embedding_dim=40, **params).fit(X, y)
        before = clf.predict(Xt)
        assert np.mean(before == y) == 1.0
        phi = clf.transform(Xt)
        means = np.stack([clf.transform(e).mean(0) for e in exemplars])
        nearest_new = (phi / np.linalg.norm(phi, axis=1, keepdims=True)
                       @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T).max(1)
        far = nearest_new < np.median(nearest_new)
        clf.imprint(np.concatenate(exemplars), np.repeat(labels, 3))
        after = clf.predict(Xt)
        changed[name] = (np.mean(after[far] != before[far]), np.mean(after != before))
        novel = np.mean(np.concatenate([clf.predict(t) == c for t, c in zip(tests, labels)]))
        assert novel > 0.9, (name, novel)  # the new classes are recognised by every rule
    assert changed["whitened"] == (0.0, 0.0), changed
    assert changed["paper"][1] > 0.05 and changed["mean"][1] > 0.05, changed  # the test can fail


def test_a_model_saved_without_the_embedding_spectrum_imprints_without_whitening(blobs):
    X, y, nX, ny = blobs
    clf = small().fit(X, y)
    plain = joblib.load(_dump(clf)).set_params(imprint_whitening=0.0).imprint(nX, ny)
    old = joblib.load(_dump(clf))
    for name in ("embedding_components_", "embedding_variance_", "embedding_noise_variance_"):
        delattr(old, name)  # as pickled before they existed
    np.testing.assert_allclose(old.imprint(nX, ny).class_weights_, plain.class_weights_, atol=1e-6)


def test_predict_proba_uses_the_scale(blobs):
    X, y, nX, ny = blobs
    clf = small(scale=5.0).fit(X, y).imprint(nX, ny)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (clf.predict(X) == clf.classes_[proba.argmax(1)]).all()
    cos = clf.transform(X) @ clf.class_weights_.T
    np.testing.assert_allclose(proba, torch.softmax(torch.as_tensor(5.0 * cos, dtype=torch.float64), 1).numpy(),
                               rtol=1e-4, atol=1e-6)
    assert clf.scale_ == 5.0
    learned = small(max_epochs=30).fit(X, y)
    assert learned.scale_ != 10.0  # "learn": one trainable scalar, initialised to 10


def test_imprinting_keeps_base_predictions_with_a_margin():
    # hand-built: with embedding_dim=None and no training, templates are set by hand
    rng = np.random.RandomState(0)
    X = np.r_[np.tile([1.0, 0, 0], (20, 1)), np.tile([0, 1.0, 0], (20, 1))] + 0.01 * rng.randn(40, 3)
    y = np.repeat([10, 20], 20)
    clf = small(max_epochs=1).fit(X, y)
    before = clf.predict(X)
    Q = clf.transform(X)
    clf.imprint(np.tile([-1.0, -1.0, 0.0], (1, 1)) + 0.01 * rng.randn(1, 3), [30])
    new_w = clf.class_weights_[2]
    base_scores = Q @ clf.class_weights_[:2].T
    assert (base_scores.max(1) > Q @ new_w + 0.1).all()  # every input is nearer a base template by a margin
    np.testing.assert_array_equal(clf.predict(X), before)


def test_label_types_and_errors(blobs):
    X, y, nX, ny = blobs
    clf = small(max_epochs=2).fit(X, y)
    with pytest.raises(ValueError, match="got number labels .* classes_ holds str labels"):
        clf.imprint(nX[:1], [7])
    with pytest.raises(ValueError, match="trained classes"):
        clf.imprint(nX[:1], ["a"])
    with pytest.raises(ValueError, match="5 samples but y has 2"):
        clf.imprint(nX, ny[:2])
    ints = small(max_epochs=2).fit(X, np.repeat([3, 1, 2], 30)).imprint(nX[:1], [-5])
    assert ints.classes_.tolist() == [1, 2, 3, -5] and ints.predict(nX).dtype.kind == "i"


def test_joblib_round_trip_after_imprinting(blobs):
    X, y, nX, ny = blobs
    clf = small().fit(X, y).imprint(nX, ny)
    loaded = joblib.load(_dump(clf))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.classes_.tolist() == clf.classes_.tolist()
    loaded.imprint(nX[:1], ny[:1])  # the running sums survive pickling
    assert loaded.imprint_counts_.tolist() == [0, 0, 0, 4, 2]


def test_imprinting_with_an_extractor_and_augmentation():
    X, y = make_fine_grained(n_classes=4, n_per_class=6, image_size=40, random_state=0)
    base, novel = low_shot_split(y, n_base_classes=3, n_shots=2, random_state=0)
    clf = small(extractor=CNNFeatureExtractor(image_size=40), max_epochs=2).fit(X[base], y[base])
    plain = joblib.load(_dump(clf)).imprint(X[novel], y[novel])
    aug = clf.imprint(X[novel], y[novel], augment=3)
    assert plain.classes_.tolist() == aug.classes_.tolist() == sorted(set(y[base])) + [y[novel][0]]
    np.testing.assert_allclose(np.linalg.norm(aug.class_weights_, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(plain.class_weights_[-1], aug.class_weights_[-1])  # random crops differ


def test_low_shot_split_protocol():
    y = np.repeat(np.arange(5), [4, 4, 4, 1, 6])
    base, novel = low_shot_split(y, n_base_classes=2, n_shots=3, random_state=0)
    assert set(y[base]) == {0, 1} and len(base) == 8
    assert np.bincount(y[novel], minlength=5).tolist() == [0, 0, 3, 1, 3]  # capped by what a class has
    again = low_shot_split(y, 2, 3, random_state=0)[1]
    np.testing.assert_array_equal(novel, again)
    with pytest.raises(ValueError, match="n_base_classes"):
        low_shot_split(y, 5, 1)


def _dump(est):
    buf = io.BytesIO()
    joblib.dump(est, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("replay", ["data", "weights"])
def test_partial_fit_imprints_then_fine_tunes(blobs, replay):
    X, y, nX, ny = blobs
    # without whitening imprinting costs the base classes here, which replay then repairs
    base = small(fine_tune_epochs=3, replay=replay, imprint_whitening=0.0).fit(X, y)
    imprinted = joblib.load(_dump(base)).set_params(fine_tune_epochs=0).partial_fit(nX, ny)
    tuned = base.partial_fit(nX, ny)
    assert tuned.classes_.tolist() == ["a", "b", "c", "d", "e"]
    assert tuned.n_iter_ == imprinted.n_iter_ + 3
    assert not np.allclose(tuned.class_weights_[3:], imprinted.class_weights_[3:])  # the novel templates trained
    if replay == "weights":  # embedding and base templates untouched
        np.testing.assert_array_equal(tuned.class_weights_[:3], imprinted.class_weights_[:3])
        np.testing.assert_array_equal(tuned.transform(X), imprinted.transform(X))
    XX, yy = np.r_[X, nX], np.r_[y, ny]
    if replay == "data":  # replaying the base data repairs what imprinting cost the base classes
        assert tuned.score(XX, yy) > imprinted.score(XX, yy)


def test_fine_tune_lr_sets_the_fine_tuning_step(blobs):
    X, y, nX, ny = blobs
    base = small(fine_tune_epochs=3).fit(X, y)
    imprinted = joblib.load(_dump(base)).set_params(fine_tune_epochs=0).partial_fit(nX, ny)
    still = joblib.load(_dump(base)).set_params(fine_tune_lr=1e-9).partial_fit(nX, ny)
    moved = joblib.load(_dump(base)).set_params(fine_tune_lr=1e-2).partial_fit(nX, ny)
    assert still.n_iter_ == moved.n_iter_ == imprinted.n_iter_ + 3
    np.testing.assert_allclose(still.class_weights_, imprinted.class_weights_, atol=1e-5)
    change = np.abs(moved.class_weights_ - imprinted.class_weights_).max()
    assert change > 1e-2, change
    with pytest.raises(ValueError, match="fine_tune_lr"):
        small(fine_tune_lr=0).fit(X, y)


def test_partial_fit_on_an_unfitted_model_is_fit(blobs):
    X, y, _, _ = blobs
    a = small().partial_fit(X, y)
    b = small().fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_partial_fit_without_imprinting_fine_tunes_the_templates_as_they_are(blobs):
    X, y, nX, ny = blobs
    imprinted = small(fine_tune_epochs=0).fit(X, y).partial_fit(nX, ny)
    with torch.no_grad():  # the novel templates set by hand (Rand+FT's random start)
        imprinted.module_.head.weight[3:] = torch.randn(2, imprinted.module_.head.weight.shape[1],
                                                       generator=torch.Generator().manual_seed(0))
    start = imprinted.class_weights_.copy()
    tuned = joblib.load(_dump(imprinted)).set_params(fine_tune_epochs=2).partial_fit(nX, ny, imprint=False)
    again = joblib.load(_dump(imprinted)).set_params(fine_tune_epochs=2).partial_fit(nX, ny)  # re-imprints first
    assert tuned.n_iter_ == imprinted.n_iter_ + 2
    assert not np.allclose(tuned.class_weights_, start)  # trained from the hand-set templates
    assert not np.allclose(tuned.class_weights_[3:], again.class_weights_[3:])  # not from re-imprinted ones
    with pytest.raises(ValueError, match="imprint=False fine-tunes the model's own classes; y holds others: z"):
        imprinted.partial_fit(nX[:2], np.array(["z", "z"]), imprint=False)


def _state(clf):
    return (clf.classes_.tolist(), clf.imprint_counts_.tolist(), clf.class_weights_.copy(), len(clf.history_),
            {k: v.clone() for k, v in clf.module_.state_dict().items()})

def _assert_same_state(a, b):
    assert a[:2] == b[:2] and a[3] == b[3]
    np.testing.assert_array_equal(a[2], b[2])
    assert a[4].keys() == b[4].keys() and all(torch.equal(a[4][k], b[4][k]) for k in a[4])

@pytest.mark.parametrize("fail_at", ["fine_tune_epoch_2", "imprint"])
def test_a_failed_partial_fit_leaves_the_model_exactly_as_before(easy_blobs, monkeypatch, fail_at):
    X, y = easy_blobs
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

def test_an_interrupted_partial_fit_says_so(easy_blobs, monkeypatch):
    X, y = easy_blobs
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
