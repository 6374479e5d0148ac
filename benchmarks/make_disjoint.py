"""The fine-tuning defaults on a make-disjoint split of stanford_cars_a (issue 46, item 4).

The defaults were chosen on the val split of all 98 classes. Would the same choices be
made, and would they hold, on car makes that took no part in choosing them? The 98
classes are split by make, in the data set's alphabetical order, into two halves:

- ``choose``: the makes AM General to Buick (50 classes: Acura, Aston Martin, Audi, BMW,
  Bentley, Bugatti; AM General and Buick), on whose **val** split each choice is made again;
- ``confirm``: Cadillac to Eagle (48 classes: Cadillac, Chevrolet, Chrysler, Dodge, Eagle;
  Daewoo), on whose
  **test** split the choice is checked. No class of a ``confirm`` make is used to choose.

Every fit is ``SoftmaxClassifier(extractor=CNNFeatureExtractor())`` on one half's training
images only (about 1,200: above the small-set rule's 1,000, so the full recipe), scored on
the same half's val and test images, with one candidate per row:

- ``default``: every parameter at its default (AdamW 3e-3, weight decay 0.05, crops and flips);
- ``sgd``: the optimiser the default replaced (SGD with Nesterov momentum, 0.01, weight
  decay 1e-4), everything else at its default;
- ``old_augment``: the augmentation the default dropped (TrivialAugmentWide and random
  erasing, p=0.25) added back;
- ``no_label_smoothing``: ``label_smoothing=0`` (the default keeps 0.1).

For each alternative the table gives ``default`` minus it, paired by seed with a 95 %
Student-t interval, on each half's val and test, and a verdict from the ``choose`` half's
val (where the choice is made) and the ``confirm`` half's test (where it is checked):
"default better" or "alternative better" when the interval excludes 0, else "no
significant difference" with the side the mean is on. A choice that suits only the makes
it was made on shows as "alternative better" on ``confirm`` test.

    python benchmarks/make_disjoint.py                 # 4 rows x 2 halves x 3 seeds: ~2.6 h on 2 cores
    python benchmarks/make_disjoint.py --rows default,sgd --seeds 0,1,2   # 12 fits of ~6.5 min
    python benchmarks/make_disjoint.py --rows old_augment --merge   # add rows to the file
    python benchmarks/make_disjoint.py --quick         # 4 classes a half, 64 px, 2 epochs: ~2 min
"""

import argparse
import csv
import time

import numpy as np

from _common import DATA, format_table, mergeable_rows, paired_by_seed, seed_summary, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.images import Augmentation

