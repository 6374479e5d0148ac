import io

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, ImpostorClassifier, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.losses import impostor_loss
from skfg.metrics import entropy


def small(**kw):
    return ImpostorClassifier(**{"max_epochs": 6, "random_state": 0, "embedding_dim": 16, **kw})


@pytest.fixture(scope="module")
def images():
    return make_fine_grained(n_classes=3, n_per_class=8, image_size=40, random_state=0)


def test_scale_normalisation_gives_unit_mean_impostor_norm(features):
    X, y = features
    for dim in (None, 7):
        clf = ImpostorClassifier(impostors="fixed", embedding_dim=dim, validation_fraction=0, random_state=0).fit(X, y)
        norms = np.linalg.norm(clf.index_.reconstruct(), axis=1)
        assert clf.index_.n_vectors_ == len(X)
        if dim is None:  # nothing trains: impostors are the initial embeddings of every sample
            assert clf.n_iter_ == 0
            np.testing.assert_allclose(norms.mean(), 1.0, rtol=1e-5)
            np.testing.assert_allclose(clf.transform(X), clf.index_.reconstruct(), rtol=1e-5, atol=1e-6)


def test_scale_normalisation_of_a_warm_started_network_keeps_embeddings_on_the_impostors(features):
    # Training again from a fitted network (e.g. a second training step) re-normalises
    # relative to the scale it already has: the embeddings still coincide with the impostors.
    from skfg._data import FeatureData, FitContext

    X, y = features
    clf = small(impostors="fixed", validation_fraction=0).fit(X, y)
    net, y_enc = clf.module_, np.unique(y, return_inverse=True)[1]
    first = float(net.head.scale)
    assert abs(first - 1.0) > 1e-3  # the first fit did divide by the mean norm
    data, idx = FeatureData(X.astype(np.float32), "cpu"), np.arange(len(X))
    with torch.no_grad():
        aux = clf._begin_training(FitContext(net, data, y_enc, idx, None, np.ones(len(X)), None, "cpu"))
        emb = data.outputs(net, idx)
    np.testing.assert_allclose(emb.norm(dim=1).mean().item(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb.numpy(), aux.vectors.numpy(), rtol=1e-5, atol=1e-6)

def test_predict_proba_is_eq3_over_the_learned_embedding(features):
    X, y = features
    clf = small(impostors="loose", sigma=0.5).fit(X, y)
    emb, imp = clf.transform(X[:7]).astype(np.float64), clf.index_.reconstruct().astype(np.float64)
    k = np.exp(-((emb[:, None] - imp[None]) ** 2).sum(-1) / (2 * 0.5**2))
    expected = np.stack([k[:, clf.impostor_labels_ == c].sum(1) for c in range(3)], 1) / k.sum(1, keepdims=True)
    np.testing.assert_allclose(clf.predict_proba(X[:7]), expected, rtol=1e-4, atol=1e-7)
    assert (clf.predict(X) == clf.classes_[clf.predict_proba(X).argmax(1)]).all()
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("scheme", ["fixed", "tied", "loose"])
def test_schemes_train_and_move_impostors_as_documented(features, scheme):
    X, y = features
    kw = dict(impostors=scheme, validation_fraction=0, max_epochs=5, refresh_every=2, lr=1e-2)
    clf = small(**kw).fit(X, y)
    init = small(**dict(kw, max_epochs=1, lr=1e-12)).fit(X, y).index_.reconstruct()
    moved = np.abs(clf.index_.reconstruct() - init).max()
    if scheme == "fixed":
        assert moved < 1e-6  # the initial embeddings, untouched
    else:
        assert moved > 1e-3  # tied: reset at epoch 2 and 4; loose: trained
    if scheme == "tied":  # constraint (5): the final impostors are the final embeddings
        np.testing.assert_allclose(clf.index_.reconstruct(), clf.transform(X), rtol=1e-5, atol=1e-6)
    assert clf.score(X, y) > 0.8


def test_loose_attachment_pulls_impostors_to_embeddings(features):
    X, y = features
    gaps = []
    for lam in (0.0, 10.0):
        clf = small(attachment=lam, validation_fraction=0, lr=1e-2, max_epochs=10).fit(X, y)
        gaps.append(np.linalg.norm(clf.transform(X) - clf.index_.reconstruct(), axis=1).mean())
    assert gaps[1] < gaps[0]


def test_learn_weights_and_neighbour_truncation(features):
    X, y = features
    clf = small(learn_weights=True, lr=1e-2).fit(X, y)
    assert clf.impostor_weights_.shape == (clf.index_.n_vectors_,) and not np.allclose(clf.impostor_weights_, 1.0)
    full = clf.predict_proba(X)
    clf.set_params(n_neighbors=len(X))  # every impostor: the exact sum
    np.testing.assert_allclose(clf.predict_proba(X), full, rtol=1e-6)
    knn = small(n_neighbors=5, index="hnsw").fit(X, y)
    proba = knn.predict_proba(X)
    assert ((proba > 0).sum(1) <= 5).all()  # only the 5 nearest impostors vote
    np.testing.assert_allclose(proba.sum(1), 1.0)
    exact = small(n_neighbors=5, index="exact").fit(X, y).predict_proba(X)
    np.testing.assert_allclose(proba, exact, rtol=1e-5, atol=1e-6)


def test_pq_compressed_fixed_impostors_train_against_the_decoded_vectors():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(6), 60)
    X = (rng.randn(len(y), 32) + 5 * np.eye(32)[y]).astype(np.float32)
    clf = ImpostorClassifier(impostors="fixed", index="pq", code_size=4, embedding_dim=32, max_epochs=3,
                             random_state=0).fit(X, y)
    assert clf.index_.code_bytes_per_vector == 4
    assert clf.impostor_memory_bytes_ < 32 * 4 * len(X)
    plain = ImpostorClassifier(impostors="fixed", embedding_dim=32, max_epochs=3, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.9 and plain.score(X, y) > 0.9
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).predict_proba(X), clf.predict_proba(X))


