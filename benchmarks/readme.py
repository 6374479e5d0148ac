"""The README's examples, run as written on stanford_cars_a, so the accuracy the README
quotes is the one a user gets (and the one ``skfg demo --data`` prints for LinearSVC):

    python benchmarks/readme.py        # ~2 min on 2 cores (features of 3,397 images)
"""


import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from _common import DATA, timed, write_results
from skfg import CNNFeatureExtractor, clear_feature_cache
from skfg.datasets import load_image_folder


def main():
    root = DATA / "stanford_cars_a"
    X_train, y_train = load_image_folder(root / "train")
    X_test, y_test = load_image_folder(root / "test")
    def run(X, y, X_test, y_test):
        pipe = Pipeline([("cnn", CNNFeatureExtractor()), ("clf", LinearSVC())])  # the README's pipeline
        return float(pipe.fit(X, y).score(X_test, y_test))

    # timed untraced after the same code ran traced on every 40th image (whose features then leave
    # the cache: the timed run starts cold, as a user's first)
    accuracy, seconds = timed(lambda: run(X_train, y_train, X_test, y_test),
                              warmup=lambda: (run(X_train[::40], y_train[::40], X_test[::40], y_test[::40]),
                                              clear_feature_cache()))
    rows = [("Pipeline([CNNFeatureExtractor(), LinearSVC()])", f"{accuracy:.3f}", f"{seconds:.0f}")]
    write_results("readme", {"rows": [{"example": rows[0][0], "test_accuracy": accuracy, "seconds": seconds,
                                       "n_train": len(y_train), "n_test": len(y_test)}]},
                  rows, ("example", "test accuracy", "fit + score s"),
                  f"stanford_cars_a ({len(y_train)} train / {len(y_test)} test images, "
                  f"{len(np.unique(y_train))} classes), EfficientNet-Lite0 at its default {CNNFeatureExtractor().image_size} px, 2 CPU cores.")


if __name__ == "__main__":
    main()
