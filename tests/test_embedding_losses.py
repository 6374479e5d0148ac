"""ELoPE's class-mean embedding loss (eq. 5-10) and the center-loss baseline."""

import numpy as np
import pytest
import torch

from skfg.losses import center_loss, class_mean_loss, update_class_means


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
