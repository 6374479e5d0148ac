"""Early exits trained with the backbone on the fine-tuning recipe (issue 23).

``EarlyExitClassifier(extractor=CNNFeatureExtractor(layers=exits), fine_tune_epochs=E)``:
the backbone and a linear softmax head per exit train jointly with one multi-exit loss
(the recipe's optimiser, schedule and augmentation; ``--exit-weights``,
``--distillation``), then the paper's per-layer LinearSVC + Benjamini-Hochberg rule is
fitted on the trained network's features. Per seed:

1. Every exit's LinearSVC alone, on val and test (``staged_predict``).
2. Every (scheme, alpha): val and test accuracy, exit counts, and end-to-end ms/image
   (decode + CNN + SVMs) against **the same model's last exit alone** (the same trained
   network and last-layer SVM behind a single-exit extractor, the SVM applied as the exits
   apply theirs, without sklearn's input validation, on the same engine: the
   fused network, BatchNorm folded, which the exits' stage-by-stage path runs), at batch 1 (image by
   image, alternating, best of ``--repeats`` rounds) and in batches of 8 and 32 (whole
   sets, alternating), each speed-up with its range over the rounds alone.
   The operating point is chosen on **val**: the largest batch-1 speed-up whose val
   accuracy is at most 1 point below the last exit's; its test row is the result.
3. The decode share: ms/image of decoding + resizing alone against the last exit's; and
   the cost structure: ms/image of the fused network from exit to exit at batch 1, 8 and 32 (random input), so the
   share of the time spent before each exit, which bounds the speed-up it can give; and
   a loose bound on any exit rule at no accuracy loss (``oracle_bounds``).
4. The last exit against the single-exit fine-tuned model: ``recipe_default`` of
   ``results/recipe.json`` (the same recipe and seed, last exit only; 160 px only).

    python benchmarks/early_exit_joint.py --quick            # 12 classes, 64 px, 2 epochs
    python benchmarks/early_exit_joint.py                    # 160 px, seed 0 (~15 min)
    python benchmarks/early_exit_joint.py --seeds 1,2 --merge
    python benchmarks/early_exit_joint.py --image-size 224   # -> early_exit_joint_224px.*
    python benchmarks/early_exit_joint.py --render           # the table again from the results file
    python benchmarks/early_exit_joint.py --distillation 0.5 --name early_exit_joint_distill
"""

import argparse
import json
import time

import numpy as np
import torch

from _common import (DATA, RESULTS, alternating_ms, mergeable_rows, seed_interval, speedup_spread, untraced,
                     write_results)
from skfg import CNNFeatureExtractor, EarlyExitClassifier
from skfg.datasets import load_image_folder
from skfg.images import ImageSource, eval_transform, iter_inputs
from skfg.plotting import with_alpha

ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
BATCHES = (8, 32)  # whole-set prediction in batches of 8 (fits the cache) and of 32


def stage_ms(runner, size, batch_sizes, repeats):
    """``{batch size: {exit: ms/image}}``: median time of each segment of ``runner`` (the
    fused engine's stage runner, as the exits run the stages) on a random batch (the cost
    structure that bounds what an exit can save)."""
    out = {}
    with torch.inference_mode():
        for bs in batch_sizes:
            x = torch.randn(bs, 3, size, size).contiguous(memory_format=torch.channels_last)
            times = {}
            h = x
            for name in runner.stages:  # traced once, untimed (builds the graphs); the timed passes run untraced
                h = runner.stage(name, h)
            for _ in untraced(range(max(repeats, 20 if bs == 1 else 5))):
                h = x
                for name in runner.stages:
                    t = time.perf_counter()
                    h = runner.stage(name, h)
                    times.setdefault(name, []).append(time.perf_counter() - t)
            out[bs] = {name: 1000 * float(np.median(v)) / bs for name, v in times.items()}
    return out


def share_before_exit(stage_costs, exits):
    """Per batch size and exit: the share of the network's time spent up to that exit
    (``1 / share`` is the speed-up if every image left there, the most an exit can give)."""
    out = {}
    for bs, costs in stage_costs.items():
        names, total = list(costs), sum(costs.values())
        out[bs] = {e: sum(costs[n] for n in names[: names.index(e) + 1]) / total for e in exits}
    return out


def single_exit(clf, size):
    """The fitted model's last exit alone: its trained network behind a one-layer
    extractor, and its last-layer classifier."""
    last = clf.exit_names_[-1]
    # the engine the exits' stage-by-stage path runs (BatchNorm folded): the same engine's last exit
    ext = CNNFeatureExtractor(layers=[last], image_size=size, batch_size=1, cache=False, engine="fused").fit()
    ext.set_network(clf.extractor_.network_)
    svm = clf.estimators_[-1]
    coef, intercept = svm.coef_.T, svm.intercept_

    def predict(X):
        # the SVM as the cascade's exits apply it (X @ coef + b, no input validation; sklearn's
        # normalize + predict cost ~0.5 ms a call at batch 1, which would flatter the exits)
        f = np.asarray(ext.transform(X), dtype=np.float64)
        f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        s = f @ coef + intercept
        return clf.classes_[svm.classes_[(s[:, 0] > 0).astype(int) if s.shape[1] == 1 else s.argmax(1)]]

    return ext, predict


