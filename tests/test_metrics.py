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


def test_paired_bootstrap_of_identical_predictions_is_no_significant_difference():
    from skfg.metrics import paired_bootstrap

    rng = np.random.RandomState(0)
    same = rng.rand(500) < 0.6
    result = paired_bootstrap(same, same)
    assert result["low"] <= 0 <= result["high"] and not result["significant"]
    assert result["statement"].startswith("no significant difference")
    noisy = same.copy()
    noisy[:3] = ~noisy[:3]  # three images differ: within the noise
    assert not paired_bootstrap(noisy, same)["significant"]


def test_paired_bootstrap_finds_a_clear_gap_and_its_direction():
    from skfg.metrics import paired_bootstrap

    rng = np.random.RandomState(1)
    a, b = rng.rand(2, 800) < np.array([[0.7], [0.5]])
    result = paired_bootstrap(a, b)
    assert result["significant"] and result["low"] > 0 and result["statement"].startswith("A better")
    assert abs(result["difference"] - (a.mean() - b.mean())) < 1e-12
    flipped = paired_bootstrap(b, a)
    assert flipped["significant"] and flipped["high"] < 0 and flipped["statement"].startswith("B better")
    seeds = paired_bootstrap(np.stack([a, a, a]), np.stack([b, b, b]))  # seeds average per image
    assert seeds["difference"] == result["difference"]
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap(a[:10], b[:11])


def test_open_set_auroc_is_signed():
    from skfg.metrics import ks_distance, open_set_auroc

    rng = np.random.RandomState(0)
    seen, unseen = rng.randn(300), rng.randn(300) + 1.0
    assert open_set_auroc(seen, unseen) > 0.7
    assert open_set_auroc(unseen, seen) < 0.3  # the score ranks unseen images as familiar
    assert abs(ks_distance(seen, unseen) - ks_distance(unseen, seen)) < 1e-12  # KS cannot tell the two apart
    assert open_set_auroc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError):
        open_set_auroc([], [1.0])
