"""The test size of the default model (issue 46, item 1): does a fine-tuned default score
better when it predicts at a larger size than the one it was fitted for?

When it was measured, the default fitted on random crops of 128 px (``Augmentation``'s ``crop_ratio`` 0.8 of the
160 px test size: FixRes) and predicts at 160 px. The FixRes paper's observation is that a
network trained on random resized crops sees objects larger in training than at the same
test size, so a test size above the training crop's can pay; ``quality.md`` shows that
EfficientNet-Lite0 (pretrained at 224 px) gains about 5 points when it *fits* at 224 px,
at twice the fitting time. A larger test size alone costs nothing at fitting time, only
predict time.

Every seed fits ``SoftmaxClassifier(extractor=CNNFeatureExtractor())`` with every parameter
at its default (the ``recipe_headline`` fit), then predicts val and test at each test size
in ``--sizes`` (the fitted model's ``preprocessing_`` with another ``image_size``: the
images are resized to it and centre-cropped, the network is fully convolutional). The
table gives each size's accuracy, its difference from 160 px paired by seed (95 %
Student-t), and the predict ms/image of the test split from files (decode included, one
pass; default engine). The size is chosen on **val** (the highest mean); test only
reports. A size S chosen here is the default ``image_size=S`` with
``Augmentation(crop_ratio=128 / S)``: the same 128 px training crops, so the same fitting
time.

    python benchmarks/test_size.py                      # 3 seeds: ~40 min on 2 cores
    python benchmarks/test_size.py --seeds 0 --merge    # add a seed
    python benchmarks/test_size.py --quick              # 12 classes, 64 px fit, 2 epochs: ~2 min
"""

import argparse
import dataclasses
import time

import numpy as np

from _common import DATA, TRACER, format_table, mergeable_rows, paired_by_seed, seed_summary, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.images import Augmentation


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated test sizes (px; default: the fitted size and 16, 32, 48, 64 px more)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the seeds already in the results file when its code is unchanged")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = DATA / "stanford_cars_a"
    splits = {s: load_image_folder(root / s) for s in ("train", "val", "test")}
    fit_size, extra = CNNFeatureExtractor().image_size, {}
    sizes = [fit_size + 16 * k for k in range(5)] if args.sizes is None else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        keep = sorted(set(splits["train"][1]))[:12]
        splits = {s: (X[np.isin(y, keep)], y[np.isin(y, keep)]) for s, (X, y) in splits.items()}
        fit_size, extra = 64, {"max_epochs": 2}
        sizes = [64, 80, 96]
    reference = fit_size
    if reference not in sizes:
        parser.error(f"--sizes must include the fitted size {reference}")
    out_name = "test_size_quick" if args.quick else "test_size"
    try:
        rows = [r for r in mergeable_rows(out_name) if r["seed"] not in seeds] if args.merge else []
    except ValueError as err:
        parser.error(str(err))
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits["train"], splits["val"], splits["test"]
    for seed in seeds:
        t = time.perf_counter()
        clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=fit_size), random_state=seed, verbose=False,
                                **extra).fit(Xtr, ytr)
        fit_minutes = (time.perf_counter() - t) / 60
        fitted = clf.preprocessing_
        for size in sizes:
            clf.preprocessing_ = dataclasses.replace(fitted, image_size=size)
            val = float(np.mean(clf.predict(Xva) == yva))
            with TRACER.paused():  # predict ran traced on val just before
                t = time.perf_counter()
                test = float(np.mean(clf.predict(Xte) == yte))
                ms = 1000 * (time.perf_counter() - t) / len(Xte)
            rows.append({"seed": seed, "test_size": size, "fit_size": fit_size, "val_accuracy": val,
                         "test_accuracy": test, "predict_ms_per_image": ms, "fit_minutes": fit_minutes,
                         "epochs": int(clf.n_iter_)})
            print(rows[-1], flush=True)
        clf.preprocessing_ = fitted
        rows.sort(key=lambda r: (r["test_size"], r["seed"]))

        present = sorted({r["test_size"] for r in rows})
        summary, paired = {}, {}
        for size in present:
            rs = [r for r in rows if r["test_size"] == size]
            summary[size] = {"seeds": [r["seed"] for r in rs], **seed_summary(rs),
                             "predict_ms_per_image": float(np.median([r["predict_ms_per_image"] for r in rs]))}
            if size != reference:
                diff = paired_by_seed(rs, [r for r in rows if r["test_size"] == reference])
                if diff is not None:
                    paired[size] = diff
        chosen = max(summary, key=lambda s: summary[s]["val_mean"]) if len(summary[reference]["seeds"]) > 1 else None

        def pct(s, part):
            hw = s[f"{part}_half_width"]
            return f"{100 * s[f'{part}_mean']:.1f}" + ("" if np.isnan(hw) else f" ± {100 * hw:.1f}")

        def pts(d, part):
            return f"{100 * d[f'{part}_mean']:+.1f} ± {100 * d[f'{part}_half_width']:.1f}" if d else "-"

        table = [(r["test_size"], r["seed"], f"{r['val_accuracy']:.3f}", f"{r['test_accuracy']:.3f}",
                  f"{r['predict_ms_per_image']:.1f}", f"{r['fit_minutes']:.1f}") for r in rows]
        header = ("test size px", "seed", "val acc", "test acc", "predict ms/img", "fit min")
        notes = (f"stanford_cars_a ({len(ytr)} train / {len(yva)} val / {len(yte)} test images); each seed fits "
                 f"the default SoftmaxClassifier once (fitted for {fit_size} px: training crops of "
                 f"{Augmentation().crop_size(fit_size)} px) and predicts at every "
                 "test size; predict ms/img: the test split from files, one pass, default engine, 2 CPU cores. "
                 "Chosen on val; test only reports.")
        notes += "\n\nMean over seeds (%, 95 % Student-t) and the difference from the fitted size, paired by seed " \
                 "(points):\n\n" + format_table(
                     [(s, len(v["seeds"]), pct(v, "val"), pct(v, "test"), pts(paired.get(s), "val"),
                       pts(paired.get(s), "test"), f"{v['predict_ms_per_image']:.1f}") for s, v in summary.items()],
                     ("test size px", "seeds", "val %", "test %", "val diff", "test diff", "predict ms/img"))
        if chosen is not None:
            notes += f"\n\nChosen on val (highest mean): {chosen} px."
        write_results(out_name, {"rows": rows, "summary": {str(k): v for k, v in summary.items()},
                                 "paired": {str(k): v for k, v in paired.items()}, "chosen_on_val": chosen,
                                 "reference_size": reference, "quick": args.quick}, table, header, notes)


if __name__ == "__main__":
    main()
