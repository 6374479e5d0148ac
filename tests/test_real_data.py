"""Integration tests on the real data sets in ../shared/datasets."""

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from skfg import CNNFeatureExtractor
from skfg.datasets import load_image_folder


@pytest.mark.data
def test_stanford_cars_a_linear_svc_on_default_features(shared_dataset):
    root = shared_dataset("stanford_cars_a")
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    assert len(np.unique(ytr)) == 98 and len(Xtr) == 2403 and len(Xte) == 994
    ext = CNNFeatureExtractor(image_size=160).fit()
    clf = LinearSVC().fit(ext.transform(Xtr), ytr)
    acc = clf.score(ext.transform(Xte), yte)
    print(f"stanford_cars_a LinearSVC accuracy: {acc:.3f}")
    assert acc >= 0.42
