"""Fine-tuning with the defaults on small training sets, paired against the frozen features' head (issue 46).

Subsets of ``stanford_cars_a``: 10 or 30 classes, drawn per seed among the 94 classes with
20 training images or more, at 10 or 20 training images a class (the 10 are the first 10
of the 20), and among the 59 classes with 25 or more at 25 a class (the set has about 24
a class, so 50 cannot be drawn). Val and test are every
val / test image of the drawn classes. Each subset and seed fits:

- ``head``: ``Pipeline([CNNFeatureExtractor(), SoftmaxClassifier()])``, the frozen
  features' linear head, every parameter at its default (the baseline);
- ``default``: ``SoftmaxClassifier(extractor=CNNFeatureExtractor())``, fine-tuned with
  every default: the fine-tuning's peak rate times ``small_set_lr_factor`` of the
  mini-batches an epoch (``b / 64``), a stratified 10 % held out to choose between the
  linear probe and the fine-tune, then the winner fitted again on every image;

and with ``--ablations NAME,...`` rows that change one part:

- ``sqrt_rate``: the peak rate times ``sqrt(b / 64)`` (Adam's square-root rule) instead, given
  as ``lr`` (so the linear probe trains at it too);
- ``no_split``: ``validation_fraction=0`` (every image trains, no probe comparison);
- ``full_rate``: ``lr=3e-3`` given explicitly (the recipe's rate, not scaled down; the
  linear probe then trains at that rate too, as it does by default).

Reported per subset: test (and val) accuracy per seed, the paired difference against
``head`` with a 95 % Student-t interval and its worst seed, how many fits the divergence
guard halved the rate in (a ``RuntimeWarning``), and how many kept the probe
(``fine_tuned_`` False).

    python benchmarks/small_data.py                # 3 seeds, head + default: ~40 min on 2 cores
    python benchmarks/small_data.py --ablations sqrt_rate,no_split   # and two ablations: ~90 min
    python benchmarks/small_data.py --quick        # one seed, the two 10-class subsets
    python benchmarks/small_data.py --subsets 10x10,30x10 --name small_data_refit   # some subsets, own file
"""

import argparse
import math
import time
import warnings

import numpy as np
from sklearn.pipeline import Pipeline

from _common import DATA, TRACER, paired_by_seed, seed_interval, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder

SUBSETS = [(10, 10), (10, 20), (10, 25), (30, 10), (30, 20), (30, 25)]  # (classes, training images a class)
ROWS = {
    "head": "frozen features + SoftmaxClassifier (baseline)",
    "default": "fine-tuned, every default",
    "sqrt_rate": "fine-tuned, rate x sqrt(b / 64)",
    "no_split": "fine-tuned, validation_fraction=0 (no probe comparison)",
    "full_rate": "fine-tuned, lr=3e-3 (not scaled down)",
}
PARAMS = {"default": {}, "sqrt_rate": {}, "full_rate": {"lr": 3e-3}, "no_split": {"validation_fraction": 0.0}}


def sqrt_rule(steps_per_epoch, full_steps=64):
    """The ablation's rule: Adam's square-root scaling of the rate."""
    return min(1.0, math.sqrt(steps_per_epoch / full_steps))


def draw(ytr, n_classes, per_class, seed):
    """Training indices of ``n_classes`` classes drawn among those with ``m = max(20, per_class)``
    images or more (``per_class`` images each, the first of a per-class draw of ``m``) and the classes."""
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(ytr, return_counts=True)
    m = max(20, per_class)
    classes = np.sort(rng.choice(labels[counts >= m], n_classes, replace=False))
    idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), m, replace=False)[:per_class] for c in classes])
    return np.sort(idx), classes


def fit_row(key, seed, X, y):
    if key == "head":
        return Pipeline([("features", CNNFeatureExtractor()),
                         ("head", SoftmaxClassifier(random_state=seed, verbose=False))]).fit(X, y)
    params = dict(PARAMS[key], **({"lr": sqrt_rate_lr(y)} if key == "sqrt_rate" else {}))
    return SoftmaxClassifier(extractor=CNNFeatureExtractor(), random_state=seed, verbose=False, **params).fit(X, y)


