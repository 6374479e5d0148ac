"""An int8 network for onnxruntime (issue 45's stretch): ``export_onnx(..., quantize="int8")``.

The graph is quantized by onnxruntime's static quantization (QDQ, int8 weights per
channel, uint8 activations, MinMax ranges; the nodes that write the graph's outputs stay
float32), calibrated on ``--calibration`` training images of ``stanford_cars_a`` (never
val or test). Two models (``--model``):

- ``features``: the default extractor (EfficientNet-Lite0, ImageNet weights, GAP + L2,
  160 px); the same ``SoftmaxClassifier`` (default settings, seeds 0, 1, 2) fitted on each
  graph's train features; test accuracy of each and the paired difference over the
  seeds with its 95 % bootstrap interval (``skfg.metrics.paired_bootstrap``).
- ``fine-tuned``: ``SoftmaxClassifier(extractor=CNNFeatureExtractor())`` fine-tuned with
  the default recipe (``--seeds``), exported whole (uint8 images -> probabilities) in
  float32 and int8; val and test accuracy of each graph and the paired difference on
  test (bootstrap over the test images, seeds averaged per image). Results in
  ``int8_fine_tuned.*``.

Speed, side by side in one run: the float32 and the int8 graph on the same decoded
batches of 1, 4 and 32 images, ms per image (median over rounds that run both in turn)
and the speed-up with its range over the rounds. The issue's bar: int8 >= 2x the float32
graph at <= 0.5 points of accuracy lost.

    python benchmarks/int8.py [--quick] [--model features|fine-tuned] [--calibration 256] [--rounds 5]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DATA, ratio_over_rounds, timed, untraced, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.export import export_onnx
from skfg.metrics import paired_bootstrap
from skfg.serving import onnx_input


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as skfg's engine
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def features(sess, images, batch=32):
    return np.concatenate([sess.run(None, {"images": images[i : i + batch]})[0] for i in range(0, len(images), batch)])


def speed_rows(graphs, test, rounds, quick):
    """Rows and table lines: each graph on the same decoded test batches of 1, 4 and 32."""
    rows, table = [], []
    for batch in (1, 4, 32):
        xs = [test[i : i + batch] for i in range(0, min(len(test), 16 if quick else 64), batch)]
        for sess in graphs.values():
            sess.run(None, {"images": xs[0]})
        times = {k: [] for k in graphs}
        for _ in untraced(range(rounds)):
            for k, sess in graphs.items():
                t = time.perf_counter()
                for x in xs:
                    sess.run(None, {"images": x})
                times[k].append(time.perf_counter() - t)
        n = sum(len(x) for x in xs)
        for k in graphs:
            ms = 1000 * float(np.median(times[k])) / n
            speed, low, high = ratio_over_rounds(times["float32"], times[k])
            rows.append({"part": "speed", "batch": batch, "graph": k, "ms_per_image": ms, "speedup": speed,
                         "speedup_low": low, "speedup_high": high})
            table.append(("speed", batch, k, f"{ms:.2f}", f"{speed:.2f}x [{low:.2f}-{high:.2f}]", ""))
    return rows, table


def export_both(model, calib_paths, tmp):
    """``(graphs, file MB, quantize seconds)``: float32 and int8 sessions of ``model``."""
    fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
    int8, quantize_s = timed(
        lambda: export_onnx(model, Path(tmp) / "int8.onnx", quantize="int8", calibration=calib_paths),
        warmup=lambda: export_onnx(model, Path(tmp) / "warm.onnx", quantize="int8", calibration=calib_paths[:4]))
    graphs = {"float32": session(fp32), "int8": session(int8)}
    sizes_mb = {"float32": Path(fp32).stat().st_size / 2**20, "int8": Path(int8).stat().st_size / 2**20}
    return graphs, sizes_mb, quantize_s


def difference_row(correct):
    diff = paired_bootstrap(np.asarray(correct["int8"], dtype=float), np.asarray(correct["float32"], dtype=float))
    row = {"part": "difference", "graph": "int8 - float32", "difference": diff["difference"], "low": diff["low"],
           "high": diff["high"], "significant": diff["significant"], "statement": diff["statement"]}
    line = ("accuracy", "", "int8 - float32", "", "",
            f"{100 * diff['difference']:+.1f} pts [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]")
    return row, line


def headline(rows, diff_row):
    """``(headline values, their ranges within the run)``: the int8 speed-ups (range over the
    rounds) and the accuracy difference (its paired bootstrap interval)."""
    row = {b: next(r for r in rows if r.get("batch") == b and r["graph"] == "int8") for b in (1, 4, 32)}
    values = {f"int8_speedup_batch{b}": r["speedup"] for b, r in row.items()}
    ranges = {f"int8_speedup_batch{b}": [r["speedup_low"], r["speedup_high"]] for b, r in row.items()}
    values["int8_minus_float32_points"] = 100 * diff_row["difference"]
    ranges["int8_minus_float32_points"] = [100 * diff_row["low"], 100 * diff_row["high"]]
    return values, ranges


HEADER = ("part", "batch", "graph", "ms / image", "speed-up over float32 [round range]", "note")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="features", choices=["features", "fine-tuned"])
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--seeds", default="0", help="--model fine-tuned: comma-separated seeds")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = 160
    root = DATA / "stanford_cars_a"
    splits = {s: load_image_folder(root / s) for s in ("train", "val", "test")}
    if args.quick:
        splits = {s: (X[::8], y[::8]) for s, (X, y) in splits.items()}
        args.calibration, args.rounds = 32, 2
    rng = np.random.RandomState(0)
    calib = splits["train"][0][rng.choice(len(splits["train"][0]), args.calibration, replace=False)]
    test_images = onnx_input(splits["test"][0], size)
    if args.model == "fine-tuned":
        return fine_tuned(args, splits, calib, test_images, size)
    decoded = {s: onnx_input(X, size) for s, (X, _) in splits.items()}
    with tempfile.TemporaryDirectory() as tmp:
        graphs, sizes_mb, quantize_s = export_both(CNNFeatureExtractor(image_size=size, cache=False).fit(), calib, tmp)
    rows, table = speed_rows(graphs, test_images, args.rounds, args.quick)
    feats = {k: {s: features(sess, decoded[s]) for s in decoded} for k, sess in graphs.items()}
    drift = float(np.abs(feats["int8"]["test"] - feats["float32"]["test"]).max())
    correct = {k: [] for k in graphs}
    for seed in (0, 1, 2):
        for k in graphs:
            clf = SoftmaxClassifier(random_state=seed).fit(feats[k]["train"], splits["train"][1])
            correct[k].append(clf.predict(feats[k]["test"]) == splits["test"][1])
            val = float(np.mean(clf.predict(feats[k]["val"]) == splits["val"][1]))
            rows.append({"part": "accuracy", "graph": k, "seed": seed, "val_accuracy": val,
                         "test_accuracy": float(np.mean(correct[k][-1]))})
    for k in graphs:
        acc = [r["test_accuracy"] for r in rows if r.get("graph") == k and r["part"] == "accuracy"]
        seeds = ", ".join(f"{100 * a:.1f}" for a in acc)
        table.append(("accuracy", "", k, "", "", f"test {100 * np.mean(acc):.1f} % (seeds {seeds})"))
    diff, line = difference_row(correct)
    rows.append(diff)
    table.append(line)
    write_results(
        "int8" + ("_quick" if args.quick else ""),
        {"rows": rows, "calibration_images": args.calibration, "method": "MinMax", "quantize_seconds": quantize_s,
         "file_mb": sizes_mb, "max_feature_difference": drift}, table, HEADER,
        f"EfficientNet-Lite0 extractor (GAP + L2, {size} px) exported by skfg.export.export_onnx in float32 and with "
        f"quantize='int8' (QDQ, int8 per-channel weights, uint8 activations, MinMax calibration on "
        f"{args.calibration} training images, {quantize_s:.0f} s; files {sizes_mb['float32']:.1f} "
        f"and {sizes_mb['int8']:.1f} MB); 2 CPU cores, decoded stanford_cars_a test images, median over "
        f"{args.rounds} rounds that run both in turn. Accuracy: SoftmaxClassifier (defaults) on each graph's "
        f"features, seeds 0-2, paired bootstrap over the test images (seeds averaged per image); largest feature "
        f"difference {drift:.3f} (features are L2-normalised). Bar: int8 >= 2x at <= 0.5 points lost.",
        headline=headline(rows, diff)[0], headline_ranges=headline(rows, diff)[1])


def fine_tuned(args, splits, calib, test_images, size):
    """The default fine-tuned classifier, whole, in float32 and int8 (see the module docstring)."""
    from skfg.serving import OnnxModel

    seeds = [int(s) for s in args.seeds.split(",")]
    rows, table, correct, fit_minutes = [], [], {"float32": [], "int8": []}, []
    for n, seed in enumerate(seeds):
        extra = {"max_epochs": 2, "head_epochs": 1} if args.quick else {}
        ext = CNNFeatureExtractor(image_size=size, cache=False)
        t = time.perf_counter()
        clf = SoftmaxClassifier(extractor=ext, random_state=seed, **extra).fit(*splits["train"])
        fit_minutes.append((time.perf_counter() - t) / 60)
        with tempfile.TemporaryDirectory() as tmp:
            graphs, sizes_mb, quantize_s = export_both(clf, calib, tmp)
            models = {k: OnnxModel(Path(tmp) / f"{'fp32' if k == 'float32' else 'int8'}.onnx") for k in graphs}
            for k, model in models.items():
                pred = {s: model.predict(splits[s][0]) for s in ("val", "test")}
                correct[k].append(pred["test"] == splits["test"][1])
                rows.append({"part": "accuracy", "graph": k, "seed": seed,
                             "val_accuracy": float(np.mean(pred["val"] == splits["val"][1])),
                             "test_accuracy": float(np.mean(correct[k][-1]))})
            if n == 0:  # speed: the graphs of the first seed
                speed, speed_table = speed_rows(graphs, test_images, args.rounds, args.quick)
    for k in correct:
        acc = [r for r in rows if r.get("graph") == k and r["part"] == "accuracy"]
        val = ", ".join(f"{100 * r['val_accuracy']:.1f}" for r in acc)
        test = ", ".join(f"{100 * r['test_accuracy']:.1f}" for r in acc)
        table.append(("accuracy", "", k, "", "", f"val {val} %, test {test} % (seeds {args.seeds})"))
    diff, line = difference_row(correct)
    rows = speed + rows + [diff]
    table = speed_table + table + [line]
    write_results(
        "int8_fine_tuned" + ("_quick" if args.quick else ""),
        {"rows": rows, "calibration_images": args.calibration, "method": "MinMax", "quantize_seconds": quantize_s,
         "file_mb": sizes_mb, "fit_minutes": fit_minutes, "seeds": seeds}, table, HEADER,
        f"SoftmaxClassifier(extractor=CNNFeatureExtractor()) fine-tuned with the default recipe on stanford_cars_a "
        f"(seeds {args.seeds}{', quick: 2 epochs' if args.quick else ''}), exported whole (uint8 images -> "
        f"probabilities) by skfg.export.export_onnx in float32 and with quantize='int8' (MinMax calibration on "
        f"{args.calibration} training images, {quantize_s:.0f} s; files {sizes_mb['float32']:.1f} and "
        f"{sizes_mb['int8']:.1f} MB); accuracy from skfg.serving.OnnxModel on the val and test files; difference "
        f"paired over the test images (bootstrap, seeds averaged per image). Speed: the first seed's graphs on "
        f"decoded test batches, 2 CPU cores, median over {args.rounds} rounds that run both in turn. Bar: int8 >= 2x "
        f"at <= 0.5 points lost.",
        headline=headline(rows, diff)[0], headline_ranges=headline(rows, diff)[1])


if __name__ == "__main__":
    main()
