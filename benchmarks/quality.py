"""The quality setting (issue 46): what a larger backbone, a larger test size, a longer
schedule and flip test-time augmentation buy on stanford_cars_a, at full length.

Every row is ``SoftmaxClassifier(extractor=CNNFeatureExtractor(backbone, image_size=S))``
with the default fine-tuning recipe (AdamW), one change at a time:

- ``lite0_160``: the default (EfficientNet-Lite0, 160 px): the reference;
- ``lite0_224``: the test size 224 px (FixRes: the training crops are 0.8 of it, 179 px);
- ``lite0_160_x2``: twice the epochs (44);
- ``lite1_160`` / ``lite1_224`` / ``lite2_160`` / ``lite2_224``: EfficientNet-Lite1 and
  Lite2 at both sizes.

Each fitted model is scored on val and test as it predicts and with flip test-time
augmentation (the mean of the class probabilities of the image and of its mirror image).
The table adds, per row, the mean over seeds with a 95 % Student-t interval and the
difference from ``lite0_160`` paired by seed; the choice is made on val.

Fitting is the expensive part (a Lite2 row at 224 px is about an hour on 2 CPU cores),
so it can run on another machine: ``--fit`` fits rows in ``--workers`` parallel
processes on ``--device`` and appends one JSON line per (row, seed) to ``--out``. The
plain run (without ``--fit``) reads those lines (``--from``), measures here, side by side
over rounds, each (backbone, size)'s predict ms/image from files on this CPU with the
default engine (without and with the flip), and writes ``results/quality.json`` and
``.md``. Before it writes, it runs one short fit of every row's kind on a few images so
that the code the fits executed is recorded (and checked for staleness) like any other
benchmark's.

    python benchmarks/quality.py --quick                      # 12 classes, 64 px, CPU, ~4 min
    python benchmarks/quality.py --fit --device cuda --workers 8 --seeds 0,1,2 --out rows.jsonl
    python benchmarks/quality.py --from rows.jsonl            # predict times here; writes results
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROWS = {  # name -> (backbone, image size, other parameters, note)
    "lite0_160": ("efficientnet_lite0", 160, {}, "the default"),
    "lite0_224": ("efficientnet_lite0", 224, {}, "test size 224 px"),
    "lite0_160_x2": ("efficientnet_lite0", 160, {"max_epochs": 44}, "twice the epochs (44)"),
    "lite1_160": ("efficientnet_lite1", 160, {}, "EfficientNet-Lite1"),
    "lite1_224": ("efficientnet_lite1", 224, {}, "EfficientNet-Lite1, 224 px"),
    "lite2_160": ("efficientnet_lite2", 160, {}, "EfficientNet-Lite2"),
    "lite2_224": ("efficientnet_lite2", 224, {}, "EfficientNet-Lite2, 224 px"),
}
# rough cost of a fit relative to lite0_160 (the order the parallel jobs start in: longest first)
COST = {"lite0_160": 1, "lite0_224": 2, "lite0_160_x2": 2, "lite1_160": 1.5, "lite1_224": 3, "lite2_160": 2,
        "lite2_224": 4}
REFERENCE = "lite0_160"


def mirrored(paths):
    """The images of ``paths`` flipped left to right (PIL images, decoded here)."""
    from PIL import Image, ImageOps

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(ImageOps.mirror(im.convert("RGB")))
    return out


def split_subset(data, quick):
    """``{split: (paths, labels)}`` of stanford_cars_a (the first 12 classes with ``quick``)."""
    from skfg.datasets import load_image_folder

    out = {s: load_image_folder(Path(data) / s) for s in ("train", "val", "test")}
    if quick:
        keep = sorted(set(out["train"][1]))[:12]
        out = {s: (X[np.isin(y, keep)], y[np.isin(y, keep)]) for s, (X, y) in out.items()}
    return out


def make_classifier(name, seed, device="auto", quick=False, **extra):
    """The row's classifier (64 px with ``quick``)."""
    from skfg import CNNFeatureExtractor, SoftmaxClassifier

    backbone, size, params, _ = ROWS[name]
    if quick:
        size = 64 if size == 160 else 96
    ext = CNNFeatureExtractor(backbone, image_size=size, device=device)
    # float32 everywhere: the accuracy a CPU user gets (on CUDA the recipe would train under float16 autocast)
    return SoftmaxClassifier(extractor=ext, random_state=seed, device=device, precision="float32",
                             **{**params, **extra})


