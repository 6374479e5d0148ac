"""Draw the figures of docs/plots.rst (docs/_static/*.png) on stanford_cars_a.

Fits small models on 20 classes of the shared data set (a few minutes on 2 CPU cores)::

    python docs/make_figures.py [--data ../shared/datasets/stanford_cars_a]
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from skfg import (CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier,  # noqa: E402
                  ObjectCropper, SoftmaxClassifier)
from skfg.datasets import load_image_folder  # noqa: E402
from skfg.plotting import EarlyExitDisplay, LocalizationDisplay, LowShotDisplay, RetrievalDisplay  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "datasets" / "stanford_cars_a"


def load(root, split, n_classes):
    X, y = load_image_folder(root / split)
    keep = np.isin(y, np.unique(y)[:n_classes])
    return X[keep], y[keep]


def save(display, name):
    out = HERE / "_static" / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    display.figure_.savefig(out, dpi=80, bbox_inches="tight")
    print("wrote", out.relative_to(HERE.parent))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n-classes", type=int, default=20)
    args = parser.parse_args()
    Xtr, ytr = load(args.data, "train", args.n_classes)
    Xte, yte = load(args.data, "test", args.n_classes)

    ee = EarlyExitClassifier(extractor=CNNFeatureExtractor(layers=["stage4", "stage6", "head"]), random_state=0)
    save(EarlyExitDisplay.from_estimator(ee.fit(Xtr, ytr), Xte, yte, alphas=[0.01, 0.05, 0.1, 0.2, 0.3]),
         "early_exit_display")

    pipe = Pipeline([("cnn", CNNFeatureExtractor()), ("clf", ImpostorClassifier(random_state=0))]).fit(Xtr, ytr)
    rows = np.random.RandomState(0).choice(len(Xte), 4, replace=False)
    save(RetrievalDisplay.from_estimator(pipe, Xte[rows], Xtr, y_query=yte[rows], y_reference=ytr, n_neighbors=5),
         "retrieval_display")

    cropper = ObjectCropper(random_state=0).fit(Xtr)
    save(LocalizationDisplay.from_estimator(cropper, Xte[rows], n_cols=4), "localization_display")

    ext = CNNFeatureExtractor().fit()
    Ftr, Fte = ext.transform(Xtr), ext.transform(Xte)
    kw = dict(n_exemplars=[1, 2, 5, 10], n_repeats=3, random_state=0)
    disp = LowShotDisplay.from_estimator(ImprintedClassifier(), Ftr, ytr, Fte, yte, **kw)
    save(LowShotDisplay.from_estimator(SoftmaxClassifier(), Ftr, ytr, Fte, yte, ax=disp.ax_, **kw), "low_shot_display")


if __name__ == "__main__":
    main()
