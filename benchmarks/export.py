"""ONNX export (issue 24): predict latency of the exported graph under onnxruntime against
the same model in torch eager, side by side in one run, at batch 1 and batch 32.

The model: ``Pipeline([CNNFeatureExtractor(), SoftmaxClassifier()])`` fitted on features
of stanford_cars_a (EfficientNet-Lite0 at the extractor's default size; the latency does not
depend on how well it is trained), exported with :func:`skfg.export.export_onnx`. Two
measurements:

- network: the graph alone on decoded uint8 images in memory (torch: the exported module
  in eager mode; onnxruntime: the session), in turn by blocks (:func:`block_ms`), best of
  ``--repeats`` rounds, with the speed-up's range over the rounds alone;
- end to end: ``predict_proba`` from image files (decoding included): the skfg Pipeline
  vs :class:`skfg.export.OnnxModel`.

    python benchmarks/export.py            # ~3 min on 2 cores
    python benchmarks/export.py --quick    # fewer images and repeats
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import Pipeline

from _common import DATA, TRACER, alternating_ms, speedup_spread, untraced, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.export import OnnxModel, export_onnx, inference_module, onnx_input


def spread(times):
    """The speed-up (torch / onnxruntime): the median of the rounds' speed-ups and their
    lowest and highest (:func:`_common.speedup_spread`)."""
    speedup, low, high = speedup_spread(times)
    return {"speedup": speedup, "speedup_low": low, "speedup_high": high, "rounds": len(times)}


def block_ms(predictors, X, repeats, batch):
    """``(repeats, n_predictors, n_batches)`` ms per item: each round runs every predictor in
    turn over all the batches of ``X`` (a block), each block after one untimed call.

    Not call by call as :func:`_common.alternating_ms`: onnxruntime's threads spin-wait for a
    moment after each run (its default), and a torch call that follows at once loses the
    cores to them (exploratory, 224 px at batch 1: torch eager 10.5 ms/img alone, 20-21
    alternating call by call with a spinning session, 11.0 with a non-spinning one).
    """
    chunks = [X[i : i + batch] for i in range(0, len(X) - batch + 1, batch)]
    for predict in predictors:
        predict(chunks[0])  # the trace records the code that the timed calls run
    times = np.empty((repeats, len(predictors), len(chunks)))
    for r in untraced(range(repeats)):
        for k, predict in enumerate(predictors):
            predict(chunks[-1])  # untimed: the other engine's threads settle
            for j, x in enumerate(chunks):
                t = time.perf_counter()
                predict(x)
                times[r, k, j] = (time.perf_counter() - t) / len(x)
    return 1000 * times


def ratio_text(row):
    return f"{row['speedup']:.2f}x [{row['speedup_low']:.2f}-{row['speedup_high']:.2f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    e2e_repeats = 2 if args.quick else 3
    Xtr, ytr = load_image_folder(DATA / "stanford_cars_a" / "train")
    Xte, _ = load_image_folder(DATA / "stanford_cars_a" / "test")
    rng = np.random.default_rng(0)
    Xtr, ytr = Xtr[::8], ytr[::8]  # ~300 images: enough to fit a head
    Xte = Xte[rng.permutation(len(Xte))[: 64 if args.quick else 256]]
    pipe = Pipeline([("cnn", CNNFeatureExtractor(cache=False)), ("clf", SoftmaxClassifier(random_state=0))])
    pipe.fit(Xtr, ytr)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(pipe, Path(tmp) / "traced.onnx")  # traced, untimed: the code the timed export runs
        with TRACER.paused():
            t = time.perf_counter()
            path = export_onnx(pipe, Path(tmp) / "model.onnx")
            export_s = time.perf_counter() - t
        size_mb = Path(path).stat().st_size / 2**20
        served = OnnxModel(path)
        images = onnx_input(Xte, served.image_size, served.resize)
        module = inference_module(pipe)[0]
        proba_gap = float(np.abs(served.predict_proba(Xte) - pipe.predict_proba(Xte)).max())

        def torch_net(x):  # channels-last input, as skfg's own prediction feeds the network
            with torch.inference_mode():
                return module(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

        def ort_net(x):
            return served.session.run(None, {"images": x})

        rows, results = [], []
        for batch in (1, 32):
            n = 32 if batch == 1 else 8 * batch
            times = block_ms((torch_net, ort_net), images[:n], repeats, batch)
            a, b = times.min(0).mean(1)
            results.append({"measure": "network", "batch": batch, "torch_ms": float(a), "onnxruntime_ms": float(b),
                            **spread(times)})
            rows.append((f"network, batch {batch}", f"{a:.2f}", f"{b:.2f}", ratio_text(results[-1])))
        times = alternating_ms((pipe.predict_proba, served.predict_proba), Xte, e2e_repeats, per_round=True,
                               batch=len(Xte))
        a, b = times.min(0).mean(1)
        results.append({"measure": "end_to_end", "batch": 32, "torch_ms": float(a), "onnxruntime_ms": float(b),
                        **spread(times)})
        rows.append(("from files (decode + resize), predict_proba", f"{a:.2f}", f"{b:.2f}", ratio_text(results[-1])))
    notes = (f"Pipeline(CNNFeatureExtractor() [EfficientNet-Lite0, {served.image_size} px], SoftmaxClassifier()) on "
             f"stanford_cars_a, "
             f"{len(Xte)} test images, 2 CPU cores (torch {torch.get_num_threads()} threads). ms per image (each batch's best "
             f"time over the rounds); speed-up = the median over the rounds of torch / onnxruntime within the round, "
             f"[lowest-highest] over the rounds alone (a speed-up whose "
             f"range holds 1.00 is none). Network rows: {repeats} rounds, each timing the two in turn over all the batches "
             f"(onnxruntime's threads spin-wait after each run, its default, and slow a torch call right after it); "
             f"end to end: {e2e_repeats} rounds over the whole test set. "
             f"Export took {export_s:.0f} s; the file is {size_mb:.1f} MB; the largest probability difference between "
             f"the two on the test images is {proba_gap:.1e}. End to end, skfg's predict_proba decodes with its own "
             f"batching (batch_size {pipe[0].batch_size}); OnnxModel runs batches of {served.batch_size}.")
    write_results("export_quick" if args.quick else "export",
                  {"rows": results, "image_size": served.image_size, "export_seconds": export_s, "file_mb": size_mb,
                   "max_proba_difference": proba_gap},
                  rows, ("measure", "torch eager ms/img", "onnxruntime ms/img", "speed-up [round range]"), notes,
                  headline={f"{r['measure']} batch {r.get('batch', '-')} speed-up": r["speedup"] for r in results},
                  headline_ranges={f"{r['measure']} batch {r.get('batch', '-')} speed-up": [r["speedup_low"],
                                                                                         r["speedup_high"]]
                                   for r in results})


if __name__ == "__main__":
    main()
