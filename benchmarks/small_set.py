"""The fine-tuning defaults on a small training set, by image size (issue 20's small-set limit).

12 classes of ``stanford_cars_a`` (the first 12 labels: 280 training images, 9 mini-batches
an epoch; their 119 test images), ``SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=s))``
with every other parameter at its default (the fine-tuning recipe: 10 head epochs, then 22
epochs of SGD at lr 0.01 with a warm-up of at least 100 steps, here half the training, and
the divergence guard at 1.5), 3 seeds (``random_state``) per row. Rows: the extractor's
default size (160 px); the same without the guard (``divergence_guard=None``, the recipe
before it) and without the guard but with the gradient norm clipped to 5
(``max_grad_norm=5``, the alternative fix measured); 128 px, 64 px, and 64 px with
``lr=0.003``. Reported: test accuracy per seed, the mean with a 95 %
Student-t interval, and how many of the 12 classes the predictions use (1: collapsed).

    python benchmarks/small_set.py           # 18 fits, ~12 min on 2 cores
    python benchmarks/small_set.py --quick   # one seed
"""

import argparse
import time

import numpy as np

from _common import DATA, seed_interval, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder

ROWS = [("default", "default (160 px)", {}), ("no_guard", "160 px, no divergence guard", {"divergence_guard": None}),
        ("clip5", "160 px, no guard, gradient norm clipped to 5", {"divergence_guard": None, "max_grad_norm": 5.0}),
        ("128px", "128 px", {"image_size": 128}),
        ("64px", "64 px", {"image_size": 64}), ("64px_lr0.003", "64 px, lr 0.003", {"image_size": 64, "lr": 0.003})]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    root = DATA / "stanford_cars_a"
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    keep = np.unique(ytr)[:12]
    Xtr, ytr = Xtr[np.isin(ytr, keep)], ytr[np.isin(ytr, keep)]
    Xte, yte = Xte[np.isin(yte, keep)], yte[np.isin(yte, keep)]
    seeds = (0,) if args.quick else (0, 1, 2)
    results, rows = [], []
    for key, name, kw in ROWS:
        kw = dict(kw)
        ext = CNNFeatureExtractor(**({"image_size": kw.pop("image_size")} if "image_size" in kw else {}))
        accs, used, secs, halvings = [], [], [], []
        for seed in seeds:
            t = time.perf_counter()
            clf = SoftmaxClassifier(extractor=ext, random_state=seed, **kw).fit(Xtr, ytr)
            secs.append(time.perf_counter() - t)
            pred = clf.predict(Xte)
            accs.append(float(np.mean(pred == yte)))
            used.append(int(len(np.unique(pred))))
            halvings.append(int(clf.history_[-1].get("lr_halvings", 0)))
            print(name, seed, accs[-1], used[-1], flush=True)
        mean, half = seed_interval(accs)
        results.append({"key": key, "name": name, "image_size": ext.image_size, "params": kw, "seeds": list(seeds),
                        "test_accuracy": accs, "mean_test_accuracy": mean, "interval_half_width": half,
                        "classes_predicted": used, "lr_halvings": halvings, "fit_seconds": secs})
        rows.append((name, " / ".join(f"{100 * a:.1f}" for a in accs),
                     f"{100 * mean:.1f}" + (f" ± {100 * half:.1f}" if len(accs) > 1 else ""),
                     " / ".join(map(str, used)), " / ".join(map(str, halvings)), f"{np.mean(secs):.0f}"))
    notes = (f"12 classes of stanford_cars_a ({len(ytr)} training, {len(yte)} test images), SoftmaxClassifier with "
             "a CNNFeatureExtractor and every other parameter at its default (the fine-tuning recipe); seeds "
             f"{', '.join(map(str, seeds))}. Test accuracy (%) per seed and the mean with a 95 % Student-t interval; "
             "classes predicted: how many of the 12 the test predictions use (1: collapsed to one class); "
             "lr halvings: how often the divergence guard restarted the fine-tuning at half the rate. "
             "2 CPU cores.")
    write_results("small_set" + ("_quick" if args.quick else ""), {"rows": results, "quick": args.quick}, rows,
                  ("setting", "test accuracy per seed", "mean", "classes predicted per seed", "lr halvings", "fit s"), notes)


if __name__ == "__main__":
    main()