def timed(row, prefix, bs, times):
    """Record :func:`_common.alternating_ms`'s per-round times of (last exit alone, early
    exits) in ``row``: the ms/image of each (best per image) and the speed-up's range over
    the rounds alone (:func:`_common.speedup_spread`)."""
    base, mine = times.min(0).mean(1)
    _, low, high = speedup_spread(times)
    row.update({f"{prefix}ms_batch{bs}": float(mine), f"{prefix}last_ms_batch{bs}": float(base),
                f"{prefix}speedup_batch{bs}_low": low, f"{prefix}speedup_batch{bs}_high": high})


def decode_ms(X, size, repeats):
    """ms/image of decoding and resizing alone (the extractor's eval transform), best of
    ``repeats`` untraced passes after a traced one over two images."""
    tf, best = eval_transform(size, "squash"), np.inf
    for _ in iter_inputs(ImageSource(X[:2]), tf, 1, [0.5] * 3, [0.5] * 3, "cpu"):
        pass
    for _ in untraced(range(repeats)):
        t = time.perf_counter()
        for _ in iter_inputs(ImageSource(X), tf, 1, [0.5] * 3, [0.5] * 3, "cpu"):
            pass
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(X)


def run_seed(args, seed, size, splits):
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits
    exits = args.exits.split(",")
    ext = CNNFeatureExtractor(layers=exits, image_size=size, batch_size=1, cache=False)
    weights = None if args.exit_weights is None else [float(v) for v in args.exit_weights.split(",")]
    clf = EarlyExitClassifier(extractor=ext, alpha=0.1, fine_tune_epochs=args.epochs or 22, exit_weights=weights,
                              distillation=args.distillation, random_state=seed)
    t = time.perf_counter()
    clf.fit(Xtr, ytr)
    fit_min = (time.perf_counter() - t) / 60
    stage = {part: [float(np.mean(p == y)) for p in clf.staged_predict(X)]
             for part, X, y in (("val", Xva, yva), ("test", Xte, yte))}
    print("exits", exits, stage, flush=True)
    base_ext, baseline = single_exit(clf, size)
    n_t = min(args.n_timing, len(Xva), len(Xte))
    tX = {"val": Xva[:n_t], "test": Xte[:n_t]}
    baseline(tX["val"][:2])  # warm-up
    base_acc = {"val": stage["val"][-1], "test": stage["test"][-1]}
    configs = []
    for scheme in ("fixed", "bh"):
        for alpha in ALPHAS:
            model = with_alpha(clf, alpha, scheme)
            row = {"thresholds": scheme, "alpha": alpha}
            for part, X, y in (("val", Xva, yva), ("test", Xte, yte)):
                pred, ex = model.predict(X, return_exit=True)
                row[f"{part}_accuracy"] = float(np.mean(pred == y))
                row[f"{part}_exit_counts"] = np.bincount(ex, minlength=len(exits)).tolist()
                times = alternating_ms([baseline, model.predict], tX[part], args.repeats, per_round=True)
                timed(row, f"{part}_", 1, times)
                if part == "test":
                    for bs in BATCHES:
                        for e in (clf.extractor_, base_ext):
                            e.set_params(batch_size=bs)
                        times = alternating_ms([baseline, model.predict], tX[part], args.repeats, per_round=True,
                                               batch=len(tX[part]))  # the whole set in one call
                        timed(row, "test_", bs, times)
                    for e in (clf.extractor_, base_ext):
                        e.set_params(batch_size=1)
            print(row, flush=True)
            configs.append(row)
    ok = [c for c in configs if c["val_accuracy"] >= base_acc["val"] - 0.01 - 1e-9]
    chosen = max(ok, key=lambda c: c["val_last_ms_batch1"] / c["val_ms_batch1"]) if ok else None
    dec = decode_ms(tX["test"], size, args.repeats)
    costs = stage_ms(clf.extractor_.inference_engine("fused").stage_runner(), size, (1,) + BATCHES, args.repeats)
    return {"seed": seed, "image_size": size, "exits": exits, "exit_weights": weights,
            "distillation": args.distillation, "epochs": args.epochs or 22, "fit_minutes": fit_min,
            "exit_accuracy": stage, "last_exit_accuracy": base_acc, "configs": configs,
            "chosen": None if chosen is None else {"thresholds": chosen["thresholds"], "alpha": chosen["alpha"]},
            "decode_ms": dec, "n_timing": n_t, "stage_ms": {str(b): c for b, c in costs.items()},
            "share_before_exit": {str(b): v for b, v in share_before_exit(costs, exits).items()}}


