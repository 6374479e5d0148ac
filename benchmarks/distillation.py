"""Knowledge distillation for the quality setting (issue 46, item 3): does a student taught by
the quality setting's model beat the same student trained on the labels alone?

The teacher is the quality setting of the training guide, ``SoftmaxClassifier(extractor=
CNNFeatureExtractor(), max_epochs=22)`` (EfficientNet-Lite0 at 224 px; on val it ties the
Lite1 and Lite2 rows of ``quality.md``, at half the CPU fitting time of Lite2), or with
``--teacher lite2`` the same at EfficientNet-Lite2. Rows, per seed (each fit seeded with
that seed, every other parameter at its default):

- ``teacher``: the teacher itself (also the baseline of ``distilled_e22``);
- ``default``: Lite0 at the defaults (11 epochs), on the labels alone;
- ``distilled``: the same with ``teacher=<that seed's teacher>`` at the defaults
  (``distillation_weight=0.5``, ``distillation_temperature=1.0``; one setting, not tuned);
- ``distilled_e22``: the teacher's own setting (22 epochs) with the teacher: "born-again"
  distillation, paired against the teacher.

Each teacher is saved in ``--work`` and reused by its students (and by a later run, while the
skfg code that fitted it is unchanged: ``ledger.parts.Parts``; the stamp then covers that code).
``fit min`` of a student counts its own fit (the teacher's predictions on the training
images included), not the teacher's; choices on val, test only reports.

    python benchmarks/distillation.py --rows teacher,default,distilled --seeds 0    # ~50 min
    python benchmarks/distillation.py --rows teacher,default,distilled --seeds 1,2 --merge
    python benchmarks/distillation.py --rows distilled_e22 --merge
    python benchmarks/distillation.py --quick        # 12 classes, 2-4 epochs at 90 px: ~3 min
"""

import argparse
import time

import numpy as np

from _common import DATA, TRACER, format_table, mergeable_rows, paired_by_seed, seed_summary, write_results
from ledger.parts import Parts
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder

ROWS = ("teacher", "default", "distilled", "distilled_e22")
PAIRS = {"distilled": "default", "distilled_e22": "teacher"}  # row: its baseline
TEACHERS = {"lite0": "efficientnet_lite0", "lite2": "efficientnet_lite2"}
QUALITY_EPOCHS = 22  # the quality setting of docs/training.rst


def fitted_teacher(teachers, name, seed, size, epochs, X, y):
    """The seed's teacher with its fit minutes, from ``teachers`` (:class:`ledger.parts.Parts`) or
    fitted (and kept there)."""
    key = f"teacher_{name}_{size}_e{epochs}_s{seed}"
    saved = teachers.load(key)
    if saved is not None:
        return saved
    t = time.perf_counter()
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(TEACHERS[name], image_size=size), max_epochs=epochs,
                            random_state=seed, verbose=False).fit(X, y)
    saved = (clf, (time.perf_counter() - t) / 60)
    teachers.dump(key, saved)
    return saved


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", default=",".join(ROWS[:3]), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--teacher", default="lite0", choices=sorted(TEACHERS))
    parser.add_argument("--work", default="benchmarks/logs/distillation", help="where the teachers are saved")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows already in the results file when its code is unchanged")
    args = parser.parse_args()
    names, seeds = args.rows.split(","), [int(s) for s in args.seeds.split(",")]
    if unknown := set(names) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ROWS)}")
    root = DATA / "stanford_cars_a"
    splits = {s: load_image_folder(root / s) for s in ("train", "val", "test")}
    size, epochs, teacher_epochs = CNNFeatureExtractor().image_size, None, QUALITY_EPOCHS
    if args.quick:
        keep = sorted(set(splits["train"][1]))[:12]
        splits = {s: (X[np.isin(y, keep)], y[np.isin(y, keep)]) for s, (X, y) in splits.items()}
        size, epochs, teacher_epochs = int(round(0.4 * size)), 2, 4
    out_name = ("distillation_quick" if args.quick else "distillation") + ("" if args.teacher == "lite0" else "_lite2")
    try:
        rows = mergeable_rows(out_name) if args.merge else []
    except ValueError as err:
        parser.error(str(err))
    rows = [r for r in rows if not (r["name"] in names and r["seed"] in seeds)]
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits["train"], splits["val"], splits["test"]
    cache = {"quick": args.quick}  # the teachers of an earlier run, while the code that fitted them is unchanged
    teachers = Parts(args.work, cache, resume=True, cache=True)
    for seed in seeds:
        for name in names:
            teacher = None
            if name != "default":
                teacher, teacher_minutes = fitted_teacher(teachers, args.teacher, seed, size, teacher_epochs, Xtr, ytr)
            if name == "teacher":
                clf, fit_minutes = teacher, teacher_minutes
            else:
                backbone_epochs = teacher_epochs if name == "distilled_e22" else epochs
                params = {} if backbone_epochs is None else {"max_epochs": backbone_epochs}
                t = time.perf_counter()
                clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=size), teacher=teacher,
                                        random_state=seed, verbose=False, **params).fit(Xtr, ytr)
                fit_minutes = (time.perf_counter() - t) / 60
            val = float(np.mean(clf.predict(Xva) == yva))
            with TRACER.paused():  # predict ran traced on val just before
                t = time.perf_counter()
                test = float(np.mean(clf.predict(Xte) == yte))
                ms = 1000 * (time.perf_counter() - t) / len(Xte)
            rows.append({"name": name, "seed": seed, "backbone": clf.trunk_settings_["backbone"],
                         "image_size": size, "epochs": clf.resolved_param("max_epochs"),
                         "teacher": None if name in ("default", "teacher") else f"{args.teacher}_e{teacher_epochs}",
                         "val_accuracy": val, "test_accuracy": test, "fit_minutes": fit_minutes,
                         "predict_ms_per_image": ms})
            print(rows[-1], flush=True)
            write(out_name, rows, args, len(ytr), len(yva), len(yte))