def test_warm_start_takes_the_new_schemes_impostors_from_the_trained_embeddings(features):
    X, y = features
    clf = small(impostors="loose", validation_fraction=0, lr=1e-2).fit(X, y)
    emb = clf.transform(X)
    emb /= np.linalg.norm(emb, axis=1).mean()  # protocol step 3, on the trained network
    clf.set_params(impostors="fixed", warm_start=True, max_epochs=1, lr=1e-9).fit(X, y)
    np.testing.assert_allclose(clf.index_.reconstruct(), emb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clf.transform(X), emb, rtol=1e-4, atol=1e-5)


def test_warm_started_pq_recipe_compresses_the_trained_embeddings():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(6), 60)
    X = (rng.randn(len(y), 32) + 5 * np.eye(32)[y]).astype(np.float32)
    kw = dict(impostors="fixed", index="pq", code_size=4, lr=1e-9, max_epochs=1, validation_fraction=0)
    cold = ImpostorClassifier(embedding_dim=32, random_state=0, **kw).fit(X, y)
    clf = ImpostorClassifier(impostors="loose", embedding_dim=32, max_epochs=10, lr=1e-2, random_state=0).fit(X, y)
    emb = clf.transform(X)
    emb /= np.linalg.norm(emb, axis=1).mean()
    clf.set_params(warm_start=True, **kw).fit(X, y)
    assert clf.index_.code_bytes_per_vector == 4
    # the codes decode near the trained embeddings, not near the random start's
    err = np.linalg.norm(clf.index_.reconstruct() - emb, axis=1).mean()
    assert err < 0.5 * np.linalg.norm(cold.index_.reconstruct() - emb, axis=1).mean()
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("method", ["pq", "opq"])
def test_loose_pq_tunes_the_codebooks_of_the_compressed_impostors(method):
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(8), 50)
    X = (rng.randn(len(y), 32) + 2.0 * np.eye(32)[y]).astype(np.float32)
    kw = dict(impostors="loose", index=method, code_size=4, embedding_dim=32, max_epochs=8, lr=1e-2,
              random_state=0)
    plain = ImpostorClassifier(codebook_epochs=0, **kw).fit(X, y)
    assert plain.codebook_history_ is None and plain.codebook_best_epoch_ is None
    tuned = ImpostorClassifier(codebook_epochs=15, n_iter_no_change=None, **kw).fit(X, y)
    assert len(tuned.codebook_history_) == 15 and 0 <= tuned.codebook_best_epoch_ <= 15
    # the same network and codes; only the codebooks moved
    np.testing.assert_array_equal(tuned.transform(X), plain.transform(X))
    np.testing.assert_array_equal(tuned.index_.pq_codebooks()[1], plain.index_.pq_codebooks()[1])
    assert tuned.index_.code_bytes_per_vector == 4
    losses = [h["loss"] for h in tuned.codebook_history_]
    assert losses[-1] < losses[0]  # eq. (4) on the decoded impostors goes down
    if tuned.codebook_best_epoch_ == 0:  # the held-out samples preferred the untuned codebooks
        np.testing.assert_array_equal(tuned.index_.reconstruct(), plain.index_.reconstruct())
    else:
        assert not np.allclose(tuned.index_.reconstruct(), plain.index_.reconstruct())
    # prediction uses the tuned codebooks, and they survive a joblib round trip
    buf = io.BytesIO()
    joblib.dump(tuned, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).predict_proba(X), tuned.predict_proba(X))