def oracle_bounds(run):
    """Per batch size, the end-to-end speed-up an exit rule could reach at no loss of
    accuracy, loosely bounded: every image the stage4-like first exit classifies correctly
    leaves there, and of the rest as many as the second exit classifies correctly leave
    at the second (as if its correct images were all among the first's mistakes); the
    savings are the measured shares of the network's time after each exit, scaled by the
    network's share of the end-to-end time of the last exit alone (decode and SVMs stay)."""
    exits, acc = run["exits"], run["exit_accuracy"]["test"]
    out = {}
    for bs, shares in run.get("share_before_exit", {}).items():
        end_to_end = float(np.mean([c[f"test_last_ms_batch{bs}"] for c in run["configs"]]))
        network = sum(run["stage_ms"][bs].values())
        left, saved = 1.0, 0.0
        for m, e in enumerate(exits[:-1]):
            here = min(acc[m], left)  # the loosest case: exit m is right where the earlier ones were wrong
            saved += (1 - shares[e]) * here
            left -= here
        out[bs] = 1 / (1 - saved * min(network / end_to_end, 1.0))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--exits", default="stage4,stage5,head")
    ap.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs (0: the recipe's 22)")
    ap.add_argument("--exit-weights", default=None, help="comma-separated, one per exit (default: all 1)")
    ap.add_argument("--distillation", type=float, default=0.0)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-timing", type=int, default=200)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--render", action="store_true", help="no fits: rewrite the table from the results file")
    ap.add_argument("--name", default=None, help="results name (default: early_exit_joint[_<size>px][_quick])")
    args = ap.parse_args()
    root = DATA / "stanford_cars_a"
    splits = [load_image_folder(root / s) for s in ("train", "val", "test")]
    size = args.image_size
    if args.quick:
        keep = sorted(set(splits[0][1]))[:12]
        splits = [(X[np.isin(y, keep)], y[np.isin(y, keep)]) for X, y in splits]
        size, args.epochs, args.n_timing, args.repeats = 64, 2, 40, 2
    name = args.name or ("early_exit_joint" + ("" if size == 160 or args.quick else f"_{size}px")
                         + ("_quick" if args.quick else ""))
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        runs = [r for r in mergeable_rows(name) if r["seed"] not in seeds] if args.merge else []
        if args.render:
            return write(name, mergeable_rows(name), args, splits)
    except ValueError as err:
        ap.error(str(err))
    for seed in seeds:
        runs.append(run_seed(args, seed, size, splits))
        write(name, runs, args, splits)


def speedup_text(config, bs):
    """The test speed-up at batch ``bs``, with its range over the timing rounds when recorded."""
    text = f"{config[f'test_last_ms_batch{bs}'] / config[f'test_ms_batch{bs}']:.2f}x"
    if f"test_speedup_batch{bs}_low" in config:
        text += f" [{config[f'test_speedup_batch{bs}_low']:.2f}-{config[f'test_speedup_batch{bs}_high']:.2f}]"
    return text


