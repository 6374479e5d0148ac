import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skfg.pooling import global_pool, kmax_pool, l2_normalize


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_kmax_limits_are_gmp_and_gap(h, w, c, seed):
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(kmax_pool(x, 1), global_pool(x, "gmp"))
    torch.testing.assert_close(kmax_pool(x, h * w), global_pool(x, "gap"))


def test_kmax_is_mean_of_k_largest_eq3():
    # channel 0 holds 1..9; the 3 largest are 9, 8, 7 -> mean 8 (ELoPE eq. 3)
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    assert kmax_pool(x, 3).item() == pytest.approx(8.0)
    assert global_pool(x, "kmax", k=100).item() == pytest.approx(5.0)  # k clipped to H*W


def test_unknown_pooling_names_valid_ones():
    with pytest.raises(ValueError, match="gap, gmp, kmax"):
        global_pool(torch.zeros(1, 1, 2, 2), "avg")


def test_l2_normalize_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x).numpy(), [[0.6, 0.8], [0.0, 0.0]])


def test_weighted_kmax_with_unit_weights_is_plain_kmax_eq4():
    from skfg.pooling import WeightedKMaxPool

    x = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    pool = WeightedKMaxPool(k=4)
    torch.testing.assert_close(pool(x), kmax_pool(x, 4))
    # eq. (4) by hand: 1/K sum_k w_k S_k over the sorted activations of channel 0 = 1..9
    y = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    w = torch.tensor([2.0, 0.0, 1.0])
    assert kmax_pool(y, 3, w).item() == pytest.approx((2 * 9 + 0 * 8 + 1 * 7) / 3)
    # the weights train
    pool(x).sum().backward()
    assert pool.weight.grad is not None and pool.weight.grad.shape == (4,)