def sqrt_rate_lr(y):
    """The ``sqrt_rate`` row's ``lr``, given explicitly (so no other rule scales it): the
    recipe's peak rate times :func:`sqrt_rule` of the mini-batches an epoch that a fit on
    ``y`` trains with (its images less the held-out split, in batches of its batch size)."""
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor())
    n_train = len(y) - int(round(clf.resolved_param("validation_fraction", y) * len(y)))
    return clf.resolved_param("lr") * sqrt_rule(math.ceil(n_train / clf.resolved_param("batch_size", y)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ablations", default="", help="comma-separated: " + ", ".join(list(ROWS)[2:]))
    parser.add_argument("--subsets", default="", help="comma-separated, e.g. 10x10,30x10 (default: every subset)")
    parser.add_argument("--name", default="small_data", help="results file name (default: small_data)")
    args = parser.parse_args()
    root = DATA / "stanford_cars_a"
    (Xtr, ytr), (Xva, yva), (Xte, yte) = (load_image_folder(root / s) for s in ("train", "val", "test"))
    seeds = (0,) if args.quick else (0, 1, 2)
    subsets = SUBSETS[:2] if args.quick else SUBSETS
    if args.subsets:
        wanted = [tuple(int(v) for v in name.split("x")) for name in args.subsets.split(",")]
        unknown = [f"{c}x{p}" for c, p in wanted if (c, p) not in SUBSETS]
        if unknown:
            parser.error(f"unknown subset(s): {', '.join(unknown)}; valid: {', '.join(f'{c}x{p}' for c, p in SUBSETS)}")
        subsets = wanted
    keys = ["head", "default"] + [k for k in args.ablations.split(",") if k]
    unknown = set(keys) - set(ROWS)
    if unknown:
        parser.error(f"unknown ablation(s): {', '.join(sorted(unknown))}; valid: {', '.join(list(ROWS)[2:])}")
    results, table = [], []
    for n_classes, per_class in subsets:
        runs = {k: [] for k in keys}
        for seed in seeds:
            idx, classes = draw(ytr, n_classes, per_class, seed)
            in_val, in_test = np.isin(yva, classes), np.isin(yte, classes)
            for key in keys:
                t = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model = fit_row(key, seed, Xtr[idx], ytr[idx])
                seconds = time.perf_counter() - t
                untraced_seconds = None
                if seed == seeds[0]:  # the same fit again, the provenance hook paused, for its time alone
                    with warnings.catch_warnings(), TRACER.paused():  # (seeded: the same code and model)
                        warnings.simplefilter("ignore")
                        t = time.perf_counter()
                        fit_row(key, seed, Xtr[idx], ytr[idx])
                        untraced_seconds = time.perf_counter() - t
                clf = model[-1] if isinstance(model, Pipeline) else model
                pred = model.predict(Xte[in_test])
                messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
                row = {"subset": f"{n_classes}x{per_class}", "classes": n_classes, "per_class": per_class,
                       "key": key, "seed": seed, "n_train": int(len(idx)),
                       "val_accuracy": float(np.mean(model.predict(Xva[in_val]) == yva[in_val])),
                       "test_accuracy": float(np.mean(pred == yte[in_test])),
                       "classes_predicted": int(len(np.unique(pred))),
                       "lr_halvings": int(max((h.get("lr_halvings", 0) for h in clf.history_), default=0)),
                       "divergence_warnings": sum("halved" in m for m in messages),
                       "probe_kept": sum("keeping that head" in m for m in messages),
                       "fine_tuned": bool(getattr(clf, "fine_tuned_", False)),
                       "epochs": int(clf.n_iter_), "best_epoch": int(clf.best_epoch_), "fit_seconds": seconds,
                       "fit_seconds_untraced": untraced_seconds}
                runs[key].append(row)
                results.append(row)
                print(row, flush=True)
        base = runs["head"]
        for key in keys:
            rows = runs[key]
            test = [r["test_accuracy"] for r in rows]
            mean, half = seed_interval(test)
            paired = paired_by_seed(rows, base) if key != "head" else None
            summary = {"subset": rows[0]["subset"], "key": key, "test_mean": mean, "test_half_width": half,
                       "val_mean": float(np.mean([r["val_accuracy"] for r in rows])), "paired_vs_head": paired,
                       "worst_seed_vs_head": min(paired["test_per_seed"]) if paired else None,
                       "divergence_warnings": sum(r["divergence_warnings"] for r in rows),
                       "probe_kept": sum(r["probe_kept"] for r in rows),
                       "fit_seconds_mean": float(np.mean([r["fit_seconds"] for r in rows])),
                       "fit_seconds_untraced": rows[0]["fit_seconds_untraced"]}
            results.append({"summary": True, **summary})
            diff = "-" if paired is None else (f"{100 * paired['test_mean']:+.1f} ± {100 * paired['test_half_width']:.1f}"
                                               f" (worst {100 * summary['worst_seed_vs_head']:+.1f})")
            table.append((summary["subset"], ROWS[key], " / ".join(f"{100 * a:.1f}" for a in test),
                          f"{100 * mean:.1f}" + (f" ± {100 * half:.1f}" if len(test) > 1 else ""),
                          " / ".join(f"{100 * r['val_accuracy']:.1f}" for r in rows), diff,
                          summary["divergence_warnings"], summary["probe_kept"], f"{summary['fit_seconds_mean']:.0f}",
                          f"{summary['fit_seconds_untraced']:.0f}"))
    notes = (f"Subsets of stanford_cars_a: classes x training images a class, classes drawn per seed (seeds "
             f"{', '.join(map(str, seeds))}) among those with 20 or more training images (25 or more for the "
             "25-image subsets); every val and test image "
             "of the drawn classes. Test accuracy (%) per seed and the mean with a 95 % Student-t interval; val "
             "accuracy per seed; paired test difference against the frozen features' head (points, 95 % interval, "
             "worst seed); divergence warnings: fits whose divergence guard halved the rate; probe kept: fits that "
             "kept the linear probe over the fine-tuned CNN; fit s: the mean over seeds, timed with the provenance "
             "hook on; untraced: the first seed's fit again with it paused (seeded fits are bit-reproducible). "
             "2 CPU cores.")
    write_results(args.name + ("_quick" if args.quick else ""),
                  {"rows": results, "quick": args.quick, "seeds": list(seeds)}, table,
                  ("subset", "setting", "test per seed", "test mean", "val per seed", "vs head (test)",
                   "divergence warnings", "probe kept", "fit s", "fit s, untraced"), notes)


if __name__ == "__main__":
    main()