def test_codebook_tuning_lowers_the_training_loss_of_the_decoded_impostors():
    """Without held-out samples every tuning epoch is kept: the eq.-(4) loss of the final
    embeddings against the decoded impostors is lower than with the untuned codebooks."""
    rng = np.random.RandomState(1)
    y = np.repeat(np.arange(8), 40)
    X = (rng.randn(len(y), 16) + 1.5 * np.eye(16)[y % 16]).astype(np.float32)
    kw = dict(impostors="loose", index="pq", code_size=2, embedding_dim=16, max_epochs=5, lr=1e-2,
              validation_fraction=0, random_state=0)
    plain = ImpostorClassifier(codebook_epochs=0, **kw).fit(X, y)
    tuned = ImpostorClassifier(codebook_epochs=10, **kw).fit(X, y)
    assert tuned.codebook_best_epoch_ == 10
    emb, t = torch.from_numpy(tuned.transform(X)), torch.as_tensor(y)
    own = torch.arange(len(y))

    def loss(clf):
        c = torch.from_numpy(clf.index_.reconstruct())
        return impostor_loss(emb, t, c, torch.as_tensor(clf.impostor_labels_), clf.sigma, own=own).mean().item()

    assert loss(tuned) < 0.95 * loss(plain)


def test_end_to_end_loose_pq_tunes_the_codebooks_on_the_final_cnn_embeddings():
    X, y = make_fine_grained(n_classes=4, n_per_class=75, image_size=32, random_state=0)
    clf = ImpostorClassifier(extractor=CNNFeatureExtractor(image_size=32), impostors="loose", index="pq", code_size=8,
                             embedding_dim=64, trainable_blocks=1, max_epochs=2, codebook_epochs=3, augment=False,
                             validation_fraction=0.1, random_state=0).fit(X, y)
    assert len(clf.codebook_history_) == 3 and clf.index_.code_bytes_per_vector == 8
    assert clf.index_.n_vectors_ == len(clf.impostor_labels_) < len(y)  # held-out samples do not vote (loose)
    assert np.isfinite(clf.predict_proba(X[:5])).all()


def test_tiny_sigma_keeps_probabilities_finite(features):
    X, y = features
    clf = small(sigma=1e-3, max_epochs=2).fit(X, y)
    proba = clf.predict_proba(X * 100)  # far away from every impostor: all kernels underflow
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert np.isfinite(clf.open_set_score(X)).all()


