"""``GridSearchCV`` over a pipeline with the CNN: does ``n_jobs=2`` help (issue 24, item 5)?

``Pipeline([CNNFeatureExtractor(cache=...), LinearSVC()])`` searched over ``C`` (3 values,
3 folds: 9 fits and a refit) on a subset of ``stanford_cars_a`` train, all in one run:

- ``n_jobs=1``, in-memory cache (the default): each image goes through the CNN once;
- ``n_jobs=2``, in-memory cache: every worker process has its own cache, so each extracts
  the images of the folds it fits;
- ``n_jobs=2``, shared disk cache (``cache="dir"``), cold: workers write features other
  workers may read;
- ``n_jobs=2``, shared disk cache, warmed first by one ``transform`` over the images in the
  calling process (its time included): workers only read.

Wall time of each (the warm-up included where there is one), as a ratio to ``n_jobs=1``,
and the best ``C`` and score, which must agree.

    python benchmarks/gridsearch.py --quick    # 150 images
    python benchmarks/gridsearch.py            # 600 images
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from _common import DATA, write_results
from skfg import CNNFeatureExtractor, clear_feature_cache
from skfg.datasets import load_image_folder


def search(X, y, n_jobs, cache):
    pipe = Pipeline([("cnn", CNNFeatureExtractor(cache=cache)), ("clf", LinearSVC())])
    return GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=n_jobs).fit(X, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n-images", type=int, default=600)
    args = parser.parse_args()
    n = 150 if args.quick else args.n_images
    X, y = load_image_folder(DATA / "stanford_cars_a" / "train")
    idx = np.random.RandomState(0).permutation(len(y))[:n]
    X, y = X[idx], y[idx]
    results, rows = [], []
    base = None
    for label, n_jobs, disk, warm in (("n_jobs=1, memory cache", 1, False, False),
                                      ("n_jobs=2, memory cache", 2, False, False),
                                      ("n_jobs=2, disk cache, cold", 2, True, False),
                                      ("n_jobs=2, disk cache, warmed in the caller", 2, True, True)):
        clear_feature_cache()
        directory = Path(tempfile.mkdtemp(prefix="skfg_gridsearch_")) if disk else None
        try:
            t = time.perf_counter()
            if warm:
                CNNFeatureExtractor(cache=str(directory)).fit().transform(X)
            gs = search(X, y, n_jobs, str(directory) if disk else True)
            seconds = time.perf_counter() - t
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        base = base or seconds
        results.append({"setting": label, "n_jobs": n_jobs, "disk_cache": disk, "warmed": warm, "seconds": seconds,
                        "vs_n_jobs_1": base / seconds, "best_C": gs.best_params_["clf__C"],
                        "best_score": float(gs.best_score_)})
        rows.append((label, f"{seconds:.1f}", f"{base / seconds:.2f}x", gs.best_params_["clf__C"],
                     f"{gs.best_score_:.3f}"))
        print(rows[-1], flush=True)
    notes = (f"{n} stanford_cars_a train images, 160 px, EfficientNet-Lite0 features, 3 values of C x 3 folds; "
             "2 CPU cores. Speed-up: n_jobs=1's seconds over the row's.")
    write_results("gridsearch" + ("_quick" if args.quick else ""), {"rows": results, "n_images": n}, rows,
                  ("setting", "seconds", "speed-up", "best C", "best CV score"), notes)


if __name__ == "__main__":
    main()