# makes of more than one word among stanford_cars_a's classes (the others are the name's first word)
TWO_WORD_MAKES = ("AM General", "Aston Martin")
ROWS = {  # name -> (SoftmaxClassifier parameters, note)
    "default": ({}, "every parameter at its default"),
    "sgd": ({"optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4}, "SGD Nesterov 0.01, wd 1e-4 (the old optimiser)"),
    "old_augment": ({"augment": Augmentation(trivial_augment=True, erasing=0.25)},
                    "+ TrivialAugmentWide + random erasing (the old augmentation)"),
    "no_label_smoothing": ({"label_smoothing": 0.0}, "label_smoothing=0"),
}
HALVES = ("choose", "confirm")


def make_of(name):
    """The make of a Stanford Cars class name (``"Aston Martin V8 Vantage Coupe 2012"`` -> ``"Aston Martin"``)."""
    return next((m for m in TWO_WORD_MAKES if name.startswith(m + " ")), name.split(" ")[0])


def make_halves(root):
    """``({half: [class folders]}, {half: [makes]})``: makes in the data set's label order,
    the first ones up to half of the classes in ``choose``, the rest in ``confirm``."""
    with open(root / "classes.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["label"]))
    makes = list(dict.fromkeys(make_of(r["name"]) for r in rows))
    folders = {m: [r["class_folder"] for r in rows if make_of(r["name"]) == m] for m in makes}
    cut, count = 0, 0
    while count < len(rows) / 2:
        count += len(folders[makes[cut]])
        cut += 1
    split = {"choose": makes[:cut], "confirm": makes[cut:]}
    return {h: [c for m in ms for c in folders[m]] for h, ms in split.items()}, split


def compare(diff, part):
    """One half's verdict on ``default - alternative`` (``diff``, :func:`paired_by_seed`) for ``part``."""
    mean, half = diff[f"{part}_mean"], diff[f"{part}_half_width"]
    if mean - half > 0:
        return "default better"
    if mean + half < 0:
        return "alternative better"
    return "no significant difference (default " + ("ahead" if mean > 0 else "behind" if mean < 0 else "level") + ")"


def decide(paired):
    """The verdict on one alternative: what the ``choose`` half's val and the ``confirm``
    half's test say of ``default - alternative``."""
    if "choose" not in paired or "confirm" not in paired:
        return "-"
    return f"choose val: {compare(paired['choose'], 'val')}; confirm test: {compare(paired['confirm'], 'test')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--merge", action="store_true",
                        help="keep the (row, half, seed) fits already in the results file when its code is unchanged")
    args = parser.parse_args()
    names = args.rows.split(",")
    if set(names) - set(ROWS):
        parser.error(f"unknown rows {sorted(set(names) - set(ROWS))}; valid: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = DATA / "stanford_cars_a"
    halves, makes = make_halves(root)
    size, epochs = CNNFeatureExtractor().image_size, None
    if args.quick:
        halves = {h: c[:4] for h, c in halves.items()}
        size, epochs = 64, 2
    splits = {s: load_image_folder(root / s) for s in ("train", "val", "test")}
    out_name = "make_disjoint_quick" if args.quick else "make_disjoint"
    todo = [(name, half, seed) for seed in seeds for name in names for half in HALVES]  # whole seeds first
    try:
        fits = [r for r in mergeable_rows(out_name) if (r["name"], r["half"], r["seed"]) not in todo] \
            if args.merge else []
    except ValueError as err:
        parser.error(str(err))
    for name, half, seed in todo:
        params, note = ROWS[name]
        params = {**params, **({"max_epochs": epochs} if epochs else {})}
        (Xtr, ytr), (Xva, yva), (Xte, yte) = ((X[np.isin(y, halves[half])], y[np.isin(y, halves[half])])
                                              for X, y in splits.values())
        t = time.perf_counter()
        clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=size), random_state=seed, verbose=False,
                                **params).fit(Xtr, ytr)
        fit_s = time.perf_counter() - t
        fits.append({"name": name, "half": half, "seed": seed, "note": note, "classes": len(halves[half]),
                     "n_train": int(len(ytr)), "val_accuracy": float(np.mean(clf.predict(Xva) == yva)),
                     "test_accuracy": float(np.mean(clf.predict(Xte) == yte)), "fit_minutes": fit_s / 60,
                     "epochs": int(clf.n_iter_), "fine_tuned": bool(clf.fine_tuned_),
                     "lr_halvings": int(max((h.get("lr_halvings", 0) for h in clf.history_), default=0))})
        print(fits[-1], flush=True)
        order = {n: i for i, n in enumerate(ROWS)}
        fits.sort(key=lambda r: (order[r["name"]], HALVES.index(r["half"]), r["seed"]))

        summary, paired = {}, {}
        for n in ROWS:
            for h in HALVES:
                rs = [r for r in fits if r["name"] == n and r["half"] == h]
                if rs:
                    summary.setdefault(n, {})[h] = {"seeds": [r["seed"] for r in rs], **seed_summary(rs)}
                base = [r for r in fits if r["name"] == "default" and r["half"] == h]
                diff = paired_by_seed(base, rs) if n != "default" else None  # default minus the alternative
                if diff is not None:
                    paired.setdefault(n, {})[h] = diff
        verdicts = {n: decide(p) for n, p in paired.items()}

        def pct(s, part):
            hw = s[f"{part}_half_width"]
            return f"{100 * s[f'{part}_mean']:.1f}" + ("" if np.isnan(hw) else f" ± {100 * hw:.1f}")

        def pts(d, part):
            return f"{100 * d[f'{part}_mean']:+.1f} ± {100 * d[f'{part}_half_width']:.1f}"

        rows = [(r["name"], r["half"], r["seed"], r["n_train"], f"{r['val_accuracy']:.3f}", f"{r['test_accuracy']:.3f}",
                 f"{r['fit_minutes']:.1f}", r["lr_halvings"], r["note"]) for r in fits]
        header = ("row", "half", "seed", "train images", "val acc", "test acc", "fit min", "lr halvings", "note")
        notes = (f"stanford_cars_a split by make: choose = {', '.join(makes['choose'])} "
                 f"({len(halves['choose'])} classes); confirm = {', '.join(makes['confirm'])} "
                 f"({len(halves['confirm'])} classes). Each fit trains on its half's training images and is "
                 f"scored on that half's val and test images; {size} px, 2 CPU cores.")
        notes += "\n\nMean over seeds (%, 95 % Student-t):\n\n" + format_table(
            [(n, h, len(s["seeds"]), pct(s, "val"), pct(s, "test")) for n, hs in summary.items() for h, s in hs.items()],
            ("row", "half", "seeds", "val %", "test %"))
        if paired:
            notes += ("\n\nThe default minus each alternative, paired by seed (points, 95 % Student-t); the choice "
                      "is made on choose val and checked on confirm test:\n\n") + format_table(
                [(n, pts(p["choose"], "val") if "choose" in p else "-", pts(p["choose"], "test") if "choose" in p
                  else "-", pts(p["confirm"], "val") if "confirm" in p else "-",
                  pts(p["confirm"], "test") if "confirm" in p else "-", verdicts[n]) for n, p in paired.items()],
                ("default minus", "choose val", "choose test", "confirm val", "confirm test", "verdict"))
        write_results(out_name, {"rows": fits, "summary": summary, "paired": paired, "verdicts": verdicts,
                                 "halves": halves, "makes": makes, "image_size": size, "quick": args.quick},
                      rows, header, notes)


if __name__ == "__main__":
    main()
