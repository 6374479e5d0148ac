"""The shared plumbing under the estimators: the held-out split, all-or-nothing fits,
the image-batch iterator, the backbone registry and loss objects."""

import numpy as np
import pytest
import torch
from torch import nn

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg._base import atomic_fit, holdout_split
from skfg.backbones import build_backbone, register_backbone
from skfg.images import ImageSource, eval_transform, iter_inputs
from skfg.losses import ClassMeanLoss


def test_holdout_split_is_stratified_when_every_class_can_be_split():
    y = np.repeat([0, 1, 2], [10, 6, 4])
    train, held = holdout_split(len(y), 5, y, random_state=0)
    assert len(held) == 5 and sorted(np.r_[train, held]) == list(range(20))
    assert set(y[held]) == {0, 1, 2} and (np.diff(held) > 0).all()  # every class, sorted
    again = holdout_split(len(y), 5, y, random_state=0)
    np.testing.assert_array_equal(held, again[1])


def test_holdout_split_without_labels_or_room():
    train, held = holdout_split(10, 3, random_state=1)  # no labels: a plain shuffle split
    assert len(train) == 7 and len(held) == 3
    for n_holdout in (0, 10):
        train, held = holdout_split(10, n_holdout)
        assert held is None and list(train) == list(range(10))
    y = np.array([0, 0, 1, 1, 2, 2, 3])  # class 3 has one sample: not stratified, still split
    assert len(holdout_split(len(y), 2, y, random_state=0)[1]) == 2


class _Counter:
    def __init__(self):
        self.fits = 0

    @atomic_fit
    def fit(self, fail):
        self.fits += 1
        self.model_ = "half"
        if fail:
            raise RuntimeError("boom")
        return self


def test_atomic_fit_restores_the_estimator_when_fit_raises():
    est = _Counter().fit(False)
    with pytest.raises(RuntimeError, match="boom"):
        est.fit(True)
    assert est.fits == 1 and est.model_ == "half"
    fresh = _Counter()
    with pytest.raises(RuntimeError):
        fresh.fit(True)
    assert fresh.fits == 0 and not hasattr(fresh, "model_")


def test_iter_inputs_yields_normalised_channels_last_batches():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(5, 20, 24, 3), dtype=np.uint8)
    batches = list(iter_inputs(ImageSource(X), eval_transform(16), 2, (0.5,) * 3, (0.5,) * 3, "cpu"))
    assert [len(i) for i, _ in batches] == [2, 2, 1]
    x = batches[0][1]
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def _tiny_split(model):
    return list(model), None


@register_backbone("test_tiny_cnn", stages=("conv1", "conv2"), split=_tiny_split, overwrite=True)
def _tiny_cnn():
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU()),
                         nn.Sequential(nn.Conv2d(8, 16, 3, stride=2), nn.ReLU()))


def test_a_registered_backbone_serves_the_extractor_and_fine_tuning():
    X = np.random.RandomState(0).randint(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 6)
    ext = CNNFeatureExtractor("test_tiny_cnn", weights=None, layers=["conv1", "conv2"], image_size=32, cache=False)
    assert ext.fit().transform(X).shape == (12, 24)
    clf = SoftmaxClassifier(extractor=ext, trainable_blocks=1, max_epochs=2, random_state=0).fit(X, y)
    assert clf.predict(X).shape == (12,)
    with pytest.raises(ValueError, match="registered already"):
        register_backbone("test_tiny_cnn", stages=("a",), split=_tiny_split)
    with pytest.raises(ValueError, match="no registered ImageNet weights"):
        build_backbone("test_tiny_cnn")


def test_a_split_that_disagrees_with_the_stage_names_is_refused():
    register_backbone("test_bad_cnn", stages=("a", "b", "c"), split=_tiny_split, overwrite=True)(_tiny_cnn)
    with pytest.raises(ValueError, match="2 stage modules for the 3 registered stage names"):
        build_backbone("test_bad_cnn", weights=None)


def test_set_network_swaps_the_trunk_and_the_cache_key():
    ext = CNNFeatureExtractor("test_tiny_cnn", weights=None, image_size=32).fit()
    key = ext._cache_key()
    other = build_backbone("test_tiny_cnn", weights=None)
    with torch.no_grad():
        other.stages["conv1"][0].weight.add_(1.0)
    assert ext.set_network(other).network_ is other and ext._cache_key() != key
    assert not any(p.requires_grad for p in other.parameters())
    with pytest.raises(ValueError, match="same architecture"):
        ext.set_network(build_backbone("mobilenet_v3_small", weights=None))


def test_an_embedding_loss_object_equals_its_name():
    rng = np.random.RandomState(0)
    X = np.repeat(3 * np.eye(6)[:3], 20, axis=0) + rng.randn(60, 6)
    y = np.repeat([0, 1, 2], 20)
    common = dict(embedding_dim=8, max_epochs=3, random_state=0)
    by_name = SoftmaxClassifier(embedding_loss="center", class_mean_rate=0.3, **common).fit(X, y)
    loss = ClassMeanLoss("center", alpha=0.3)
    by_object = SoftmaxClassifier(embedding_loss=loss, **common).fit(X, y)
    np.testing.assert_array_equal(by_name.predict_proba(X), by_object.predict_proba(X))
    np.testing.assert_array_equal(by_name.class_means_, by_object.class_means_)
    assert loss.means.numel() == 0  # the parameter is not trained: a copy is
