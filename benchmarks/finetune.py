"""Fine-tuning baselines on stanford_cars_a: frozen head vs training the last CNN stages.

Rows (default backbone, 160 px, CPU), all measured in this run:
(a) SoftmaxClassifier on frozen features; (b) the last 1 and 2 stages trainable, with
augmentation; (c) every stage, for the epochs that fit the --budget; and the epoch time
of trainable_blocks=1 with and without the frozen-prefix cache (augment=False).

``--cache-only`` measures the frozen-prefix cache alone (``finetune_cache.*``): the same
fit (trainable_blocks=1, augment=False, no head warm-up, 3 epochs) with the cache and
without it, alternately, over ``--rounds`` rounds; the epoch-time ratio is the median of the rounds' ratios
and its range within each round.

    python benchmarks/finetune.py --quick        # 20 classes, 96 px, few epochs
    python benchmarks/finetune.py [--budget 20]  # full; (c) gets --budget minutes
    python benchmarks/finetune.py --cache-only   # the frozen-prefix cache, 3 rounds (~10 min)
"""

import argparse
import time

import numpy as np

from _common import DATA, ratio_over_rounds, untraced, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=20.0, help="minutes for trainable_blocks='all'")
    parser.add_argument("--epochs", type=int, default=15, help="epochs for trainable_blocks=1, 2")
    parser.add_argument("--cache-only", action="store_true", help="only the frozen-prefix cache's epoch times")
    parser.add_argument("--rounds", type=int, default=3, help="--cache-only: rounds of the two fits")
    args = parser.parse_args()
    root = DATA / "stanford_cars_a"
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    size, epochs = 160, args.epochs
    if args.quick:
        keep = sorted(set(ytr))[:20]
        mtr, mte = np.isin(ytr, keep), np.isin(yte, keep)
        Xtr, ytr, Xte, yte = Xtr[mtr], ytr[mtr], Xte[mte], yte[mte]
        size, epochs, args.budget = 96, 2, 1.0
    ext = CNNFeatureExtractor(image_size=size)
    if args.cache_only:
        return cache_table(ext, Xtr, ytr, size, 2 if args.quick else args.rounds, args.quick)
    rows, results = [], []

    def record(name, clf, seconds, note=""):
        acc = clf.score(Xte, yte) if not isinstance(clf, float) else clf
        epoch_s = float(np.mean([h["seconds"] for h in clf.history_])) if hasattr(clf, "history_") else None
        n_iter = getattr(clf, "n_iter_", None)
        rows.append((name, f"{acc:.3f}", f"{seconds / 60:.1f}", n_iter if n_iter is not None else "-",
                     f"{epoch_s:.1f}" if epoch_s is not None else "-", note))
        results.append({"name": name, "test_accuracy": acc, "fit_minutes": seconds / 60, "epochs": n_iter,
                        "mean_epoch_seconds": epoch_s, "note": note})
        print(rows[-1], flush=True)

    # (a) head on frozen features (extraction included in the time)
    t = time.perf_counter()
    F_tr = CNNFeatureExtractor(image_size=size).fit().transform(Xtr)
    F_te = CNNFeatureExtractor(image_size=size).fit().transform(Xte)
    head = SoftmaxClassifier(random_state=0).fit(F_tr, ytr)
    acc = head.score(F_te, yte)
    rows.append(("(a) head only, frozen features", f"{acc:.3f}", f"{(time.perf_counter() - t) / 60:.1f}",
                 head.n_iter_, f"{np.mean([h['seconds'] for h in head.history_]):.2f}", "features extracted once"))
    results.append({"name": "head only", "test_accuracy": acc, "fit_minutes": (time.perf_counter() - t) / 60})
    print(rows[-1], flush=True)

    # frozen-prefix cache: same model, augment off, with and without the cache
    prefix = {}
    for cache in (True, False):
        t = time.perf_counter()
        clf = SoftmaxClassifier(extractor=ext, trainable_blocks=1, augment=False, cache_frozen=cache,
                                max_epochs=3 if not args.quick else 2, n_iter_no_change=None, random_state=0).fit(Xtr, ytr)
        prefix[cache] = float(np.mean([h["seconds"] for h in clf.history_]))
        record(f"trainable_blocks=1, no augmentation, frozen-prefix cache {'on' if cache else 'off'}",
               clf, time.perf_counter() - t, "epoch-time comparison")
    ratio = prefix[False] / prefix[True]
    print(f"frozen-prefix cache: {ratio:.1f}x faster epochs", flush=True)

    # (b) last 1 and 2 stages with augmentation
    for blocks in (1, 2):
        t = time.perf_counter()
        clf = SoftmaxClassifier(extractor=ext, trainable_blocks=blocks, max_epochs=epochs, random_state=0).fit(Xtr, ytr)
        record(f"(b) trainable_blocks={blocks}, augmentation", clf, time.perf_counter() - t)

    # (c) everything, as many epochs as the budget allows (one epoch is timed first)
    probe = SoftmaxClassifier(extractor=ext, trainable_blocks="all", max_epochs=1, validation_fraction=0,
                              random_state=0)
    t = time.perf_counter()
    probe.fit(Xtr[:: max(1, len(Xtr) // 200)], ytr[:: max(1, len(Xtr) // 200)])
    per_image = (time.perf_counter() - t) / len(Xtr[:: max(1, len(Xtr) // 200)])
    n_epochs = max(1, int(args.budget * 60 / (per_image * len(Xtr) * 1.15)))
    t = time.perf_counter()
    clf = SoftmaxClassifier(extractor=ext, trainable_blocks="all", max_epochs=n_epochs, random_state=0).fit(Xtr, ytr)
    record(f"(c) trainable_blocks='all', augmentation, {n_epochs} epochs", clf, time.perf_counter() - t,
           f"budget {args.budget:g} min")

    write_results(
        "finetune" + ("_quick" if args.quick else ""),
        {"dataset": "stanford_cars_a", "image_size": size, "backbone": "efficientnet_lite0", "device": "cpu",
         "prefix_cache_epoch_speedup": ratio, "results": results},
        rows,
        ("setting", "test accuracy", "fit min", "epochs", "s/epoch", "note"),
        notes=f"Frozen-prefix cache (trainable_blocks=1, augment=False): epochs {ratio:.1f}x faster "
        "than recomputing the frozen stages. SoftmaxClassifier defaults (Adam, lr 3e-3, backbone "
        "lr x0.1, cosine, early stopping on 10% validation).",
    )


def cache_table(ext, Xtr, ytr, size, rounds, quick):
    """Epoch seconds of one fit with the frozen-prefix cache and without, alternately in
    ``rounds`` rounds (the fine-tuning epochs only: no head warm-up)."""
    epochs, fits = 2 if quick else 3, {True: [], False: []}
    for cache in (True, False):  # traced once on a few images, untimed: the stamp records the code
        SoftmaxClassifier(extractor=ext, trainable_blocks=1, augment=False, cache_frozen=cache, head_epochs=0,
                          max_epochs=1, n_iter_no_change=None, random_state=0).fit(Xtr[::len(Xtr) // 16][:16],
                                                                                    ytr[::len(Xtr) // 16][:16])
    for r in untraced(range(rounds)):
        for cache in (True, False):
            t = time.perf_counter()
            clf = SoftmaxClassifier(extractor=ext, trainable_blocks=1, augment=False, cache_frozen=cache,
                                    head_epochs=0, max_epochs=epochs, n_iter_no_change=None,
                                    random_state=0).fit(Xtr, ytr)
            fits[cache].append({"round": r, "fit_seconds": time.perf_counter() - t,
                                "epoch_seconds": [h["seconds"] for h in clf.history_]})
            print(cache, fits[cache][-1], flush=True)
    med = {c: [float(np.median(f["epoch_seconds"])) for f in fits[c]] for c in fits}  # per round
    ratio, low, high = ratio_over_rounds(med[False], med[True])
    rows = [(f"frozen-prefix cache {'on' if c else 'off'}", f"{np.median(med[c]):.2f}",
             " / ".join(f"{v:.2f}" for v in med[c]), f"{np.median([f['fit_seconds'] for f in fits[c]]):.0f}")
            for c in (True, False)]
    rows.append(("epochs faster with the cache", f"{ratio:.1f}x", f"rounds {low:.1f}-{high:.1f}x",
                 ""))
    write_results("finetune_cache" + ("_quick" if quick else ""),
                  {"rows": [{"cache": c, **f} for c in (True, False) for f in fits[c]], "image_size": size,
                   "n_train": len(ytr), "epochs": epochs, "rounds": rounds, "epoch_speedup": ratio,
                   "epoch_speedup_low": low, "epoch_speedup_high": high},
                  rows, ("setting", "s/epoch (median)", "s/epoch per round", "fit s (median)"),
                  f"SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size={size}), trainable_blocks=1, "
                  f"augment=False, head_epochs=0, max_epochs={epochs}) on {len(ytr)} stanford_cars_a training images, "
                  "the two fits alternating in each round; an epoch includes its validation pass. The fit time "
                  "includes computing the frozen stages' outputs once (cache on). 2 CPU cores.")


if __name__ == "__main__":
    main()
