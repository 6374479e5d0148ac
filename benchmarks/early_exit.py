"""Sequential early exits on stanford_cars_a, all rows measured in one run (issue 6).

Default backbone (EfficientNet-Lite0, ImageNet weights), 160 px, CPU, fitted on ``train``,
evaluated on ``test``:

1. Every candidate stage with a LinearSVC on its pooled, L2-normalised features: test
   accuracy and the end-to-end ms/image of computing the network up to that stage
   (decode + CNN + SVM, batch 1).
2. ``EarlyExitClassifier`` (extractor mode: exited images leave the batch) with fixed and
   Benjamini-Hochberg thresholds for alpha in {0.01, 0.05, 0.1, 0.2}: accuracy, mean
   ms/image end to end, exit histogram and the speed-up against the last-layer
   classifier, timed alternately in the same run (best of ``--repeats``).

No second pretrained backbone is on this machine (torchvision weights are never
downloaded), so only the default backbone has accuracy rows.

    python benchmarks/early_exit.py --quick   # 20 classes, a few minutes
    python benchmarks/early_exit.py           # all 98 classes
"""

import argparse
import time

import numpy as np
from sklearn.svm import LinearSVC

from _common import DATA, write_results
from skfg import CNNFeatureExtractor, EarlyExitClassifier
from skfg.datasets import load_image_folder

ALPHAS = (0.01, 0.05, 0.1, 0.2)


def load(split, n_classes):
    X, y = load_image_folder(DATA / "stanford_cars_a" / split)
    keep = np.isin(y, np.unique(y)[:n_classes])
    return X[keep], y[keep]


