"""ELoPE inside SoftmaxClassifier: the embedding layer's loss (eq. 1, 5-10) and learned
weighted k-max pooling (eq. 4) with the two-step schedule."""

import io

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skfg import CNNFeatureExtractor, EarlyExitClassifier, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg._data import FeatureData, FitContext
from skfg.losses import ClassMeanLoss, center_loss, class_mean_loss


@pytest.fixture(scope="module")
def blobs():
    """Three overlapping Gaussian classes in 8-D."""
    rng = np.random.RandomState(0)
    centres = rng.randn(3, 8) * 1.5
    y = np.repeat([0, 1, 2], 60)
    return rng.randn(180, 8) + centres[y], y


@pytest.fixture(scope="module")
def images():
    return make_fine_grained(n_classes=3, n_per_class=8, image_size=40, random_state=0)


def normalised_embeddings(clf, X):
    net = clf.module_
    with torch.no_grad():
        return F.normalize(net.head[0](net.features(torch.as_tensor(X, dtype=torch.float32))), dim=1).numpy()


def test_embedding_loss_needs_an_embedding_layer(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="embedding_dim"):
        SoftmaxClassifier(embedding_loss="class_means").fit(X, y)
    with pytest.raises(ValueError, match="embedding_loss"):
        SoftmaxClassifier(embedding_dim=4, embedding_loss="triplet").fit(X, y)


