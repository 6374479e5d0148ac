import numpy as np
import pytest
import torch
from torch import nn

from skfg import SoftmaxClassifier
from skfg._training import fit_loop, make_generator, make_optimizer, make_scheduler
from PIL import Image
from skfg import CNNFeatureExtractor


@pytest.fixture
def blobs():
    rng = np.random.RandomState(0)
    centers = rng.randn(3, 6) * 3
    y = np.repeat([10, 20, 40], 40)  # non-contiguous integer labels
    X = centers[np.searchsorted([10, 20, 40], y)] + rng.randn(len(y), 6)
    return X.astype(np.float32), y


def toy_loop(scores, max_epochs=None, interrupt_at=None, **kw):
    """A loop whose validation scores are scripted; records the weights after each epoch."""
    module = nn.Linear(2, 1)
    opt = make_optimizer([{"params": module.parameters()}], "sgd", lr=0.1, momentum=0)
    snapshots, epoch = [], [0]
    batches = [torch.ones(4, 2)]

    def step(x):
        if interrupt_at is not None and epoch[0] + 1 == interrupt_at:
            raise KeyboardInterrupt
        return module(x).pow(2).mean() + 1.0, len(x)

    def validate():
        snapshots.append(module.weight.detach().clone())
        epoch[0] += 1
        return scores[epoch[0] - 1], 0.0

    result = fit_loop(module, batches, step, optimizer=opt, max_epochs=max_epochs or len(scores),
                      validate=validate, **kw)
    return module, snapshots, result


def test_optimizers_and_param_group_learning_rates():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.weight.requires_grad_(False)
    for name, cls in [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]:
        opt = make_optimizer([{"params": a.parameters()}, {"params": b.parameters(), "lr_scale": 0.1}], name, lr=0.5,
                             weight_decay=0.01)
        assert isinstance(opt, cls)
        # a's weight, a's bias (no decay on 1-d parameters), b's bias
        assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5, 0.05]
        assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0, 0.0]
        assert [len(g["params"]) for g in opt.param_groups] == [1, 1, 1]  # the frozen weight is left out
    with pytest.raises(ValueError, match="adam, adamw, sgd"):
        make_optimizer([{"params": a.parameters()}], "rmsprop")


