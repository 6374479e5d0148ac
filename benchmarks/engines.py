"""Inference engines (issue 45), side by side in one run on this CPU.

1. The network alone: ``CNNFeatureExtractor().inference_engine(e)`` for e in eager, fused
   (BatchNorm folded) and onnxruntime, on normalised input batches of 1, 4 and 32 images
   at the extractor's default size (224 px; EfficientNet-Lite0, GAP): ms per image (median over rounds that run every
   engine in turn), each engine's speed-up over eager with its round range, and the
   fraction of this machine's measured float32 GFLOP/s (a 1024 x 1024 matrix product)
   that each reaches on the network's multiply-adds.
2. From files (decoding included): ``predict_proba`` of
   ``Pipeline([CNNFeatureExtractor(engine=e), SoftmaxClassifier()])`` (fitted on features;
   the head is the same for every engine) over test photographs at the extractor's batch
   4, against ``engine="eager"`` (the path before issue 45), and one image at a time against
   a plain onnxruntime script on the same exported model (PIL decode and resize, numpy
   normalisation, ``session.run``): the script a user would write.
3. The command line, each command a fresh process (start-up included): ``skfg --version``,
   ``skfg --help``, and ``skfg predict model.skops one.jpg`` on the same fitted Pipeline
   saved in the safe format, with its ONNX copy cached (what ``skfg fit`` leaves: served by
   onnxruntime without importing torch) and without one (the model loaded with torch).

    python benchmarks/engines.py [--quick] [--rounds 5]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.pipeline import Pipeline

from _common import DATA, TRACER, machine_gflops, multiply_adds, ratio_over_rounds, untraced, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier, save_model
from skfg.datasets import load_image_folder
from skfg.cli import keep_onnx_copy
from skfg.export import export_onnx
from skfg.serving import onnx_copy_path

ENGINES = ("eager", "fused", "onnxruntime")


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


def command_line(pipe, image, rounds):
    """Seconds per run of each command (a fresh process each time), ``rounds`` runs each,
    in turn: ``{command: [seconds]}``."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.skops"
        save_model(pipe, model)
        cached = dict(os.environ, SKFG_CACHE_DIR=str(Path(tmp) / "cache"))
        previous = os.environ.get("SKFG_CACHE_DIR")
        os.environ["SKFG_CACHE_DIR"] = cached["SKFG_CACHE_DIR"]
        try:
            keep_onnx_copy(model, pipe)  # what `skfg fit` leaves behind
            assert onnx_copy_path(model).is_file(), "no ONNX copy was cached"
        finally:
            os.environ.pop("SKFG_CACHE_DIR")
            if previous is not None:
                os.environ["SKFG_CACHE_DIR"] = previous
        runs = {
            "skfg --version": (["--version"], cached),
            "skfg --help": (["--help"], cached),
            "skfg predict model.skops one.jpg (ONNX copy cached)": (["predict", str(model), image], cached),
            "skfg predict model.skops one.jpg (no copy: torch)": (["predict", str(model), image], None),
        }
        times = {k: [] for k in runs}
        for r in range(rounds):
            for name, (argv, env) in runs.items():
                if env is None:  # a fresh, empty cache each time: the model file is loaded with torch
                    env = dict(os.environ, SKFG_CACHE_DIR=str(Path(tmp) / f"empty{r}"))
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "skfg", *argv], env=env, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t)
        return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    size = CNNFeatureExtractor().image_size  # the default, for every row (the script resizes to it too)
    peak = machine_gflops()
    ext = CNNFeatureExtractor(cache=False, image_size=size).fit()
    build_seconds = {}
    warm = CNNFeatureExtractor(cache=False, image_size=size).fit()  # each engine built once traced, untimed
    for e in ENGINES:  # building: folding BatchNorm; exporting to ONNX in memory (once per model and process)
        warm.inference_engine(e)
        with TRACER.paused():
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
    pipe = Pipeline([("cnn", CNNFeatureExtractor(cache=False, image_size=size)), ("clf", SoftmaxClassifier(random_state=0))]).fit(Xtr, ytr)
    probas = {}

    def predictor(engine, batch_size):
        """The fitted Pipeline with its extractor set to ``engine`` and ``batch_size`` (the same
        network and head; its own Pipeline, so no ``set_params`` is timed)."""
        ext = CNNFeatureExtractor(cache=False, image_size=size, engine=engine, batch_size=batch_size).fit()
        model = Pipeline([("cnn", ext), ("clf", pipe[-1])])
        model.predict_proba(files[:1])  # the engine is built outside the timed rounds

        def run(X=files):
            probas[engine, batch_size] = model.predict_proba(X)
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
        one_at_a_time = {e: predictor(e, 1) for e in (*ENGINES, "auto")}
        single = {e: (lambda run=run: [run(np.asarray([f], dtype=object)) for f in one])
                  for e, run in one_at_a_time.items()}
        single["plain onnxruntime script"] = lambda: [script(f) for f in one]
        times = time_rounds(single, rounds)
    base = "plain onnxruntime script"
    for e in (*ENGINES, "auto", base):
        ms = 1000 * float(np.median(times[e])) / len(one)
        ratio, low, high = ratio_over_rounds(times[e], times[base])  # >1: slower than the script
        rows.append({"part": "one file at a time", "batch": 1, "engine": e, "ms_per_image": ms,
                     "vs_plain_onnxruntime": ratio, "vs_low": low, "vs_high": high})
        table.append(("one file at a time", 1, e, f"{ms:.2f}", "", f"{ratio:.2f}x the script's time "
                                                                    f"[{low:.2f}-{high:.2f}]"))
    cli = command_line(pipe, files[0], rounds)
    for name, seconds in cli.items():
        rows.append({"part": "command line", "engine": name, "seconds": float(np.median(seconds)),
                     "seconds_low": float(min(seconds)), "seconds_high": float(max(seconds))})
        table.append(("command line", "", name, "", "", f"{np.median(seconds):.2f} s [{min(seconds):.2f}-"
                                                        f"{max(seconds):.2f}]"))
    default = ext.inference_engine()  # what "auto" runs
    def pick(part, engine, key, low, high, batch=None):
        """``(value, [low, high])``: a row's ``key`` and its range over the rounds."""
        r = next(r for r in rows if r["part"] == part and r["engine"] == engine and batch in (None, r.get("batch")))
        return r[key], [r[low], r[high]]

    speedup, seconds = ("speedup", "speedup_low", "speedup_high"), ("seconds", "seconds_low", "seconds_high")
    picked = {
        "fused_vs_eager_batch1": pick("network", "fused", *speedup, batch=1),
        "fused_vs_eager_batch32": pick("network", "fused", *speedup, batch=32),
        "cli_predict_one_image_s": pick("command line", "skfg predict model.skops one.jpg (ONNX copy cached)", *seconds),
        "cli_version_s": pick("command line", "skfg --version", *seconds),
        "cli_predict_no_copy_s": pick("command line", "skfg predict model.skops one.jpg (no copy: torch)", *seconds),
        "default_one_file_vs_plain_onnxruntime": pick("one file at a time", "auto", "vs_plain_onnxruntime", "vs_low",
                                                      "vs_high"),
        "default_predict_proba_vs_eager_batch4": pick("predict_proba from files", "auto", *speedup),
    }
    headline = {k: v for k, (v, _) in picked.items()}
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
        headline=headline, headline_ranges={k: r for k, (_, r) in picked.items()})


if __name__ == "__main__":
    main()
