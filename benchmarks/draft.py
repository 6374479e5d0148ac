"""JPEG draft decoding (issue 45): what ``CNNFeatureExtractor(jpeg_draft=True)`` costs in
accuracy and gains in speed on stanford_cars_a.

libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 of the size only while both sides stay at
least the network's input size, so it only acts on files at least twice that size. The
photographs of stanford_cars_a are 160 px on their short side: at the default 160 px (and
at 224) no file qualifies and the features are identical, which this script checks; the
effect is measured at 80 px, where every file decodes at half size.

Per image size: the default-pipeline probe (``LinearSVC`` on the extractor's features of
the train split, scored on test) with full decoding and with draft decoding (the same
decoding for training and test), and a model trained on fully decoded images asked about
draft-decoded ones (what a classifier fitted end to end meets when draft decoding is turned
on at prediction only: its training cache decodes in full); the paired bootstrap
difference of each against full decoding; extraction images/s (decode included, the
feature cache off) in alternating rounds.

    python benchmarks/draft.py [--quick] [--rounds 3]
"""

import argparse
import time

import numpy as np
from sklearn.svm import LinearSVC

from _common import DATA, ratio_over_rounds, untraced, write_results
from skfg import CNNFeatureExtractor
from skfg.datasets import load_image_folder
from skfg.metrics import paired_bootstrap


def features(X, size, draft):
    return CNNFeatureExtractor(image_size=size, jpeg_draft=draft, cache=False).fit().transform(X)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = DATA / "stanford_cars_a"
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    if args.quick:
        Xtr, ytr, Xte, yte = Xtr[::8], ytr[::8], Xte[::8], yte[::8]
    sizes = (80, 160) if not args.quick else (80,)
    rows, table = [], []
    for size in sizes:
        feats = {d: (features(Xtr, size, d), features(Xte, size, d)) for d in (False, True)}
        identical = bool(np.array_equal(feats[False][1], feats[True][1]))
        full = LinearSVC().fit(feats[False][0], ytr)
        draft = LinearSVC().fit(feats[True][0], ytr)
        correct = {"full": full.predict(feats[False][1]) == yte, "draft": draft.predict(feats[True][1]) == yte,
                   "full-trained, draft at test": full.predict(feats[True][1]) == yte}
        # speed: decode + network, every setting once a round, the feature cache off
        paths = Xte[:200] if not args.quick else Xte[:40]
        features(paths[:8], size, False), features(paths[:8], size, True)  # warm-up (traced)
        times = {False: [], True: []}
        for _ in untraced(range(args.rounds)):
            for d in (False, True):
                t = time.perf_counter()
                features(paths, size, d)
                times[d].append(time.perf_counter() - t)
        speed, low, high = ratio_over_rounds(times[False], times[True])
        for name, c in correct.items():
            diff = paired_bootstrap(c, correct["full"]) if name != "full" else None
            rows.append({"image_size": size, "decoding": name, "test_accuracy": float(c.mean()),
                         "difference": None if diff is None else diff["difference"],
                         "low": None if diff is None else diff["low"], "high": None if diff is None else diff["high"],
                         "features_identical": identical, "img_per_s_full": len(paths) / float(np.median(times[False])),
                         "img_per_s_draft": len(paths) / float(np.median(times[True])),
                         "speedup": speed, "speedup_low": low, "speedup_high": high})
            r = rows[-1]
            table.append((size, name, f"{100 * r['test_accuracy']:.1f}",
                          "" if diff is None else f"{100 * r['difference']:+.1f} [{100 * r['low']:+.1f}, "
                                                  f"{100 * r['high']:+.1f}]",
                          "yes" if identical else "no",
                          f"{r['img_per_s_full']:.0f} / {r['img_per_s_draft']:.0f}",
                          f"{speed:.2f}x [{low:.2f}-{high:.2f}]"))
    effect = next(r for r in rows if r["image_size"] == 80 and r["decoding"] == "draft")
    write_results(
        "draft" + ("_quick" if args.quick else ""), {"rows": rows}, table,
        ("px", "decoding", "test accuracy %", "vs full, points [95 % interval]", "features identical",
         "img/s full / draft", "draft speed-up [round range]"),
        f"stanford_cars_a ({len(ytr)} train / {len(yte)} test images; every photograph is 160 px on its short side), "
        "EfficientNet-Lite0 GAP features, LinearSVC(); accuracy differences are paired bootstrap intervals over the "
        f"test images; speed over {len(paths)} test files, {args.rounds} alternating rounds, decode included, the "
        "feature cache off. Draft decoding acts only on files at least twice the input size: at 160 px none here.",
        headline={"draft_80px_points": 100 * effect["difference"], "draft_80px_speedup": effect["speedup"]},
        headline_ranges={"draft_80px_points": [100 * effect["low"], 100 * effect["high"]],
                         "draft_80px_speedup": [effect["speedup_low"], effect["speedup_high"]]})


if __name__ == "__main__":
    main()