def test_schedules():
    opt = make_optimizer([{"params": nn.Linear(1, 1).parameters()}], "sgd", lr=1.0)
    sched = make_scheduler(opt, "step", 8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert make_scheduler(opt, "constant", 8) is None


def test_early_stopping_restores_the_best_epoch():
    module, snaps, result = toy_loop([0.1, 0.5, 0.3, 0.2, 0.4, 0.1], patience=3)
    assert result["best_epoch"] == 2
    assert len(result["history"]) == 5  # epochs 3, 4, 5 brought nothing: stopped
    torch.testing.assert_close(module.weight, snaps[1])
    assert [h["val_score"] for h in result["history"]] == [0.1, 0.5, 0.3, 0.2, 0.4]


def test_interrupt_keeps_best_completed_epoch():
    with pytest.warns(RuntimeWarning, match="interrupted after 3 epochs"):
        module, snaps, result = toy_loop([0.2, 0.9, 0.5, 0.6, 0.7], interrupt_at=4)
    assert result["interrupted"] and result["best_epoch"] == 2
    torch.testing.assert_close(module.weight, snaps[1])  # not the half-updated epoch 4


def test_interrupt_in_first_epoch_raises():
    # no epoch finished, so there is no model to keep: the interrupt propagates
    with pytest.raises(KeyboardInterrupt):
        toy_loop([0.5], interrupt_at=1)


def test_nan_loss_is_a_clear_error():
    module = nn.Linear(1, 1)
    opt = make_optimizer([{"params": module.parameters()}], "sgd", lr=0.1)
    with pytest.raises(FloatingPointError, match="lower lr"):
        fit_loop(module, [0], lambda b: (torch.tensor(float("nan"), requires_grad=True), 1), optimizer=opt, max_epochs=2)


def test_gradient_clipping_bounds_each_step_and_is_recorded():
    """``max_grad_norm`` clips the global gradient norm before the step: plain SGD at lr 1
    then moves the weights by at most that norm, and the history records the norm."""
    torch.manual_seed(0)
    moved = {}
    for clip in (None, 0.5):
        module = nn.Linear(3, 1)
        start = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
        opt = make_optimizer([{"params": module.parameters()}], "sgd", lr=1.0, momentum=0)
        x = torch.full((4, 3), 10.0)  # a steep loss: gradient norm far above 0.5
        result = fit_loop(module, [x], lambda b: ((module(b) - 100).pow(2).mean(), len(b)), optimizer=opt,
                          max_epochs=1, max_grad_norm=clip)
        moved[clip] = float((torch.cat([p.detach().flatten() for p in module.parameters()]) - start).norm())
        record = result["history"][0]
        if clip is None:
            assert "grad_norm" not in record
        else:
            assert record["grad_norm"] > 100 and record["clipped"] == 1.0
    assert moved[0.5] == pytest.approx(0.5, rel=1e-4) and moved[None] > 100


def test_a_diverging_run_goes_back_to_its_lowest_loss_at_half_the_rate():
    """``divergence_factor``: an epoch whose loss is above the factor times the lowest so far
    restores the module and optimiser of that epoch and halves the learning rates."""
    module = nn.Linear(2, 1)
    nn.init.zeros_(module.weight), nn.init.zeros_(module.bias)
    opt = make_optimizer([{"params": module.parameters()}], "sgd", lr=0.1, momentum=0)
    scripted, epoch, after = [1.0, 0.8, 5.0, 0.5], [0], []

    def step(x):
        return scripted[epoch[0]] + module(x).mean(), len(x)  # every step moves each weight by -lr

    def callback(e):
        epoch[0] = e
        after.append(module.bias.item())

    with pytest.warns(RuntimeWarning, match="diverged"):
        result = fit_loop(module, [torch.ones(4, 2)], step, optimizer=opt, max_epochs=4, divergence_factor=1.5,
                          epoch_callback=callback)
    # epoch losses 1.0, 0.5, 4.4 (> 1.5 x 0.5): back to the weights after epoch 2 (-0.2), then one step at 0.05
    assert after == pytest.approx([0.0, -0.1, -0.2, -0.2])
    assert module.bias.item() == pytest.approx(-0.25)
    assert [r["lr_halvings"] for r in result["history"]] == [0, 0, 1, 1]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_the_guard_is_on_when_fine_tuning_only(blobs):
    X, y = blobs
    clf = SoftmaxClassifier(max_epochs=2, random_state=0).fit(X, y)
    assert clf._setting("divergence_guard") is None and "lr_halvings" not in clf.history_[-1]
    clf = SoftmaxClassifier(max_epochs=2, divergence_guard=2.0, max_grad_norm=1.0, random_state=0).fit(X, y)
    assert clf.history_[-1]["lr_halvings"] == 0 and "grad_norm" in clf.history_[-1]
    assert SoftmaxClassifier(extractor=object())._setting("divergence_guard") == 1.5
    for bad in ({"divergence_guard": 1.0}, {"max_grad_norm": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SoftmaxClassifier(**bad).fit(X, y)


def weights(clf):
    return {k: v.clone() for k, v in clf.module_.state_dict().items()}


def test_same_random_state_gives_identical_weights(blobs):
    X, y = blobs
    a = weights(SoftmaxClassifier(embedding_dim=8, dropout=0.2, max_epochs=5, random_state=3).fit(X, y))
    b = weights(SoftmaxClassifier(embedding_dim=8, dropout=0.2, max_epochs=5, random_state=3).fit(X, y))
    c = weights(SoftmaxClassifier(embedding_dim=8, dropout=0.2, max_epochs=5, random_state=4).fit(X, y))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_from_checkpoint_equals_uninterrupted_run(blobs, tmp_path, monkeypatch):
    X, y = blobs
    params = dict(embedding_dim=8, dropout=0.2, max_epochs=6, n_iter_no_change=None, batch_size=12, random_state=0,
                  divergence_guard=1.05)  # the guard's state is checkpointed too
    full = SoftmaxClassifier(**params).fit(X, y)

    calls = {"n": 0}
    original = SoftmaxClassifier._loss

    def dying_loss(self, *args):
        calls["n"] += torch.is_grad_enabled()  # count training steps, not validation
        if calls["n"] == 3 * 9 + 2:  # in epoch 4 (108 training samples / 12 = 9 steps per epoch)
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(SoftmaxClassifier, "_loss", dying_loss)
    with pytest.warns(RuntimeWarning, match="interrupted after 3 epochs"):
        first = SoftmaxClassifier(**params, checkpoint_dir=str(tmp_path)).fit(X, y)
    assert first.interrupted_ and first.n_iter_ == 3
    proba = first.predict_proba(X)  # usable: a complete model, not a half-updated one
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert set(first.predict(X)) <= {10, 20, 40}
    monkeypatch.setattr(SoftmaxClassifier, "_loss", original)
    resumed = SoftmaxClassifier(**params, checkpoint_dir=str(tmp_path)).fit(X, y)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4, 5, 6]
    assert not resumed.interrupted_
    wf, wr = weights(full), weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    with pytest.raises(ValueError, match="different model or data"):
        SoftmaxClassifier(**{**params, "lr": 0.1}, checkpoint_dir=str(tmp_path)).fit(X, y)


def test_make_generator_is_seeded():
    a = torch.randperm(10, generator=make_generator(5))
    b = torch.randperm(10, generator=make_generator(5))
    assert torch.equal(a, b)


def test_a_checkpoint_of_other_training_data_is_refused(easy_blobs, tmp_path):
    X, y = easy_blobs
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

def test_a_corrupt_checkpoint_is_reported_by_path_with_the_fix(easy_blobs, tmp_path):
    X, y = easy_blobs
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    clf = SoftmaxClassifier(max_epochs=2, random_state=0, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"checkpoint\.pt cannot be read .*Delete it") as info:
        clf.fit(X, y)
    assert "weights_only" not in str(info.value)
    assert not hasattr(clf, "module_")
