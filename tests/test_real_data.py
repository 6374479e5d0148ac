"""Integration tests on the real data sets in ../shared/datasets."""

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from skfg import CNNFeatureExtractor, ImpostorClassifier, SoftmaxClassifier
from skfg.datasets import load_image_folder


@pytest.fixture(scope="module")
def cars(shared_dataset):
    """Default-backbone GAP features of stanford_cars_a at 160 px (extracted once)."""
    root = shared_dataset("stanford_cars_a")
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    ext = CNNFeatureExtractor(image_size=160).fit()
    return ext.transform(Xtr), ytr, ext.transform(Xte), yte


@pytest.mark.data
def test_stanford_cars_a_split_sizes(cars):
    _, ytr, _, yte = cars
    assert len(np.unique(ytr)) == 98 and len(ytr) == 2403 and len(yte) == 994


@pytest.mark.data
def test_stanford_cars_a_linear_svc_on_default_features(cars):
    Ftr, ytr, Fte, yte = cars
    acc = LinearSVC().fit(Ftr, ytr).score(Fte, yte)
    print(f"stanford_cars_a LinearSVC accuracy: {acc:.3f}")
    assert acc >= 0.42


@pytest.mark.data
def test_stanford_cars_a_softmax_classifier_defaults(cars):
    Ftr, ytr, Fte, yte = cars
    acc = SoftmaxClassifier(random_state=0).fit(Ftr, ytr).score(Fte, yte)
    print(f"stanford_cars_a SoftmaxClassifier accuracy: {acc:.3f}")
    assert acc >= 0.43


@pytest.mark.data
def test_stanford_cars_a_impostor_loose_defaults(cars):
    """Loose impostors with a 512-d projection at the default sigma=0.6 (the threshold below; the
    measured numbers are in benchmarks/results/impostor_compression.md, at sigma 1.0)."""
    Ftr, ytr, Fte, yte = cars
    clf = ImpostorClassifier(random_state=0).fit(Ftr, ytr)
    acc = clf.score(Fte, yte)
    print(f"stanford_cars_a ImpostorClassifier(loose) accuracy: {acc:.3f}")
    assert acc >= 0.44
    assert clf.index_.n_vectors_ == len(ytr) - round(0.1 * len(ytr))  # loose: held-out samples do not vote


@pytest.mark.data
def test_fine_tuning_defaults_train_on_a_small_subset(shared_dataset):
    """12 classes (280 images) at 128 px with every default, the small-set rules included
    (issue 46: 10 % held out to compare the fine-tune with the linear probe, the peak rate
    at 9 / 64 of the recipe's for 9 mini-batches an epoch).

    Before those rules (benchmarks/small_set.py, SGD): 64.7-68.1 % at 128 px over 3 seeds,
    and at 160 px one seed in three collapsed to 2 classes (10.9 %). Whichever of probe and
    fine-tune the fit keeps, it must not be a collapse."""
    root = shared_dataset("stanford_cars_a")
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    keep = np.unique(ytr)[:12]
    Xtr, ytr, Xte, yte = Xtr[np.isin(ytr, keep)], ytr[np.isin(ytr, keep)], Xte[np.isin(yte, keep)], yte[np.isin(yte, keep)]
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=128), random_state=0).fit(Xtr, ytr)
    pred = clf.predict(Xte)
    acc = float(np.mean(pred == yte))
    print(f"12 classes at 128 px, fine-tuned with the defaults: {acc:.3f}")
    assert len(np.unique(pred)) >= 10 and acc >= 0.45  # chance: 0.083
    assert clf.resolved_param("validation_fraction", ytr) == 0.1 and len(clf.history_) == 10 + 11  # head epochs + max_epochs