def test_zero_weight_embedding_loss_is_the_plain_softmax(blobs):
    X, y = blobs
    plain = SoftmaxClassifier(embedding_dim=16, max_epochs=5, random_state=0).fit(X, y)
    zero = SoftmaxClassifier(embedding_dim=16, embedding_loss="class_means", embedding_loss_weight=0.0,
                             max_epochs=5, random_state=0).fit(X, y)
    np.testing.assert_allclose(zero.predict_proba(X), plain.predict_proba(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["class_means", "within", "center"])
def test_training_loss_is_cross_entropy_plus_lambda_embedding_loss(blobs, kind):
    """The mini-batch loss equals eq. (1) computed by hand, and the means advance by eq. (6)."""
    X, y = blobs
    clf = SoftmaxClassifier(embedding_dim=8, embedding_loss=kind, embedding_loss_weight=2.0, max_epochs=1,
                            random_state=0).fit(X, y)
    net = clf.module_
    rng = np.random.RandomState(1)
    means = torch.as_tensor(rng.randn(3, 8), dtype=torch.float32)
    aux = ClassMeanLoss(kind, alpha=0.5, gamma=16.0, margin=0.75)  # the loss object the fit builds
    aux.means = means.clone()
    x, t = torch.as_tensor(X[:12], dtype=torch.float32), torch.as_tensor(y[:12])
    w = torch.ones(12)
    ctx = FitContext(net, FeatureData(X, "cpu"), y, None, None, None, None, "cpu", aux=aux)
    loss = clf._training_loss(ctx, (x, t, w, None))
    emb = net.head[0](net.features(x))
    ce = F.cross_entropy(net.head[1:](emb), t)
    if kind == "center":
        expected, new = center_loss(emb, t, means, alpha=0.5)
    else:
        expected, new = class_mean_loss(emb, t, means, alpha=0.5, gamma=16.0 if kind == "class_means" else 0.0,
                                        margin=0.75)
    torch.testing.assert_close(loss, ce + 2.0 * expected)
    torch.testing.assert_close(aux.means, new)  # the stored means moved (eq. 6-7)
    assert not torch.equal(aux.means, means)


def test_class_mean_loss_tightens_the_classes(blobs):
    """Within-class spread relative to the distance between class means shrinks (section 4)."""
    X, y = blobs

    def spread(clf):
        f = normalised_embeddings(clf, X)
        mu = np.stack([f[y == c].mean(0) for c in range(3)])
        within = np.mean([np.sum((f[y == c] - mu[c]) ** 2, 1).mean() for c in range(3)])
        between = np.mean([np.sum((mu[a] - mu[b]) ** 2) for a in range(3) for b in range(a + 1, 3)])
        return within / between

    common = dict(embedding_dim=16, max_epochs=30, validation_fraction=0, random_state=0)
    plain = SoftmaxClassifier(**common).fit(X, y)
    elope = SoftmaxClassifier(embedding_loss="class_means", **common).fit(X, y)
    assert spread(elope) < 0.7 * spread(plain)  # measured: 0.036 vs 0.069
    # the tracked means follow the final embeddings' class means (updated every batch)
    f = normalised_embeddings(elope, X)
    mu = np.stack([f[y == c].mean(0) for c in range(3)])
    cos = np.sum(mu * elope.class_means_, 1) / np.linalg.norm(mu, axis=1) / np.linalg.norm(elope.class_means_, axis=1)
    assert cos.min() > 0.95
    assert plain.class_means_ is None


def test_zero_weight_samples_do_not_move_the_class_means(blobs):
    X, y = blobs
    w = np.where(y == 2, 0.0, 1.0)
    clf = SoftmaxClassifier(embedding_dim=8, embedding_loss="class_means", max_epochs=3, validation_fraction=0,
                            random_state=0)
    clf.fit(X, y, sample_weight=w)
    f = normalised_embeddings(clf, X[y == 2])
    init = clf.class_means_[2]
    assert np.isfinite(clf.class_means_).all()
    # the mean of class 2 kept its initial value: it is not the mean of the final embeddings
    assert np.linalg.norm(init - f.mean(0)) > 1e-3


def test_weighted_kmax_extractor_features_equal_kmax(images):
    X, _ = images
    a = CNNFeatureExtractor(image_size=40, pooling="kmax", k=3, cache=False).fit().transform(X)
    b = CNNFeatureExtractor(image_size=40, pooling="kmax_weighted", k=3, cache=False).fit().transform(X)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # (two onnxruntime graphs: float32 rounding apart)


def test_weighted_kmax_weights_are_learned_and_pickled(images):
    X, y = images
    ext = CNNFeatureExtractor(image_size=40, pooling="kmax_weighted", k=3)
    clf = SoftmaxClassifier(extractor=ext, trainable_blocks=1, augment=False, lr=1e-2, max_epochs=3,
                            random_state=0).fit(X, y)
    (weights,) = clf.module_.pool_parameters()
    assert weights.shape == (3,)
    assert not torch.allclose(weights, torch.ones(3))
    blob = io.BytesIO()
    joblib.dump(clf, blob)
    blob.seek(0)
    back = joblib.load(blob)
    torch.testing.assert_close(back.module_.pool_parameters()[0], weights)
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


def test_two_step_schedule_trains_the_weights_only_in_the_second_step(images, monkeypatch):
    X, y = images
    seen = []
    original = SoftmaxClassifier._train

    def recording(self, ctx, *args, **kwargs):
        result = original(self, ctx, *args, **kwargs)
        rates = kwargs.get("lr_scale", 1.0), kwargs.get("lr_scale", 1.0) * kwargs.get("pool_lr_scale", 1.0)
        seen.append((ctx.net.pool_parameters()[0].detach().clone(), rates, len(result["history"])))
        return result

    monkeypatch.setattr(SoftmaxClassifier, "_train", recording)
    ext = CNNFeatureExtractor(image_size=40, pooling="kmax_weighted", k=4)
    clf = SoftmaxClassifier(extractor=ext, trainable_blocks=1, augment=False, lr=1e-2, max_epochs=2,
                            kmax_weight_epochs=2, validation_fraction=0, head_epochs=0, random_state=0).fit(X, y)
    (w1, scale1, n1), (w2, scale2, n2) = seen
    torch.testing.assert_close(w1, torch.ones(4))  # step 1: plain k-max
    assert not torch.allclose(w2, torch.ones(4))
    # (everything, pool weights) relative to lr: step 2 tunes at lr / 10, the new weights at lr
    assert (scale1, scale2) == ((1.0, 1.0), (0.1, 1.0))
    assert (n1, n2) == (2, 2) and clf.n_iter_ == 4 and [h["epoch"] for h in clf.history_] == [1, 2, 3, 4]
    assert clf.best_epoch_ == 4


def test_kmax_weight_epochs_needs_weighted_pooling(images):
    X, y = images
    with pytest.raises(ValueError, match="kmax_weighted"):
        SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=40, pooling="kmax"), kmax_weight_epochs=2).fit(X, y)
    with pytest.raises(ValueError, match="kmax_weighted"):
        SoftmaxClassifier(kmax_weight_epochs=2).fit(np.random.rand(20, 3), np.arange(20) % 2)


def test_early_exit_fine_tuning_refuses_weighted_pooling(images):
    X, y = images
    ext = CNNFeatureExtractor(layers=["stage6", "head"], image_size=40, pooling="kmax_weighted")
    with pytest.raises(ValueError, match="kmax_weighted"):
        EarlyExitClassifier(extractor=ext, fine_tune_epochs=1).fit(X, y)


def test_end_to_end_with_embedding_loss_and_weighted_pooling(images):
    X, y = images
    ext = CNNFeatureExtractor(image_size=40, pooling="kmax_weighted")
    clf = SoftmaxClassifier(embedding_dim=16, embedding_loss="class_means", extractor=ext, trainable_blocks=1,
                            max_epochs=2, random_state=0).fit(X, y)
    assert clf.class_means_.shape == (3, 16)
    np.testing.assert_allclose(clf.predict_proba(X).sum(1), 1, rtol=1e-6)
