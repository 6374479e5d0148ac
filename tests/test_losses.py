"""The loss functions and loss modules of skfg/losses.py, each against its equation on a small
hand-made case: ELoPE's class-mean loss (eq. 5-10) and the center-loss baseline, the impostor
loss (impostor-networks eq. 2-6, rbf-solver eq. 4), the multi-exit loss."""

import numpy as np
import pytest
import torch

from skfg.losses import (center_loss, class_log_proba, class_mean_loss, impostor_loss, multi_exit_loss, rbf_log_kernel,
                         update_class_means)


def test_mean_update_eq6_eq7_by_hand():
    means = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    new = update_class_means(means, f, y, alpha=0.5)
    # class 0: delta = ((0-1) + (0-0), (0-0) + (0-1)) / (1 + 2) = (-1/3, -1/3)
    # class 1: delta = ((1-1), (1-1)) / 2 = 0; class 2 is not in the batch
    np.testing.assert_allclose(new.numpy(), [[1 / 6, 1 / 6], [1.0, 1.0], [5.0, 5.0]], rtol=1e-6)


def test_within_and_between_losses_eq9_eq10_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # already unit length
    y = torch.tensor([0, 1])
    means = torch.zeros(3, 2)
    loss, new = class_mean_loss(f, y, means, alpha=0.5, gamma=16.0, margin=0.75)
    mu0, mu1 = np.array([0.25, 0.0]), np.array([0.0, 0.25])  # eq. (6)-(7)
    np.testing.assert_allclose(new[:2].numpy(), [mu0, mu1])
    within = (np.sum((np.array([1.0, 0.0]) - mu0) ** 2) + np.sum((np.array([0.0, 1.0]) - mu1) ** 2)) / (2 * 2)
    d2 = np.sum((mu0 - mu1) ** 2)  # 0.125 < margin: penalised
    between = 16.0 / (4 * 1) * max(0.75 - d2, 0) ** 2
    assert loss.item() == pytest.approx(within + between, rel=1e-6)
    # a single class in the batch: no pair, no between-class term
    single, _ = class_mean_loss(f, torch.tensor([2, 2]), means)
    mu2 = 0.5 * np.array([1.0, 1.0]) / 3
    assert single.item() == pytest.approx((np.sum((f.numpy() - mu2) ** 2)) / 4, rel=1e-6)


def test_gradients_flow_through_the_updated_means():
    torch.manual_seed(0)
    emb = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    means = 0.1 * torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda e: class_mean_loss(e, y, means, margin=4.0)[0], (emb,))
    # the dependence of mu^t on the batch matters: freezing the means changes the gradient
    loss, _ = class_mean_loss(emb, y, means, margin=4.0)
    (g,) = torch.autograd.grad(loss, emb)
    f = torch.nn.functional.normalize(emb, dim=1)
    mu = update_class_means(means, f, y).detach()
    k = torch.triu_indices(3, 3, 1)
    frozen = ((f - mu[y]) ** 2).sum(1).mean() / 2 + 16.0 / 12 * (4.0 - ((mu[k[0]] - mu[k[1]]) ** 2).sum(1)).clamp_min(0).pow(2).sum()
    (g_frozen,) = torch.autograd.grad(frozen, emb)
    assert loss.item() == pytest.approx(frozen.item())
    assert not torch.allclose(g, g_frozen)


def test_center_loss_uses_the_old_centres_and_moves_them_without_gradient():
    f = torch.tensor([[3.0, 4.0]], requires_grad=True)  # normalised to (0.6, 0.8)
    centers = torch.zeros(2, 2)
    loss, new = center_loss(f, torch.tensor([1]), centers)
    assert loss.item() == pytest.approx(0.5)  # ||(0.6, 0.8) - 0||^2 / 2
    np.testing.assert_allclose(new[1].numpy(), [0.15, 0.2], rtol=1e-6)  # 0.5 * (0.6, 0.8) / 2
    assert not new.requires_grad


def test_rbf_rule_on_a_hand_computable_example():
    # impostors (0,0):A, (1,0):B, (0,2):A; query (0.5, 0), sigma = 1
    C = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 0])
    q = torch.tensor([[0.5, 0.0]])
    k = np.exp(-np.array([0.25, 0.25, 4.25]) / 2)  # eq. (2)
    expected = np.array([k[0] + k[2], k[1]]) / k.sum()  # eq. (3)
    lk = rbf_log_kernel(((q[:, None] - C[None]) ** 2).sum(-1), 1.0)
    np.testing.assert_allclose(class_log_proba(lk, labels, 2).exp().numpy()[0], expected, rtol=1e-6)

