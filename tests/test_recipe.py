"""The fine-tuning recipe's plumbing (issue 20): the decode-once tensor cache, tensor
augmentation, warm-up + cosine per step, no decay on 1-d parameters, mixed precision
with its fallbacks, the EMA of the weights, "auto" settings, reproducibility."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from torch import nn

from skfg import CNNFeatureExtractor, ImpostorClassifier, SoftmaxClassifier
from skfg._training import fit_loop, make_optimizer, make_scheduler, resolve_precision
from skfg.datasets import make_fine_grained
from skfg.images import Augmentation, ImageCache, ImageDecodeError, ImageSource, cache_transform


@pytest.fixture(scope="module")
def images():
    return make_fine_grained(n_classes=3, n_per_class=8, image_size=40, random_state=0)


@pytest.fixture()
def image_files(tmp_path, images):
    X, y = images
    paths = []
    for i, img in enumerate(X):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return np.array(paths, dtype=object), y


def small(**kw):
    return SoftmaxClassifier(**{"extractor": CNNFeatureExtractor(image_size=40), "max_epochs": 2,
                                "random_state": 0, **kw})


# ------------------------------------------------------------------ the image cache
def test_each_training_file_is_decoded_once_per_fit(image_files, monkeypatch):
    X, y = image_files
    opened = []
    load = ImageSource.load
    monkeypatch.setattr(ImageSource, "load", lambda self, i, draft=None: opened.append(self.name(i)) or load(self, i, draft))
    clf = small(max_epochs=3).fit(X, y)
    assert clf.n_iter_ == 10 + 3  # the head's 10 epochs on the cached features, then fine-tuning
    # resize="squash" (the default): the crops are taken from the image as prediction
    # sees it, used for standardisation and validation too: one decode in all
    assert sorted(opened) == sorted(X)
    opened.clear()
    small(max_epochs=3, extractor=CNNFeatureExtractor(image_size=40, resize="crop")).fit(X, y)
    # resize="crop": the whole image for the crops, the centre crop for prediction
    assert sorted(opened) == sorted(list(X) * 2)


def test_image_cache_stays_within_its_bound_and_still_serves_every_image(images):
    X, _ = images
    source = ImageSource(X)
    tf = cache_transform(40)
    one = tf(source.load(0)).nbytes
    cache = ImageCache(source, tf, max_bytes=3 * one)
    for _ in range(2):
        for i in range(len(X)):
            assert cache[i].shape == (3, 40, 40)
    assert cache.nbytes <= 3 * one
    assert cache.n_decoded == 3 + 2 * (len(X) - 3)  # the 3 kept ones once, the rest every time


def test_a_corrupt_training_file_is_named_and_nothing_is_fitted(image_files, tmp_path):
    X, y = image_files
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    X = X.copy()
    X[5] = str(bad)
    clf = small()
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


def test_cache_transform_never_enlarges_and_keeps_the_whole_image():
    img = Image.new("RGB", (300, 100))
    assert tuple(cache_transform(50)(img).shape) == (3, 50, 150)  # shrunk, aspect kept
    assert tuple(cache_transform(160)(img).shape) == (3, 100, 300)  # small images stay as they are
    assert tuple(cache_transform(50, "squash")(img).shape) == (3, 50, 50)


# ------------------------------------------------------------------ augmentation
def test_augmentation_crops_at_the_train_size_and_checks_its_settings():
    aug = Augmentation()
    assert aug.crop_size(160) == 128
    out = aug.image_transform(160)(torch.randint(0, 256, (3, 160, 300), dtype=torch.uint8))
    assert out.shape == (3, 128, 128) and out.dtype == torch.uint8
    x = torch.randn(4, 3, 8, 8)
    assert Augmentation(erasing=0.0).batch_transform() is None
    assert Augmentation(erasing=1.0).batch_transform()(x).shape == x.shape
    for bad in [dict(crop_ratio=0), dict(scale=(0.5, 0.2)), dict(erasing=2.0), dict(ratio=(0, 1))]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            Augmentation(**bad).check()
    assert repr(Augmentation(erasing=0.25)) == "Augmentation(erasing=0.25)"
    assert not Augmentation().trivial_augment and Augmentation().batch_transform() is None  # chosen on val
    assert Augmentation(flip=False) == Augmentation(flip=False) != Augmentation()


def test_an_augmentation_object_is_a_parameter_that_clones(images):
    X, y = images
    clf = small(augment=Augmentation(trivial_augment=True, erasing=0.25))
    twin = clone(clf)
    assert twin.augment == clf.augment and twin.augment is not clf.augment
    twin.fit(X, y)
    with pytest.raises(ValueError, match="crop_ratio"):
        small(augment=Augmentation(crop_ratio=-1)).fit(X, y)


def test_seeded_cpu_runs_with_augmentation_are_bit_reproducible(images):
    X, y = images
    a, b = small().fit(X, y), small().fit(X, y)
    sa, sb = a.module_.state_dict(), b.module_.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = small(random_state=1).fit(X, y).module_.state_dict()
    assert any(not torch.equal(sa[k], c[k]) for k in sa)


# ------------------------------------------------------------------ the schedule and optimiser
def test_warmup_lasts_at_least_min_warmup_steps_but_at_most_half_the_training():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)

    def warm_steps(**kw):
        sched = make_scheduler(opt, "constant", **kw)
        lrs = []
        for _ in range(kw["max_epochs"] * kw["steps_per_epoch"]):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return sum(lr < 1.0 for lr in lrs) + 1  # the warm-up's last step is at the peak

    assert warm_steps(max_epochs=22, steps_per_epoch=9, warmup_epochs=1) == 9  # no floor: one epoch
    assert warm_steps(max_epochs=22, steps_per_epoch=9, warmup_epochs=1, min_warmup_steps=100) == 99  # half
    assert warm_steps(max_epochs=10, steps_per_epoch=9, warmup_epochs=1, min_warmup_steps=100) == 45  # half
    assert warm_steps(max_epochs=22, steps_per_epoch=76, warmup_epochs=2, min_warmup_steps=100) == 152
    assert make_scheduler(opt, "constant", 10, 9, warmup_epochs=0, min_warmup_steps=100) is None


def test_warmup_then_cosine_per_step():
    opt = make_optimizer([{"params": nn.Linear(1, 1).parameters()}], "sgd", lr=1.0)
    sched = make_scheduler(opt, "cosine", max_epochs=3, steps_per_epoch=4, warmup_epochs=1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(lrs[4:], 0.5 * (1 + np.cos(np.pi * np.arange(8) / 8)))
    assert make_scheduler(opt, "constant", 3, 4, warmup_epochs=1) is not None


def test_auto_settings_follow_the_mode():
    feats, tuned = SoftmaxClassifier(), SoftmaxClassifier(extractor=CNNFeatureExtractor())
    assert (feats._setting("optimizer"), feats._setting("lr"), feats._setting("max_epochs")) == ("adam", 3e-3, 60)
    assert (tuned._setting("optimizer"), tuned._setting("trainable_blocks")) == ("adamw", "all")
    assert (tuned._setting("lr"), tuned._setting("weight_decay"), feats._setting("weight_decay")) == (3e-3, 0.05, 1e-4)
    # the other estimators keep their own optimiser and its weight decay (0.05 is for AdamW only)
    assert ImpostorClassifier(extractor=CNNFeatureExtractor())._setting("weight_decay") == 1e-4
    assert tuned._setting("label_smoothing") == 0.1
    assert (feats._setting("head_epochs"), tuned._setting("head_epochs")) == (0, 10)
    assert SoftmaxClassifier(extractor=CNNFeatureExtractor(), head_epochs=0)._setting("head_epochs") == 0
    assert SoftmaxClassifier(extractor=CNNFeatureExtractor(), lr=0.5)._setting("lr") == 0.5


# ------------------------------------------------------------------ precision and EMA
def test_precision_falls_back_cleanly(monkeypatch):
    assert resolve_precision("auto", "cpu") is None
    assert resolve_precision("float32", "cpu") is None
    assert resolve_precision("auto", "cuda:0") == torch.float16
    with pytest.warns(UserWarning, match="needs a CUDA device"):
        assert resolve_precision("float16", "cpu") is None
    import skfg._training as training

    monkeypatch.setattr(training, "_cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        assert resolve_precision("bfloat16", "cpu") is None
    monkeypatch.setattr(training, "_cpu_has_bf16", lambda: True)
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float32"):
        resolve_precision("half", "cpu")


def test_a_model_trained_under_bf16_autocast_pickles_and_predicts_in_float32(images, monkeypatch):
    import skfg._training as training

    monkeypatch.setattr(training, "_cpu_has_bf16", lambda: True)  # autocast runs (emulated) on any CPU
    X, y = images
    clf = small(precision="bfloat16", max_epochs=1).fit(X, y)
    assert all(p.dtype == torch.float32 for p in clf.module_.parameters())
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float64 and np.isfinite(proba).all()
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), proba)


def test_ema_weights_are_the_moving_average_of_the_trajectory():
    torch.manual_seed(0)
    module = nn.Linear(2, 1)
    opt = make_optimizer([{"params": module.parameters()}], "sgd", lr=0.1, momentum=0)
    batches = [torch.randn(4, 2) for _ in range(3)]
    trajectory = []

    def step(x):
        trajectory.append(None)
        return (module(x) - 1).pow(2).mean(), len(x)

    seen = []
    orig_step = opt.step

    def recording_step(*a, **k):
        out = orig_step(*a, **k)
        seen.append(module.weight.detach().clone())
        return out

    opt.step = recording_step
    fit_loop(module, batches, step, optimizer=opt, max_epochs=2, ema_decay=0.5)
    expected = seen[0]
    for w in seen[1:]:
        expected = 0.5 * expected + 0.5 * w
    torch.testing.assert_close(module.weight.detach(), expected)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_batchnorm_keeps_the_running_statistics_and_trains_the_rest(images, freeze):
    X, y = images
    clf = small(trainable_blocks="all", freeze_batchnorm=freeze).fit(X, y)
    pre = CNNFeatureExtractor(image_size=40).fit().network_
    bns = [(n, m) for n, m in clf.module_.trunk.named_modules() if isinstance(m, nn.BatchNorm2d)]
    before = dict(pre.named_modules())
    same_stats = all(torch.equal(m.running_var, before[n].running_var) for n, m in bns)
    moved_weights = any(not torch.equal(m.weight, before[n].weight) for n, m in bns)
    assert same_stats is freeze and moved_weights
    assert not clf.module_.training and all(not m.training for _, m in bns)


def test_only_the_stages_in_use_are_given_to_the_optimizer():
    ext = CNNFeatureExtractor(image_size=40, layers=["stage5"]).fit()
    net = small(extractor=ext)._build_network(ext.n_features_out_, 3, ext.network_, ext.trunk_settings())
    given = {id(p) for p in net.trunk_parameters()}
    used = {id(p) for name in net.stages for p in ext.network_.stages[name].parameters()}
    assert given == used and len(net.stages) < len(ext.network_.stage_names)


# ------------------------------------------------------------------ small training sets (issue 46)
def test_small_set_rule_by_hand():
    """The peak rate and the held-out split follow the training labels when fine-tuning."""
    from skfg._training import small_set_lr_factor

    assert small_set_lr_factor(64) == small_set_lr_factor(76) == 1.0
    assert small_set_lr_factor(16) == 0.25 and small_set_lr_factor(9) == 9 / 64
    tuned = SoftmaxClassifier(extractor=CNNFeatureExtractor())
    # 10 classes x 10 images: 10 held out (one a class), 90 train in batches of 90 // 8 = 11,
    # ceil(90 / 11) = 9 an epoch, so 3e-3 * 9 / 64
    small_y = np.repeat(np.arange(10), 10)
    assert tuned.resolved_param("validation_fraction", small_y) == 0.1
    assert tuned.resolved_param("batch_size", small_y) == 11
    assert tuned.resolved_param("lr", small_y) == pytest.approx(3e-3 * 9 / 64)
    # the recipe's set: 98 classes, 2,403 images: every image trains, 76 batches of 32, the full rate
    full_y = np.arange(2403) % 98
    assert tuned.resolved_param("validation_fraction", full_y) == 0.0
    assert tuned.resolved_param("batch_size", full_y) == 32
    assert tuned.resolved_param("lr", full_y) == 3e-3 == tuned.resolved_param("lr")
    # fewer than an image a class to hold out: no split (and no comparison); 8 an epoch
    assert tuned.resolved_param("validation_fraction", np.repeat(np.arange(10), 5)) == 0.0
    # set by the user, or on features: as given
    assert SoftmaxClassifier(extractor=CNNFeatureExtractor(), lr=0.01).resolved_param("lr", small_y) == 0.01
    assert SoftmaxClassifier(extractor=CNNFeatureExtractor(), validation_fraction=0.0).resolved_param(
        "validation_fraction", small_y) == 0.0
    assert SoftmaxClassifier().resolved_param("lr", small_y) == 3e-3
    assert SoftmaxClassifier().resolved_param("validation_fraction", small_y) == 0.1


@pytest.fixture(scope="module")
def twenty_a_class():
    return make_fine_grained(n_classes=3, n_per_class=20, image_size=40, random_state=1)


def test_a_fine_tune_that_diverges_keeps_the_probe_and_says_so(twenty_a_class):
    X, y = twenty_a_class
    pretrained = CNNFeatureExtractor(image_size=40).fit().network_.state_dict()
    # a backbone rate of 30 wrecks the CNN's features (no guard to rescue it)
    clf = small(max_epochs=3, backbone_lr_scale=1e4, divergence_guard=None)
    with pytest.warns(RuntimeWarning, match="keeping that head and the pretrained CNN"):
        clf.fit(X, y)
    assert clf.fine_tuned_ is False
    assert clf.probe_comparison_["probe"] > clf.probe_comparison_["fine_tune"]
    trunk = {k[len("trunk."):]: v for k, v in clf.module_.state_dict().items() if k.startswith("trunk.")}
    assert trunk and all(torch.equal(v, pretrained[k]) for k, v in trunk.items())
    # then the probe alone, refitted on every image: its epochs only, no split to score
    assert clf.n_iter_ == clf.best_epoch_ == clf.resolved_param("head_epochs")
    assert all(h.get("val_score") is None for h in clf.history_)
    assert clf.score(X, y) >= 0.9  # the probe of the pretrained features separates the synthetic classes


def test_a_fine_tune_that_scores_as_well_as_the_probe_is_refitted_on_every_image(twenty_a_class):
    X, y = twenty_a_class
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        clf = small(max_epochs=3, trainable_blocks=1).fit(X, y)  # (its last epoch ties the probe: 4 of 6)
    assert clf.fine_tuned_ is True and clf.best_epoch_ == clf.n_iter_ == 13  # the whole schedule, the last epoch
    assert clf.probe_comparison_["fine_tune"] == clf.probe_comparison_["probe"]  # a tie keeps the fine-tune
    # the refit is the fit of every image: the same network as validation_fraction=0 gives
    every = small(max_epochs=3, trainable_blocks=1, validation_fraction=0.0).fit(X, y)
    assert every.probe_comparison_ is None
    np.testing.assert_allclose(clf.predict_proba(X), every.predict_proba(X), atol=1e-6)
    assert [h["loss"] for h in clf.history_] == [h["loss"] for h in every.history_]
    assert SoftmaxClassifier(max_epochs=2).fit(np.eye(3)[y % 3], y).fine_tuned_ is False  # features


def test_fit_loop_keeps_the_best_or_the_last_epoch():
    def run(keep):
        torch.manual_seed(0)
        module = nn.Linear(2, 1)
        x = torch.randn(8, 2)
        scores = iter([0.9, 0.5, 0.1])  # the first epoch validates best
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        result = fit_loop(module, [(x,)], lambda b: (module(b[0]).pow(2).mean(), 8), optimizer=opt, max_epochs=3,
                          validate=lambda: (next(scores), 0.0), patience=1, keep=keep)
        return module, result

    best, result = run("best")
    assert result["best_epoch"] == 1 and len(result["history"]) == 2  # stopped early, epoch 1's weights
    last, result = run("last")
    assert result["best_epoch"] == 3 and len(result["history"]) == 3  # patience counts no bad epoch
    assert not torch.equal(best.weight, last.weight)
    with pytest.raises(ValueError, match="keep must be"):
        fit_loop(nn.Linear(1, 1), [], lambda b: b, optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1),
                 max_epochs=1, keep="first")