def fit_row(job):
    """Fit one (row, seed) and score it on val and test, plain and with the flip: a dict."""
    name, seed, data, device, quick, threads = job
    import torch

    torch.set_num_threads(threads)
    if torch.cuda.is_available():  # float32 convolutions as on a CPU, not TF32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    splits = split_subset(data, quick)
    Xtr, ytr = splits["train"]
    clf = make_classifier(name, seed, device, quick)
    t = time.perf_counter()
    clf.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t
    history = clf.history_[-clf.resolved_param("max_epochs"):]
    row = {"name": name, "backbone": ROWS[name][0], "image_size": clf.extractor.image_size, "seed": seed,
           "note": ROWS[name][3], "epochs": len(history), "fit_minutes": fit_s / 60,
           "train_images_per_s": float(np.median([h["n_samples"] / h["train_seconds"] for h in history])),
           "lr_halvings": history[-1].get("lr_halvings", 0) if history else 0,
           "loss_history": [h.get("loss") for h in history],
           "device": torch.cuda.get_device_name() if str(clf.device_).startswith("cuda") else "cpu",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d", time.gmtime())}
    for split in ("val", "test"):
        X, y = splits[split]
        P = clf.predict_proba(X)
        Pf = clf.predict_proba(mirrored(X))
        row[f"{split}_accuracy"] = float(np.mean(clf.classes_[P.argmax(1)] == y))
        row[f"{split}_flip_accuracy"] = float(np.mean(clf.classes_[(P + Pf).argmax(1)] == y))
    return row


def fit_jobs(args):
    """``--fit``: every (row, seed) in parallel worker processes, one JSON line each to ``--out``."""
    names = args.rows.split(",") if args.rows else list(ROWS)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(n, s, args.data, args.device, args.quick, args.threads)
            for s in seeds for n in sorted(names, key=lambda n: -COST[n])]
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {(r["name"], r["seed"]) for r in map(json.loads, out.read_text().splitlines()) if r}
    jobs = [j for j in jobs if (j[0], j[1]) not in done]
    print(f"{len(jobs)} fits in {args.workers} processes", flush=True)
    t = time.perf_counter()
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    todo, running = list(jobs), set()
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as pool, \
            out.open("a") as f:
        while todo or running:
            # no fit starts after --deadline seconds (those left are reported, the running ones finish)
            while todo and len(running) < args.workers and time.perf_counter() - t < args.deadline:
                running.add(pool.submit(fit_row, todo.pop(0)))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                row = fut.result()
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"{time.perf_counter() - t:6.0f} s  {row['name']:13s} seed {row['seed']}  val "
                      f"{row['val_accuracy']:.3f} / flip {row['val_flip_accuracy']:.3f}  test "
                      f"{row['test_accuracy']:.3f}  fit {row['fit_minutes']:.1f} min", flush=True)
    if todo:
        print(f"not started (deadline): {[(n, s) for n, s, *_ in todo]}", flush=True)


def record_code(data, quick_rows):
    """A short fit of every row kind (two epochs, 24 images, 64 px) with the trace on, so
    the stamp records the code the fits on the other machine executed."""
    splits = split_subset(data, quick=True)
    X, y = splits["train"][0][:24], splits["train"][1][:24]
    for name in quick_rows:
        clf = make_classifier(name, 0, "cpu", quick=True, max_epochs=2, head_epochs=1)
        clf.fit(X, y)
        clf.predict_proba(X[:4])
        clf.predict_proba(mirrored(X[:4]))


