"""Inference engines (issue 45), side by side in one run on this CPU.

1. The network alone: ``CNNFeatureExtractor().inference_engine(e)`` for e in eager, fused
   (BatchNorm folded) and onnxruntime, on normalised input batches of 1, 4 and 32 images
   at 160 px (EfficientNet-Lite0, GAP): ms per image (median over rounds that run every
   engine in turn), each engine's speed-up over eager with its round range, and the
   fraction of this machine's measured float32 GFLOP/s (a 1024 x 1024 matrix product)
   that each reaches on the network's multiply-adds.
2. From files (decoding included): ``predict_proba`` of
   ``Pipeline([CNNFeatureExtractor(engine=e), SoftmaxClassifier()])`` (fitted on features;
   the head is the same for every engine) over test photographs at the extractor's batch
   4, against ``engine="eager"`` (the path before issue 45), and one image at a time against
   a plain onnxruntime script on the same exported model (PIL decode and resize, numpy
   normalisation, ``session.run``): the script a user would write.

    python benchmarks/engines.py [--quick] [--rounds 5]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.pipeline import Pipeline

from _common import DATA, machine_gflops, ratio_over_rounds, untraced, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.export import export_onnx

ENGINES = ("eager", "fused", "onnxruntime")


def multiply_adds(module, x):
    """Multiply-adds of one forward pass of ``module`` on ``x`` (convolutions and linear layers)."""
    total = []

    def hook(m, inputs, out):
        if isinstance(m, torch.nn.Conv2d):
            total.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, torch.nn.Linear):
            total.append(out.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    with torch.inference_mode():
        module(x)
    for h in handles:
        h.remove()
    return sum(total)


def time_rounds(fns, rounds):
    """``{name: [seconds per round]}``: every function once a round, in turn (after one
    traced warm-up call each)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in untraced(range(rounds)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def plain_onnxruntime(path, size):
    """The onnxruntime script a user writes for an exported skfg model: one image per call."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def predict(file):
        img = Image.open(file).convert("RGB").resize((size, size), Image.BILINEAR)
        x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)[None]
        return session.run(["probabilities"], {"images": x})[0]

    return predict


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    size = 160
    peak = machine_gflops()
    ext = CNNFeatureExtractor(cache=False).fit()
    build_seconds = {}
    for e in ENGINES:  # building: folding BatchNorm; exporting to ONNX in memory (once per model and process)
        t = time.perf_counter()
        ext.inference_engine(e)
        build_seconds[e] = time.perf_counter() - t
    runs = {e: ext.inference_engine(e) for e in ENGINES}
    macs = multiply_adds(ext.pooled_trunk_, torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last))
    rows, table = [], []
    g = torch.Generator().manual_seed(0)
    for batch in (1, 4, 32):
        n = 32 if not args.quick else 8
        xs = [torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
              for _ in range(max(1, n // batch))]
        times = time_rounds({e: (lambda run=run: [run(x) for x in xs]) for e, run in runs.items()}, rounds)
        images = batch * len(xs)
        for e in ENGINES:
            ms = 1000 * float(np.median(times[e])) / images
            speed, low, high = ratio_over_rounds(times["eager"], times[e])
            fraction = 2 * macs / (ms / 1000) / 1e9 / peak
            rows.append({"part": "network", "batch": batch, "engine": e, "ms_per_image": ms, "speedup": speed,
                         "speedup_low": low, "speedup_high": high, "peak_fraction": fraction})
            table.append(("network", batch, e, f"{ms:.2f}", f"{speed:.2f}x [{low:.2f}-{high:.2f}]",
                          f"{100 * fraction:.1f} %"))
    # from files: predict_proba through the Pipeline, each engine; batch 4 (the default) and 1
    root = DATA / "stanford_cars_a"
    Xtr, ytr = load_image_folder(root / "train")
    Xte, _ = load_image_folder(root / "test")
    Xtr, ytr = Xtr[::8], ytr[::8]
    files = Xte[: 32 if args.quick else 128]
    pipe = Pipeline([("cnn", CNNFeatureExtractor(cache=False)), ("clf", SoftmaxClassifier(random_state=0))]).fit(Xtr, ytr)
    probas = {}

    def predictor(engine, batch_size):
        def run(X=files):
            pipe.set_params(cnn__engine=engine, cnn__batch_size=batch_size)
            probas[engine, batch_size] = pipe.predict_proba(X)
        return run

    file_engines = (*ENGINES, "auto")  # auto: the default
    times = time_rounds({e: predictor(e, 4) for e in file_engines}, rounds)
    for e in file_engines:
        ms = 1000 * float(np.median(times[e])) / len(files)
        speed, low, high = ratio_over_rounds(times["eager"], times[e])
        diff = float(np.abs(probas[e, 4] - probas["eager", 4]).max())
        rows.append({"part": "predict_proba from files", "batch": 4, "engine": e, "ms_per_image": ms,
                     "speedup": speed, "speedup_low": low, "speedup_high": high, "max_abs_diff": diff})
        table.append(("predict_proba from files", 4, e, f"{ms:.2f}", f"{speed:.2f}x [{low:.2f}-{high:.2f}]",
                      f"max diff {diff:.1e}"))
    one = files[: 16 if args.quick else 48]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(pipe, Path(tmp) / "model.onnx")
        script = plain_onnxruntime(path, size)
        single = {e: (lambda e=e: [predictor(e, 1)(np.asarray([f], dtype=object)) for f in one]) for e in ENGINES}
        single["plain onnxruntime script"] = lambda: [script(f) for f in one]
        times = time_rounds(single, rounds)
    base = "plain onnxruntime script"
    for e in (*ENGINES, base):
        ms = 1000 * float(np.median(times[e])) / len(one)
        ratio, low, high = ratio_over_rounds(times[e], times[base])  # >1: slower than the script
        rows.append({"part": "one file at a time", "batch": 1, "engine": e, "ms_per_image": ms,
                     "vs_plain_onnxruntime": ratio, "vs_low": low, "vs_high": high})
        table.append(("one file at a time", 1, e, f"{ms:.2f}", "", f"{ratio:.2f}x the script's time "
                                                                    f"[{low:.2f}-{high:.2f}]"))
    default = ext.inference_engine()  # what "auto" runs
    headline = {
        "fused_vs_eager_batch1": next(r["speedup"] for r in rows if r["part"] == "network" and r["batch"] == 1
                                      and r["engine"] == "fused"),
        "fused_vs_eager_batch32": next(r["speedup"] for r in rows if r["part"] == "network" and r["batch"] == 32
                                       and r["engine"] == "fused"),
        "default_predict_proba_vs_eager_batch4": next(
            r["speedup"] for r in rows if r["part"] == "predict_proba from files" and r["engine"] == "auto"),
    }
    write_results(
        "engines" + ("_quick" if args.quick else ""),
        {"rows": rows, "machine_gflops": peak, "multiply_adds": macs, "default_engine": default.name,
         "build_seconds": build_seconds}, table,
        ("part", "batch", "engine", "ms / image", "speed-up over eager [round range]", "note"),
        f"EfficientNet-Lite0, GAP, {size} px, 2 CPU cores (torch {torch.get_num_threads()} threads); {macs / 1e6:.0f} M "
        f"multiply-adds per image; this machine's float32 matrix product measured {peak:.0f} GFLOP/s (the "
        f"'peak' fraction: 2 x multiply-adds / time / that); median over {rounds} rounds that run every engine in "
        "turn, each ratio's range over the rounds. From files: stanford_cars_a test photographs, decoding included, "
        f"the feature cache off; the default engine ('auto') is {default.name!r}. Building an engine took "
        + ", ".join(f"{e} {build_seconds[e]:.2f} s" for e in ENGINES) + " (once per fitted model and process).",
        headline=headline)


if __name__ == "__main__":
    main()