def per_image_ms(predict, X, repeats):
    """Best-of-``repeats`` mean wall time per image of ``predict(X)`` (ms)."""
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        predict(X)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(X)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 classes, fewer test images")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--stages", nargs="+", default=["stage3", "stage4", "stage5", "stage6", "stage7", "head"],
                    help="candidate stages of section 1")
    ap.add_argument("--exits", nargs="+", default=["stage4,stage5,head", "stage5,stage6,head"],
                    help="exit sets of section 2, each comma-separated in forward order")
    ap.add_argument("--batch-size", type=int, default=1, help="images per forward pass at predict")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", default=True, help="feature cache directory for fitting (default: memory)")
    args = ap.parse_args()
    n_classes = 20 if args.quick else 98
    Xtr, ytr = load("train", n_classes)
    Xte, yte = load("test", n_classes)
    if args.quick:
        Xte, yte = Xte[::2], yte[::2]
    print(f"{len(Xtr)} train / {len(Xte)} test images, {n_classes} classes", flush=True)

    def extractor(layers, cache):
        return CNNFeatureExtractor(layers=layers, image_size=args.image_size, batch_size=args.batch_size,
                                   cache=cache)

    rows, payload = [], {"n_train": len(Xtr), "n_test": len(Xte), "n_classes": n_classes,
                         "image_size": args.image_size, "batch_size": args.batch_size, "quick": args.quick}

    # 1. each stage alone: accuracy (features cached) and end-to-end latency (no cache)
    fit_ext = extractor(args.stages, args.cache).fit()
    Ftr, Fte = fit_ext.transform(Xtr), fit_ext.transform(Xte)
    timing_X = Xte[: min(len(Xte), 200)]
    layers = []
    for name in args.stages:
        cols = fit_ext.feature_groups_[name]
        svm, t = LinearSVC(random_state=0), time.perf_counter()
        svm.fit(Ftr[:, cols], ytr)
        fit_s = time.perf_counter() - t
        acc = float(svm.score(Fte[:, cols], yte))
        e2e = extractor([name], False).fit()
        e2e.transform(timing_X[:4])  # warm-up
        ms = per_image_ms(lambda X: svm.predict(e2e.transform(X)), timing_X, args.repeats)
        layers.append({"stage": name, "dims": cols.stop - cols.start, "accuracy": acc, "ms_per_image": ms,
                       "svm_fit_s": fit_s})
        rows.append(("LinearSVC", name, f"{100 * acc:.1f}", f"{ms:.2f}", "", "", f"{cols.stop - cols.start} dims"))
        print(rows[-1], flush=True)
    payload["layers"] = layers

    # 2. early exits, extractor mode, against the last layer in the same loop
    exit_sets = [e.split(",") for e in args.exits]
    last = exit_sets[0][-1]
    assert all(e[-1] == last for e in exit_sets), "every exit set ends at the same layer"
    base_svm = LinearSVC(random_state=0).fit(Ftr[:, fit_ext.feature_groups_[last]], ytr)
    base_ext = extractor([last], False).fit()
    base_acc = float(base_svm.score(Fte[:, fit_ext.feature_groups_[last]], yte))
    runs = []
    for exits_set, thresholds, alpha in ((e, t, a) for e in exit_sets for t in ("fixed", "bh") for a in ALPHAS):
        clf = EarlyExitClassifier(alpha=alpha, thresholds=thresholds, random_state=0,
                                  extractor=extractor(exits_set, args.cache))
        t = time.perf_counter()
        clf.fit(Xtr, ytr)
        fit_s = time.perf_counter() - t
        clf.extractor_.set_params(cache=False)  # (predict never reads the cache; be explicit)
        y_pred, exits = clf.predict(Xte, return_exit=True)
        acc = float(np.mean(y_pred == yte))
        clf.predict(timing_X[:4])
        base_ms, ee_ms = np.inf, np.inf
        for _ in range(args.repeats):  # alternate, keep the best of each
            base_ms = min(base_ms, per_image_ms(lambda X: base_svm.predict(base_ext.transform(X)), timing_X, 1))
            ee_ms = min(ee_ms, per_image_ms(clf.predict, timing_X, 1))
        hist = np.bincount(exits, minlength=len(exits_set)).tolist()
        run = {"exits": exits_set, "thresholds": thresholds, "alpha": alpha, "accuracy": acc, "ms_per_image": ee_ms,
               "last_layer_ms_per_image": base_ms, "speedup": base_ms / ee_ms, "exit_histogram": hist,
               "exit_fraction": (np.asarray(hist) / len(Xte)).tolist(),
               "thresholds_": [float(v) for v in clf.thresholds_], "fit_s": fit_s,
               "accuracy_drop_points": 100 * (base_acc - acc)}
        runs.append(run)
        label = "Ours, fixed threshold" if thresholds == "fixed" else "Ours, BH threshold"
        rows.append((label, f"{'/'.join(exits_set)}, alpha={alpha}", f"{100 * acc:.1f}", f"{ee_ms:.2f}",
                     f"{base_ms / ee_ms:.2f}x", "/".join(map(str, hist)),
                     f"{100 * (acc - base_acc):+.1f} pts vs last layer"))
        print(rows[-1], flush=True)
    payload.update(exit_sets=exit_sets, last_layer_accuracy=base_acc, early_exit=runs)
    ok = [r for r in runs if r["speedup"] >= 1.3 and r["accuracy_drop_points"] <= 1.0]
    payload["target_met"] = bool(ok)
    met = ", ".join(f"{'/'.join(r['exits'])} {r['thresholds']} alpha={r['alpha']}" for r in ok)
    notes = (
        f"stanford_cars_a, EfficientNet-Lite0 (ImageNet), {args.image_size} px, fitted on train "
        f"({len(Xtr)} images), tested on test ({len(Xte)}). ms/image: decode + CNN + classifier, "
        f"batch {args.batch_size}, best of {args.repeats} passes over {len(timing_X)} test images; the speed-up "
        f"is against LinearSVC on `{last}` timed alternately in the same loop. Exits: images deciding "
        f"at each exit of the set. Last-layer accuracy {100 * base_acc:.1f}%.\n"
        "Target (>= 1.3x faster, <= 1 point lower accuracy at some alpha): "
        + (f"met by {met}." if ok else "not met.")
    )
    header = ("classifier", "layers / alpha", "accuracy %", "ms/image", "speed-up", "exits", "note")
    write_results("early_exit_quick" if args.quick else "early_exit", payload, rows, header, notes)


if __name__ == "__main__":
    main()