def predict_times(data, kinds, rounds, n_images, quick):
    """ms/image of ``predict_proba`` from files, per (backbone, size), each model fitted
    briefly on a few images (the cost does not depend on the weights), plain and with
    the flip; timed side by side, ``rounds`` rounds over ``n_images`` test files."""
    from _common import TRACER

    splits = split_subset(data, quick)
    Xtr, ytr = splits["train"]
    keep = np.concatenate([np.flatnonzero(ytr == c)[:1] for c in np.unique(ytr)])
    X = splits["test"][0][:n_images]
    models = {}
    for name in kinds:
        clf = make_classifier(name, 0, "cpu", quick, max_epochs=1, head_epochs=0)
        models[name] = clf.fit(Xtr[keep], ytr[keep])
    Xm = mirrored(X)
    times = {k: {"plain": [], "flip": []} for k in kinds}
    for clf in models.values():  # warm-up (engine built), traced
        clf.predict_proba(X[:32])
    with TRACER.paused():
        for _ in range(rounds):
            for name, clf in models.items():
                for i in range(0, len(X), 32):  # the default batch, images from files
                    t = time.perf_counter()
                    clf.predict_proba(X[i : i + 32])
                    plain = time.perf_counter() - t
                    t = time.perf_counter()
                    clf.predict_proba(Xm[i : i + 32])
                    times[name]["plain"].append(plain)
                    times[name]["flip"].append(plain + time.perf_counter() - t)
    n_batches = len(range(0, len(X), 32))
    out = {}
    for name in kinds:
        per_round = {k: 1000 * np.asarray(v).reshape(rounds, n_batches).sum(1) / len(X)
                     for k, v in times[name].items()}
        out[name] = {"predict_ms_per_image": float(np.median(per_round["plain"])),
                     "predict_ms_per_image_range": [float(per_round["plain"].min()), float(per_round["plain"].max())],
                     "predict_flip_ms_per_image": float(np.median(per_round["flip"])),
                     "per_round_plain": per_round["plain"].tolist()}
    ref = np.asarray(out[kinds[0]]["per_round_plain"])
    for name in kinds:
        r = ref / np.asarray(out[name]["per_round_plain"])
        out[name]["speed_vs_reference"] = [float(np.median(r)), float(r.min()), float(r.max())]
    return out


