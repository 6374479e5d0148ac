import numpy as np
import pytest

from skfg.metrics import entropy, ks_distance, nmi_kmeans, recall_at_k


def test_entropy_bounds():
    p = np.array([[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]])
    np.testing.assert_allclose(entropy(p), [0, np.log(3), np.log(2)])
    with pytest.raises(ValueError, match="negative"):
        entropy([[-0.1, 1.1]])


def test_ks_distance_matches_definition():
    a, b = np.array([1.0, 2, 3, 4]), np.array([3.5, 5, 6])
    grid = np.r_[a, b]
    cdf = lambda s, t: (s[:, None] <= t).mean(0)
    assert ks_distance(a, b) == pytest.approx(np.abs(cdf(a, grid) - cdf(b, grid)).max())
    assert ks_distance(a, a) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        ks_distance([], a)


def test_recall_at_k_excludes_the_query_itself():
    X = np.array([[0.0], [0.0], [10.0], [10.0]])
    assert recall_at_k(X, [0, 0, 1, 1], ks=1) == 1.0
    Y = np.array([[0.0], [0.1], [10.0], [10.1]])
    assert recall_at_k(Y, [0, 1, 0, 1], ks=(1, 2)) == {1: 0.0, 2: 0.5}  # 0 and 10.1 find their class second; 0.1 and 10 never
    with pytest.raises(ValueError, match="every k"):
        recall_at_k(X, [0, 0, 1, 1], ks=(4,))


def test_nmi_perfect_clusters():
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 20)
    X = rng.randn(60, 4) * 0.1 + 10 * np.eye(4)[y]
    assert nmi_kmeans(X, y) == pytest.approx(1.0)
    assert nmi_kmeans(rng.randn(60, 4), y) < 0.3  # clusters of noise carry no label information