def write(out_name, rows, args, n_train, n_val, n_test):
    rows.sort(key=lambda r: (ROWS.index(r["name"]), r["seed"]))
    present = [n for n in ROWS if any(r["name"] == n for r in rows)]
    summary, paired = {}, {}
    for name in present:
        rs = [r for r in rows if r["name"] == name]
        summary[name] = {"seeds": [r["seed"] for r in rs], **seed_summary(rs),
                         "fit_minutes_max": max(r["fit_minutes"] for r in rs), "epochs": rs[0]["epochs"]}
        base = [r for r in rows if r["name"] == PAIRS.get(name)]
        diff = paired_by_seed(rs, base) if base else None
        if diff is not None:
            paired[name] = diff

    def pct(s, part):
        hw = s[f"{part}_half_width"]
        return f"{100 * s[f'{part}_mean']:.1f}" + ("" if np.isnan(hw) else f" ± {100 * hw:.1f}")

    def pts(d, part):
        return f"{100 * d[f'{part}_mean']:+.1f} ± {100 * d[f'{part}_half_width']:.1f}" if d else "-"

    table = [(r["name"], r["seed"], r["backbone"], r["epochs"], r["teacher"] or "-", f"{r['val_accuracy']:.3f}",
              f"{r['test_accuracy']:.3f}", f"{r['fit_minutes']:.1f}", f"{r['predict_ms_per_image']:.1f}")
             for r in rows]
    header = ("row", "seed", "backbone", "epochs", "teacher", "val acc", "test acc", "fit min", "predict ms/img")
    notes = (f"stanford_cars_a ({n_train} train / {n_val} val / {n_test} test images) at "
             f"{rows[0]['image_size']} px; students: EfficientNet-Lite0 at the defaults, with the seed's teacher "
             "(distillation_weight=0.5, distillation_temperature=1.0) or without; fit min: wall time on 2 CPU cores "
             "(a student's own fit, the teacher's predictions included); predict ms/img: the test split from files, "
             "one pass. Choices on val; test only reports.")
    notes += "\n\nMean over seeds (%, 95 % Student-t) and the difference from the row's baseline, paired by seed " \
             "(points; distilled - default, distilled_e22 - teacher):\n\n" + format_table(
                 [(n, len(s["seeds"]), pct(s, "val"), pct(s, "test"), pts(paired.get(n), "val"),
                   pts(paired.get(n), "test"), f"{s['fit_minutes_max']:.1f}") for n, s in summary.items()],
                 ("row", "seeds", "val %", "test %", "val diff", "test diff", "longest fit min"))
    write_results(out_name, {"rows": rows, "summary": summary, "paired": paired, "teacher": args.teacher,
                             "quick": args.quick}, table, header, notes)


if __name__ == "__main__":
    main()