def assemble(args):
    from _common import DATA, format_table, machine_gflops, paired_by_seed, seed_interval, write_results

    data = args.data or str(DATA / "stanford_cars_a")
    if args.quick and not args.source:  # fit here, on this CPU, in one process
        rows = [fit_row((n, s, data, "cpu", True, torch_threads())) for s in seeds_of(args) for n in names_of(args)]
    else:
        rows = [json.loads(line) for line in Path(args.source).read_text().splitlines() if line.strip()]
    names = [n for n in ROWS if any(r["name"] == n for r in rows)]
    kinds = [n for n in names if n != "lite0_160_x2"]  # (the longer schedule predicts as lite0_160)
    record_code(data, names)
    gflops = machine_gflops()
    times = predict_times(data, kinds, args.rounds, 64 if args.quick else args.images, args.quick)
    times["lite0_160_x2"] = times.get("lite0_160")
    order = {n: i for i, n in enumerate(ROWS)}
    rows.sort(key=lambda r: (order[r["name"]], r["seed"]))
    summary, paired = {}, {}
    for name in names:
        mine = [r for r in rows if r["name"] == name]
        s = {"seeds": [r["seed"] for r in mine], "fit_minutes_max": max(r["fit_minutes"] for r in mine)}
        for part in ("val", "test", "val_flip", "test_flip"):
            s[f"{part}_mean"], s[f"{part}_half_width"] = seed_interval([r[f"{part}_accuracy"] for r in mine])
        summary[name] = s
        base = [r for r in rows if r["name"] == REFERENCE]
        if name != REFERENCE:
            paired[name] = paired_by_seed(mine, base, parts=("val", "test", "val_flip", "test_flip"))
        paired[f"{name}+flip"] = paired_by_seed([{**r, "val_accuracy": r["val_flip_accuracy"],
                                                   "test_accuracy": r["test_flip_accuracy"]} for r in mine], base)
    table = [(r["name"], r["seed"], f"{r['val_accuracy']:.3f}", f"{r['val_flip_accuracy']:.3f}",
              f"{r['test_accuracy']:.3f}", f"{r['test_flip_accuracy']:.3f}", r["epochs"], f"{r['fit_minutes']:.1f}",
              r["device"]) for r in rows]
    header = ("row", "seed", "val acc", "val flip", "test acc", "test flip", "epochs", "fit min", "fit on")

    def pm(mean, half):
        return f"{100 * mean:.1f} ± {100 * half:.1f}" if np.isfinite(half) else f"{100 * mean:.1f}"

    def spm(d, part):
        return "-" if d is None else f"{100 * d[part + '_mean']:+.1f} ± {100 * d[part + '_half_width']:.1f}"

    n_train = len(split_subset(data, args.quick)["train"][1])
    notes = (f"stanford_cars_a ({n_train} training images), the default recipe (AdamW) with one change a row; "
             "fitted in float32 (no TF32) on the machine in 'fit on' (fit minutes are that machine's); predict "
             f"ms/image measured on this machine's CPU ({gflops:.0f} GFLOP/s float32), default engine, from files "
             f"in batches of 32, the median of {args.rounds} rounds timed side by side; 'flip' adds the mirror "
             "image's probabilities (two passes). Nothing is chosen on test.\n\n"
             "Mean over seeds (95 % Student-t) and the difference from lite0_160 paired by seed (points):\n\n")
    notes += format_table(
        [(n, len(s["seeds"]), pm(s["val_mean"], s["val_half_width"]), pm(s["test_mean"], s["test_half_width"]),
          spm(paired.get(n), "val"), spm(paired.get(n), "test"),
          pm(s["val_flip_mean"], s["val_flip_half_width"]), pm(s["test_flip_mean"], s["test_flip_half_width"]),
          spm(paired.get(f"{n}+flip"), "val"), spm(paired.get(f"{n}+flip"), "test"),
          f"{times[n]['predict_ms_per_image']:.1f}", f"{times[n]['predict_flip_ms_per_image']:.1f}")
         for n, s in summary.items()],
        ("row", "seeds", "val %", "test %", "val diff", "test diff", "val flip %", "test flip %", "flip val diff",
         "flip test diff", "predict ms/img", "with flip"))
    name = "quality_quick" if args.quick else "quality"
    write_results(name, {"rows": rows, "summary": summary, "paired": paired, "predict": times,
                         "quick": args.quick, "machine_gflops": gflops}, table, header, notes)


def torch_threads():
    import torch

    return torch.get_num_threads()


def names_of(args):
    return args.rows.split(",") if args.rows else list(ROWS)


def seeds_of(args):
    return [int(s) for s in args.seeds.split(",")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 classes at 64 / 96 px, fitted here")
    parser.add_argument("--fit", action="store_true", help="only fit, appending JSON lines to --out")
    parser.add_argument("--rows", default=None, help=f"comma-separated rows (default: all of {', '.join(ROWS)})")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=None, help="the stanford_cars_a folder (default: the shared data set)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1, help="--fit: parallel fitting processes")
    parser.add_argument("--threads", type=int, default=2, help="--fit: torch threads per process")
    parser.add_argument("--out", default="quality_rows.jsonl", help="--fit: the JSON-lines file (appended)")
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="--fit: seconds after which no further fit starts")
    parser.add_argument("--from", dest="source", default=None, help="the JSON lines of --fit to assemble")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the predict timing")
    parser.add_argument("--images", type=int, default=256, help="test files timed per round")
    args = parser.parse_args()
    unknown = set(names_of(args)) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; valid: {', '.join(ROWS)}")
    if args.fit:
        if args.data is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            args.data = str(Path(os.environ.get("SKFG_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" /
                                                "datasets")) / "stanford_cars_a")
        return fit_jobs(args)
    if not args.quick and not args.source:
        parser.error("without --quick, pass --from with the JSON lines of a --fit run")
    return assemble(args)


if __name__ == "__main__":
    main()