def write(name, runs, args, splits):
    runs.sort(key=lambda r: r["seed"])
    single = {}
    if runs[0]["image_size"] == 160 and not args.quick:
        single = {r["seed"]: r for r in json.loads((RESULTS / "recipe.json").read_text())["rows"]
                  if r["name"] == "recipe_default"}
    rows = []
    for r in runs:
        exits = r["exits"]
        for m, e in enumerate(exits):
            rows.append((r["seed"], f"{e} LinearSVC alone", "", f"{100 * r['exit_accuracy']['val'][m]:.1f}",
                         f"{100 * r['exit_accuracy']['test'][m]:.1f}", "", "", "", *[""] * (2 * len(BATCHES))))
        for c in r["configs"]:
            chosen = r["chosen"] == {"thresholds": c["thresholds"], "alpha": c["alpha"]}
            rows.append((r["seed"], f"{'BH' if c['thresholds'] == 'bh' else 'fixed'}, alpha={c['alpha']}"
                         + (" (chosen on val)" if chosen else ""), "/".join(map(str, c["test_exit_counts"])),
                         f"{100 * c['val_accuracy']:.1f}", f"{100 * c['test_accuracy']:.1f}",
                         f"{100 * (c['test_accuracy'] - r['last_exit_accuracy']['test']):+.1f}",
                         f"{c['test_ms_batch1']:.2f}", speedup_text(c, 1),
                         *[v for bs in BATCHES for v in (f"{c[f'test_ms_batch{bs}']:.2f}", speedup_text(c, bs))]))
    header = ("seed", "exit / thresholds", "test exits", "val acc %", "test acc %", "vs last exit",
              "ms/img b1", "speed-up b1", *[h for bs in BATCHES for h in (f"ms/img b{bs}", f"speed-up b{bs}")])
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits
    r0 = runs[0]
    notes = (f"stanford_cars_a ({len(ytr)} train / {len(yva)} val / {len(yte)} test images), EfficientNet-Lite0, "
             f"{r0['image_size']} px, 2 CPU cores. Exits {'/'.join(r0['exits'])} trained with the backbone for "
             f"{r0['epochs']} epochs (the fine-tuning recipe; exit weights {r0['exit_weights'] or 'all 1'}, "
             f"distillation {r0['distillation']:g}), then a LinearSVC per exit and the thresholds (training "
             f"algorithm of the paper). ms/image: decode + CNN + SVMs over the first {r0['n_timing']} images; "
             "both on the fused engine (BatchNorm folded); batch 1: image by image, alternating with the last "
             "exit alone, best of "
             f"{args.repeats} rounds per image; batches of 8 and 32: the whole set, alternating, best of {args.repeats} "
             "(extractor batch_size 8 or 32; skfg's default is 4). The speed-ups are "
             "against the same model's last exit alone (same network and SVM, one exit); [lowest-highest] is the "
             "speed-up within each round alone (one that holds 1.00 is none). "
             "The operating point is chosen on val (largest batch-1 speed-up at <= 1 point below the last "
             "exit on val).")
    summary = []
    for r in runs:
        last = r["configs"][0]  # any config: the same last-exit timing set
        share = r["decode_ms"] / last["test_last_ms_batch1"]
        line = (f"seed {r['seed']}: fit {r['fit_minutes']:.1f} min; last exit {100 * r['last_exit_accuracy']['test']:.1f} "
                f"% test; decode + resize {r['decode_ms']:.2f} ms/img = {100 * share:.0f} % of the last exit's "
                f"{last['test_last_ms_batch1']:.2f} ms")
        if r["seed"] in single:
            s = single[r["seed"]]
            line += (f"; single-exit fine-tuned model (recipe.json recipe_default, seed {r['seed']}) "
                     f"{100 * s['test_accuracy']:.1f} % test: last exit "
                     f"{100 * (r['last_exit_accuracy']['test'] - s['test_accuracy']):+.1f} points")
        c = next((c for c in r["configs"] if r["chosen"] == {"thresholds": c["thresholds"], "alpha": c["alpha"]}),
                 None)
        if c is not None:
            b1 = c["test_last_ms_batch1"] / c["test_ms_batch1"]
            b32 = c["test_last_ms_batch32"] / c["test_ms_batch32"]
            b8 = c["test_last_ms_batch8"] / c["test_ms_batch8"]
            drop = 100 * (r["last_exit_accuracy"]["test"] - c["test_accuracy"])
            met = b1 >= 1.3 and b32 >= 1.3 and drop <= 1.0 + 1e-9
            line += (f"; chosen on val: {c['thresholds']} alpha={c['alpha']}: test {b1:.2f}x (batch 1), "
                     f"{b8:.2f}x (batches of 8), {b32:.2f}x (batches of 32), {drop:.1f} points below the last "
                     f"exit -> target (>= 1.3x at batch 1 and 32, <= 1 point) {'met' if met else 'not met'}")
        if "share_before_exit" in r:
            bounds = "; ".join(
                f"batch {bs}: " + ", ".join(f"{e} {100 * v:.0f} % (<= {1 / v:.2f}x)" for e, v in shares.items())
                for bs, shares in r["share_before_exit"].items() if shares)
            line += (f". Share of the network's time up to each exit, and the speed-up if every image left "
                     f"there: {bounds}")
            r["oracle_speedup_bound"] = oracle_bounds(r)
            line += (". Loose bound of any exit rule at no accuracy loss (each exit takes every image it "
                     "classifies correctly, end to end): " + ", ".join(
                         f"batch {bs} <= {v:.2f}x" for bs, v in r["oracle_speedup_bound"].items()))
        summary.append(line + ".")
    if len(runs) > 1:
        d = [r["last_exit_accuracy"]["test"] - single[r["seed"]]["test_accuracy"] for r in runs if r["seed"] in single]
        if len(d) > 1:
            m, h = seed_interval(d)
            summary.append(f"last exit minus single-exit model over seeds: {100 * m:+.1f} ± {100 * h:.1f} points "
                           "(95 % Student-t).")
    notes += "\n\n" + "\n".join(f"- {s}" for s in summary)
    write_results(name, {"rows": runs, "quick": args.quick}, rows, header, notes)


if __name__ == "__main__":
    main()
