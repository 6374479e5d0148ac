"""Displays: they render on the Agg backend and carry the data they plot."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from skfg import CNNFeatureExtractor, EarlyExitClassifier, ImprintedClassifier, ObjectCropper  # noqa: E402
from skfg.datasets import make_fine_grained  # noqa: E402
from skfg.plotting import (EarlyExitDisplay, LocalizationDisplay, LowShotDisplay, RetrievalDisplay,  # noqa: E402
                           with_alpha)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def layered():
    """Three 'layers' of features, weak to strong, for 3 classes."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 60)
    X = np.hstack([rng.randn(180, 4) + s * np.eye(4)[y] for s in (1.0, 2.5, 6.0)])
    clf = EarlyExitClassifier(feature_groups=[4, 4, 4], alpha=0.1, random_state=0).fit(X[::2], y[::2])
    return clf, X[1::2], y[1::2], X[::2], y[::2]


def test_with_alpha_gives_the_thresholds_of_a_refit(layered):
    clf, _, _, X_train, y_train = layered
    moved = with_alpha(clf, 0.3)
    assert moved.alpha == 0.3 and clf.alpha == 0.1  # a copy
    refit = EarlyExitClassifier(feature_groups=[4, 4, 4], alpha=0.3, random_state=0).fit(X_train, y_train)
    np.testing.assert_array_equal(moved.thresholds_, refit.thresholds_)
    np.testing.assert_allclose(moved.alphas_, refit.alphas_)
    assert not np.array_equal(moved.thresholds_, clf.thresholds_)


def test_early_exit_display_from_estimator(layered):
    clf, X, y, _, _ = layered
    disp = EarlyExitDisplay.from_estimator(clf, X, y, alphas=[0.01, 0.1, 0.4])
    expected = [np.mean(with_alpha(clf, a).predict(X) == y) for a in (0.01, 0.1, 0.4)]
    np.testing.assert_allclose(disp.accuracy, expected)
    np.testing.assert_allclose(disp.line_.get_ydata(), expected)
    assert disp.exit_counts.sum(1).tolist() == [len(y)] * 3
    assert disp.exit_counts[2, 0] >= disp.exit_counts[0, 0]  # a larger alpha lets more exit early
    assert len(disp.bars_) == 3 and disp.figure_ is disp.ax_[0].figure
    assert [t.get_text() for t in disp.ax_[1].get_xticklabels()] == ["0.01", "0.1", "0.4"]


def test_early_exit_display_checks_its_data():
    with pytest.raises(ValueError, match="differ in length"):
        EarlyExitDisplay(alphas=[0.1, 0.2], accuracy=[0.5], ms_per_image=[1, 2], exit_counts=[[1], [1]],
                         exit_names=["a"])
    disp = EarlyExitDisplay.from_predictions([0, 1], [[0, 1]], [[0, 1]], alphas=[0.1], ms_per_image=[2.0],
                                             exit_names=["s5", "s7"])
    assert disp.accuracy.tolist() == [1.0] and disp.exit_counts.tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="two Axes"):
        disp.plot(ax=[plt.gca()])


@pytest.fixture(scope="module")
def images():
    return make_fine_grained(n_classes=3, n_per_class=4, image_size=48, random_state=0)


def test_retrieval_display_shows_the_nearest_reference_images(images):
    X, y = images
    ext = CNNFeatureExtractor(image_size=48).fit()
    disp = RetrievalDisplay.from_estimator(ext, X[:2], X, y_query=y[:2], y_reference=y, n_neighbors=3)
    assert disp.ax_.shape == (2, 4) and disp.distances.shape == (2, 3)
    assert disp.distances[:, 0].max() < 1e-4  # each query is among the references: itself first
    np.testing.assert_array_equal(disp.neighbor_labels[:, 0], y[:2])
    assert np.array_equal(np.asarray(disp.neighbor_images[0][0]), X[0])
    assert disp.ax_[0, 1].spines["top"].get_edgecolor()[:3] == matplotlib.colors.to_rgb("tab:green")
    with pytest.raises(ValueError, match="must index X_reference"):
        RetrievalDisplay.from_predictions(X[:1], X[:2], [[5]], [[0.0]])


def test_localization_display_draws_each_box(images):
    X, _ = images
    crop = ObjectCropper(None, teacher_size=64, max_epochs=1, random_state=0).fit(X)
    disp = LocalizationDisplay.from_estimator(crop, X[:3], true_boxes=[[0, 0, 48, 48]] * 3, n_cols=2)
    np.testing.assert_allclose(disp.boxes, crop.predict_boxes(X[:3]))
    assert disp.heatmaps.shape[0] == 3 and disp.ax_.shape == (2, 2)
    first = disp.ax_[0, 0]
    assert len(first.patches) == 2 and len(first.images) == 2  # the box, the true box; image + heat map
    x0, y0, x1, y1 = disp.boxes[0]
    assert first.patches[0].get_xy() == (x0, y0) and first.patches[0].get_width() == pytest.approx(x1 - x0)


def test_low_shot_display_fits_one_model_per_draw(features):
    X, y = features
    disp = LowShotDisplay.from_estimator(ImprintedClassifier(), X[:60], y[:60], X[60:], y[60:], n_exemplars=[1, 3, 10],
                                         n_repeats=2, random_state=0)
    assert disp.scores.shape == (3, 2) and disp.estimator_name == "ImprintedClassifier"
    np.testing.assert_allclose(disp.line_.get_ydata(), disp.scores.mean(1))
    assert disp.scores[-1].mean() >= disp.scores[0].mean() and disp.fill_ is not None
    with pytest.raises(ValueError, match="class 'cat' has 20"):
        LowShotDisplay.from_estimator(ImprintedClassifier(), X[:60], y[:60], X, y, n_exemplars=[25])
