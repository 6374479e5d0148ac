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

Wall time of each (the warm-up included where there is one; with fresh worker processes
every time, as a user's first search, their start included), as a ratio to ``n_jobs=1``
with its range over ``--rounds`` rounds, and the best ``C`` and score, which must agree.

    python benchmarks/gridsearch.py --quick    # 150 images
    python benchmarks/gridsearch.py            # 600 images
"""

import argparse
from collections import Counter
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from joblib.externals.loky import get_reusable_executor
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from _common import DATA, ratio_over_rounds, untraced, write_results
from skfg import CNNFeatureExtractor, clear_feature_cache
from skfg.datasets import load_image_folder


def search(X, y, n_jobs, cache):
    pipe = Pipeline([("cnn", CNNFeatureExtractor(cache=cache)), ("clf", LinearSVC())])
    return GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=n_jobs).fit(X, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n-images", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all four settings in turn")
    args = parser.parse_args()
    n = 150 if args.quick else args.n_images
    X, y = load_image_folder(DATA / "stanford_cars_a" / "train")
    idx = np.random.RandomState(0).permutation(len(y))[:n]
    X, y = X[idx], y[idx]
    settings = (("n_jobs=1, memory cache", 1, False, False),
                ("n_jobs=2, memory cache", 2, False, False),
                ("n_jobs=2, disk cache, cold", 2, True, False),
                ("n_jobs=2, disk cache, warmed in the caller", 2, True, True))
    rounds = 2 if args.quick else args.rounds
    seconds, best = np.empty((rounds, len(settings))), {}
    warm_dir = Path(tempfile.mkdtemp(prefix="skfg_gridsearch_"))
    few = np.flatnonzero(np.isin(y, [c for c, _ in Counter(y).most_common(3)]))  # >= 3 images a class: 3 folds
    try:  # traced once on a few images, untimed: the stamp records the code this process runs
        CNNFeatureExtractor(cache=str(warm_dir)).fit().transform(X[few])
        search(X[few], y[few], 1, str(warm_dir))
    finally:
        shutil.rmtree(warm_dir, ignore_errors=True)
    # every setting once per round, so a slow spell hits all of them; untraced: the call hook
    # runs in this process only, so it would slow n_jobs=1 alone (tracer_overhead.md)
    for r in untraced(range(rounds)):
        for k, (label, n_jobs, disk, warm) in enumerate(settings):
            clear_feature_cache()
            # fresh worker processes every time, as a user's first search: reused ones would
            # still hold their in-memory feature caches (and their imports) from an earlier round
            get_reusable_executor().shutdown(wait=True)
            directory = Path(tempfile.mkdtemp(prefix="skfg_gridsearch_")) if disk else None
            try:
                t = time.perf_counter()
                if warm:
                    CNNFeatureExtractor(cache=str(directory)).fit().transform(X)
                gs = search(X, y, n_jobs, str(directory) if disk else True)
                seconds[r, k] = time.perf_counter() - t
            finally:
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
            best.setdefault(k, set()).add((gs.best_params_["clf__C"], round(float(gs.best_score_), 6)))
            print(r, label, f"{seconds[r, k]:.1f} s", flush=True)
    med = np.median(seconds, 0)
    results, rows = [], []
    for k, (label, n_jobs, disk, warm) in enumerate(settings):
        (C, score), agree = sorted(best[k])[0], len(best[k]) == 1  # the same choice in every round?
        speedup, low, high = ratio_over_rounds(seconds[:, 0], seconds[:, k])
        results.append({"setting": label, "n_jobs": n_jobs, "disk_cache": disk, "warmed": warm,
                        "seconds": float(med[k]), "seconds_per_round": seconds[:, k].tolist(),
                        "vs_n_jobs_1": speedup, "vs_n_jobs_1_low": low, "vs_n_jobs_1_high": high,
                        "best_C": C, "best_score": score, "same_choice_every_round": agree})
        rows.append((label, f"{med[k]:.1f}", f"{speedup:.2f}x [{low:.2f}-{high:.2f}]", C, f"{score:.3f}"))
    notes = (f"{n} stanford_cars_a train images, 160 px, EfficientNet-Lite0 features, 3 values of C x 3 folds; "
             f"2 CPU cores; {rounds} rounds, each running the four settings in turn. Seconds: median over the "
             "rounds; speed-up: the median over the rounds of n_jobs=1's seconds over the row's within the round, [lowest-highest] of those (one "
             "whose range holds 1.00 is no difference).")
    write_results("gridsearch" + ("_quick" if args.quick else ""), {"rows": results, "n_images": n, "rounds": rounds}, rows,
                  ("setting", "seconds", "speed-up [round range]", "best C", "best CV score"), notes,
                  headline={r["setting"]: r["vs_n_jobs_1"] for r in results if "vs_n_jobs_1" in r},
                  headline_ranges={r["setting"]: [r["vs_n_jobs_1_low"], r["vs_n_jobs_1_high"]]
                                   for r in results if "vs_n_jobs_1" in r})


if __name__ == "__main__":
    main()