def test_loss_with_self_exclusion_equals_numpy():
    rng = np.random.RandomState(0)
    emb, imp = rng.randn(5, 3), rng.randn(8, 3)
    labels, targets, own = rng.randint(0, 2, 8), np.array([0, 1, 0, 1, 1]), np.array([2, -1, 0, 7, 5])
    sigma, lam = 0.8, 0.5
    expected = []
    for i in range(5):
        k = np.exp(-((emb[i] - imp) ** 2).sum(1) / (2 * sigma**2))
        keep = np.arange(8) != own[i]
        loss = -np.log(k[keep & (labels == targets[i])].sum() / k[keep].sum())  # eq. (4)
        if own[i] >= 0:
            loss += lam * ((emb[i] - imp[own[i]]) ** 2).sum()  # eq. (6)
        expected.append(loss)
    t = lambda a: torch.as_tensor(a)
    got = impostor_loss(t(emb), t(targets), t(imp), t(labels), sigma, own=t(own), attachment=lam)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # rbf-solver eq. (4): the sums restricted to the 3 nearest candidates
    trunc = impostor_loss(t(emb), t(targets), t(imp), t(labels), sigma, own=t(own), n_neighbors=3)
    i = 1
    k = np.exp(-((emb[i] - imp) ** 2).sum(1) / (2 * sigma**2))
    near = np.argsort(-k)[:3]
    same = near[labels[near] == targets[i]]
    want = -np.log(k[same].sum() / k[near].sum()) if len(same) else np.inf
    np.testing.assert_allclose(trunc[i].item(), want, rtol=1e-6)

def test_label_smoothing_of_the_impostor_loss_by_hand():
    # one sample at the origin; impostors at squared distances 1 (class 0), 4 (class 1), 9 (class 1)
    emb = torch.zeros(1, 1)
    impostors = torch.tensor([[1.0], [2.0], [3.0]])
    labels = torch.tensor([0, 1, 1])
    sigma = 1.0
    k = np.exp(-np.array([1.0, 4.0, 9.0]) / (2 * sigma**2))  # eq. (3)'s Gaussian kernel
    p0, p1, p2 = k[0] / k.sum(), k[1:].sum() / k.sum(), 0.0
    nll = impostor_loss(emb, torch.tensor([0]), impostors, labels, sigma)
    assert float(nll) == pytest.approx(-np.log(p0), rel=1e-6)
    e = 0.2
    smoothed = impostor_loss(emb, torch.tensor([0]), impostors, labels, sigma, label_smoothing=e, n_classes=3)
    # class 2 has no impostor: its -log p counts as 30
    expected = (1 - e) * -np.log(p0) + e * np.mean([-np.log(p0), -np.log(p1), 30.0])
    assert float(smoothed) == pytest.approx(expected, rel=1e-6)
    assert p2 == 0.0


def _ce(z, t, w):
    return (torch.nn.functional.cross_entropy(z, t, reduction="none") * w).sum() / w.sum()

def test_multi_exit_loss_is_the_weighted_sum_of_the_exits_losses():
    g = torch.Generator().manual_seed(0)
    z, t, w = torch.randn(6, 3, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1]), torch.rand(6, generator=g) + 0.1
    per_exit = [_ce(z[:, m], t, w) for m in range(3)]
    assert torch.allclose(multi_exit_loss(z, t, w, _ce), sum(per_exit))
    assert torch.allclose(multi_exit_loss(z, t, w, _ce, exit_weights=[0.5, 0, 2]), 0.5 * per_exit[0] + 2 * per_exit[2])
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="exit_weights"):
            multi_exit_loss(z, t, w, _ce, exit_weights=bad)

def test_multi_exit_distillation_teaches_the_last_exit_to_the_earlier_ones():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 2, 3, generator=g, requires_grad=True)
    t, w = torch.tensor([0, 1, 2, 0, 1]), torch.ones(5)
    plain = multi_exit_loss(z, t, w, _ce)
    distilled = multi_exit_loss(z, t, w, _ce, distillation=0.5, temperature=2.0)
    p_last = torch.softmax(z[:, 1] / 2, 1)
    kl = (p_last * (torch.log_softmax(z[:, 1] / 2, 1) - torch.log_softmax(z[:, 0] / 2, 1))).sum(1).mean()
    assert torch.allclose(distilled - plain, 0.5 * 4 * kl)
    # the teacher is detached: the distillation term moves only the earlier exit
    (distilled - plain).backward()
    assert z.grad[:, 1].abs().max() == 0 and z.grad[:, 0].abs().max() > 0
    # an exit that already agrees with the last one gets no distillation loss
    same = torch.randn(4, 1, 3, generator=g).expand(4, 2, 3)
    assert torch.allclose(multi_exit_loss(same, t[:4], w[:4], _ce, distillation=1.0),
                          multi_exit_loss(same, t[:4], w[:4], _ce), atol=1e-6)