def test_errors_name_the_problem(features):
    X, y = features
    with pytest.raises(ValueError, match="sigma"):
        ImpostorClassifier(sigma=0).fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ImpostorClassifier().fit(X, np.zeros(len(X)))
    clf = small(max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :4])
    with pytest.raises(ValueError, match="code_size=3 must divide"):
        ImpostorClassifier(impostors="fixed", index="pq", code_size=3, embedding_dim=16).fit(np.r_[X, X, X], np.r_[y, y, y])
    with pytest.raises(ValueError, match="codebook_epochs"):
        ImpostorClassifier(codebook_epochs=-1).fit(X, y)


def test_open_set_score_is_prediction_entropy(features):
    X, y = features
    clf = small().fit(X, y)
    np.testing.assert_allclose(clf.open_set_score(X), entropy(clf.predict_proba(X)))


@pytest.fixture
def last_stage_inputs():
    """Number of images entering the last convolution (320 -> 1280) of any EfficientNet-Lite0."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    seen = []

    def hook(module, inputs):
        if isinstance(module, torch.nn.Conv2d) and (module.in_channels, module.out_channels) == (320, 1280):
            seen.append(inputs[0].shape[0])

    handle = register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


@pytest.mark.parametrize("head_epochs", [0, 2])
def test_end_to_end_fit_runs_the_cnn_once_per_image_before_training(images, last_stage_inputs, head_epochs):
    # standardisation, the head warm-up and the initial impostors share one pass
    X, y = images
    clf = small(impostors="loose", extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=1, max_epochs=1,
                head_epochs=head_epochs, n_iter_no_change=None).fit(X, y)
    n_val = round(0.1 * len(X))
    # the pass before training, one augmented epoch over the training images, the
    # validation images (loose: no pass after training); +1: the extractor's channel probe
    assert sum(last_stage_inputs) == len(X) + (len(X) - n_val) + n_val + 1
    assert clf.score(X, y) > 0.3


def test_grid_search_over_sigma_extracts_each_image_once(images, stem_inputs):
    X, y = images
    # (a torch engine: the stem hook counts its forward passes; onnxruntime runs no torch module)
    pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=40, engine="fused")),
                     ("clf", small(impostors="fixed", embedding_dim=None))])
    search = GridSearchCV(pipe, {"clf__sigma": [0.2, 0.5, 1.0]}, cv=2).fit(X, y)
    # 3 sigmas x 2 folds + the refit: 7 fits, yet every image goes through the CNN once
    assert sum(n for n in stem_inputs if n > 1) == len(X)
    assert search.best_params_["clf__sigma"] in (0.2, 0.5, 1.0)
    assert search.best_estimator_.named_steps["clf"].n_iter_ == 0  # fixed, no projection: nothing to train


def test_end_to_end_trains_requested_stages_and_round_trips(images):
    X, y = images
    ext = CNNFeatureExtractor(image_size=40)
    clf = small(extractor=ext, trainable_blocks=1, embedding_dim=None, max_epochs=2, lr=1e-2).fit(X, y)
    before = CNNFeatureExtractor(image_size=40).fit().network_.state_dict()
    after = clf.module_.trunk.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k]) and before[k].is_floating_point()}
    assert changed == {clf.module_.stages[-1]}
    assert clf.transform(X).shape == (len(X), ext.fit().n_features_out_)
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).predict_proba(X), clf.predict_proba(X))


@pytest.mark.parametrize("make", [lambda **kw: small(**kw),
                                  lambda **kw: SoftmaxClassifier(random_state=0, optimizer="adam", lr=3e-3, **kw)],
                         ids=["impostor", "softmax"])
def test_head_epochs_train_the_head_on_frozen_features_before_fine_tuning(images, monkeypatch, make):
    X, y = images
    clf = make(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=1, head_epochs=3, max_epochs=2,
               n_iter_no_change=None)
    calls = []
    train = type(clf)._train

    def spy(self, ctx, *args, **kw):
        calls.append((ctx.net, type(ctx.data).__name__, [p.detach().clone() for p in ctx.net.head.parameters()]))
        return train(self, ctx, *args, **kw)

    monkeypatch.setattr(type(clf), "_train", spy)
    clf.fit(X, y)
    (head_net, head_data, head_start), (net, data, tune_start) = calls
    assert (head_data, data) == ("FeatureData", "ImageData")
    assert head_net.trunk is None and net is clf.module_ and head_net.head is net.head
    # fine-tuning starts from the head the first phase trained, not from its random start
    assert any(not torch.equal(a, b) for a, b in zip(head_start, tune_start))
    assert [h["epoch"] for h in clf.history_] == [1, 2, 3, 4, 5] and clf.n_iter_ == 5
    assert clf.score(X, y) > 0.5


def test_a_prebuilt_sharded_index_votes_as_the_models_own_impostors(features, monkeypatch):
    from skfg.index import NearestNeighborIndex, ShardedIndex

    X, y = features
    clf = small(n_neighbors=5, index="exact").fit(X, y)
    expected = clf.predict_proba(X)
    vectors, labels = clf.index_.reconstruct(), clf.classes_[clf.impostor_labels_]
    halves = [NearestNeighborIndex("exact").fit(vectors[:40]), NearestNeighborIndex("exact").fit(vectors[40:])]
    for half in halves:  # the search path never decodes a (possibly huge) index
        monkeypatch.setattr(half, "reconstruct", lambda: pytest.fail("reconstructed the prebuilt index"))
    clf.set_impostors(ShardedIndex(halves), labels)
    assert clf.index_.n_vectors_ == len(labels)
    np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=1e-5, atol=1e-7)
    # a larger collection: the training impostors plus three "owl"s on every query's embedding
    E = clf.transform(X)
    more = NearestNeighborIndex("exact").fit(np.r_[vectors, E, E, E])
    clf.set_impostors(more, np.r_[labels, np.full(3 * len(X), "owl")])
    assert (clf.predict(X) == "owl").mean() > 0.9


def test_set_impostors_refuses_what_it_cannot_use(features):
    from skfg.index import NearestNeighborIndex

    X, y = features
    clf = small(n_neighbors=5).fit(X, y)
    vectors = clf.transform(X)
    with pytest.raises(ValueError, match="classes the model does not know: \\['eel'\\]"):
        clf.set_impostors(NearestNeighborIndex().fit(vectors), np.append(y[:-1], "eel"))
    with pytest.raises(ValueError, match="one entry per indexed vector"):
        clf.set_impostors(NearestNeighborIndex().fit(vectors), y[:-1])
    with pytest.raises(ValueError, match="dimensional embeddings"):
        clf.set_impostors(NearestNeighborIndex().fit(X[:, :3]), y)
    with pytest.raises(ValueError, match="needs n_neighbors"):
        clf.set_params(n_neighbors=None).set_impostors(NearestNeighborIndex().fit(vectors), y)


def test_impostor_label_smoothing_is_applied_in_training():
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 20)
    X = (4 * np.eye(6)[y] + rng.randn(60, 6)).astype(np.float32)
    plain = ImpostorClassifier(embedding_dim=4, max_epochs=3, random_state=0).fit(X, y)
    again = ImpostorClassifier(embedding_dim=4, max_epochs=3, random_state=0, label_smoothing=0.0).fit(X, y)
    smooth = ImpostorClassifier(embedding_dim=4, max_epochs=3, random_state=0, label_smoothing=0.1).fit(X, y)
    assert [h["loss"] for h in plain.history_] == [h["loss"] for h in again.history_]
    assert all(s["loss"] > p["loss"] for s, p in zip(smooth.history_, plain.history_))


def test_a_compressed_index_too_small_fails_before_any_training(easy_blobs, monkeypatch):
    X, y = easy_blobs
    trained = []
    monkeypatch.setattr("skfg._classifier.fit_loop", lambda *a, **k: trained.append(1))
    for scheme in ("fixed", "loose", "tied"):
        with pytest.raises(ValueError, match="needs at\\s+least 256 vectors"):
            ImpostorClassifier(impostors=scheme, index="pq", code_size=4, embedding_dim=8, max_epochs=3).fit(X, y)
    assert not trained
