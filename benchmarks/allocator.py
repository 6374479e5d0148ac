"""Fine-tuning with glibc's malloc keeping the memory torch frees (``skfg._memory``) against
without (``SKFG_KEEP_FREED_MEMORY=0``): the training images per second of the default
fine-tune, and what the kernel spent on it.

Every round fits ``SoftmaxClassifier(extractor=CNNFeatureExtractor(), head_epochs=0,
max_epochs=EPOCHS)`` on the same ``--images`` training images of ``stanford_cars_a`` (the
default network, 224 px, training crops of 179 px) twice, in two fresh processes, one with
each setting, in turn (the order alternates): a setting of the allocator belongs to the
whole process. Each process reports the mini-batches' images per second of its last epoch
(``history_``'s ``train_seconds``; the first epoch also decodes and warms up), its minor
page faults, system and user CPU seconds over the fit, and its peak resident memory. The
speed-up is the median of the per-round ratios with their range (``_common.ratio_over_rounds``).
After the fit, each process also times the fitted network's forward pass at batch 1 (32 images,
best of 3, ``skfg.export.inference_module``) with its page faults: a prediction after a fit must
run as in a process whose malloc skfg never set (``mallopt`` turns glibc's own tuning of the
mmap threshold off for good; left at its starting 128 KiB, every activation above it is mapped
and faulted in again).
The timed processes run untraced; this process first fits once, traced, so that the result's
stamp covers the code they run.

    python benchmarks/allocator.py            # 4 rounds of 320 images, 2 epochs: ~10 min on 2 cores
    python benchmarks/allocator.py --quick    # 2 rounds of 64 images, 1 epoch
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from _common import DATA, TRACER, machine_gflops, ratio_over_rounds, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import load_image_folder
from skfg.export import inference_module

SETTINGS = {"kept": {}, "returned": {"SKFG_KEEP_FREED_MEMORY": "0"}}


def one_fit(n_images, epochs):
    """Fit in this process; return its measurements (printed as JSON by ``--one``)."""
    X, y = load_image_folder(DATA / "stanford_cars_a" / "train")
    keep = np.random.RandomState(0).permutation(len(y))[:n_images]
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(), head_epochs=0, max_epochs=epochs, random_state=0,
                            verbose=False).fit(X[keep], y[keep])
    fit_s, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    last = clf.history_[-1]
    module, size = inference_module(clf)[0], clf.preprocessing_.image_size
    images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (32, 3, size, size), dtype=np.uint8))
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        module(images[:1])  # warm-up
        faults, best = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, np.inf
        for _ in range(3):
            t = time.perf_counter()
            for i in range(len(images)):
                module(images[i : i + 1])
            best = min(best, (time.perf_counter() - t) / len(images))
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 3
    return {"predict_ms": 1000 * best, "predict_faults_per_image": faults / len(images),
            "images_per_s": last["n_samples"] / last["train_seconds"], "fit_s": fit_s,
            "minor_faults": after.ru_minflt - before.ru_minflt, "system_s": after.ru_stime - before.ru_stime,
            "user_s": after.ru_utime - before.ru_utime, "max_rss_mib": after.ru_maxrss / 1024,
            "final_loss": last["loss"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a fit in this process
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    n_images = args.images or (64 if args.quick else 320)
    epochs = args.epochs or (1 if args.quick else 2)
    if args.one:  # a timed fit: untraced (the parent ran the same code traced, below)
        with TRACER.paused():
            print(json.dumps(one_fit(n_images, epochs)))
        return
    one_fit(32, 1)  # traced, in this process: the stamp covers the code the timed processes run
    gflops = machine_gflops()
    runs = {name: [] for name in SETTINGS}
    for r in range(rounds):
        for name in (list(SETTINGS) if r % 2 == 0 else list(SETTINGS)[::-1]):
            env = {k: v for k, v in os.environ.items() if k not in ("SKFG_KEEP_FREED_MEMORY",)}
            out = subprocess.run([sys.executable, __file__, "--one", "--images", str(n_images), "--epochs",
                                  str(epochs)], env={**env, **SETTINGS[name]}, capture_output=True, text=True,
                                 check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(r, name, runs[name][-1], flush=True)
    # the same numbers in both settings: the allocator changes where memory comes from, not the fit
    losses = {name: [x["final_loss"] for x in v] for name, v in runs.items()}
    speedup, low, high = ratio_over_rounds([1 / x["images_per_s"] for x in runs["returned"]],
                                           [1 / x["images_per_s"] for x in runs["kept"]])
    predict, predict_low, predict_high = ratio_over_rounds([x["predict_ms"] for x in runs["returned"]],
                                                           [x["predict_ms"] for x in runs["kept"]])
    summary = {name: {k: float(np.median([x[k] for x in v])) for k in v[0]} for name, v in runs.items()}
    payload = {"rounds": rounds, "n_images": n_images, "epochs": epochs, "machine_gflops": gflops,
               "runs": runs, "summary": summary, "same_losses": losses["kept"] == losses["returned"],
               "speedup": {"median": speedup, "low": low, "high": high},
               "predict_after_fit": {"median": predict, "low": predict_low, "high": predict_high}}
    header = ("setting", "train img/s", "fit s", "minor page faults", "system s", "user s", "peak RSS MiB",
              "predict ms/img after the fit", "its faults/img")
    rows = [(name, f"{s['images_per_s']:.1f}", f"{s['fit_s']:.1f}", f"{s['minor_faults']:.0f}",
             f"{s['system_s']:.1f}", f"{s['user_s']:.1f}", f"{s['max_rss_mib']:.0f}", f"{s['predict_ms']:.1f}",
             f"{s['predict_faults_per_image']:.0f}") for name, s in summary.items()]
    notes = (f"Medians over {rounds} rounds; each round fits once per setting, each in a fresh process, in "
             f"alternating order. {n_images} training images of stanford_cars_a, {epochs} epoch(s), "
             f"SoftmaxClassifier(extractor=CNNFeatureExtractor(), head_epochs=0); img/s of the last epoch's "
             f"mini-batches. 'kept': skfg's default (glibc's malloc keeps freed memory while training); "
             f"'returned': SKFG_KEEP_FREED_MEMORY=0 (glibc's defaults). Machine: {gflops:.0f} GFLOP/s float32, "
             f"2 CPU cores.\n\nTraining speed-up of 'kept' over 'returned': {speedup:.2f}x (per-round range "
             f"{low:.2f}-{high:.2f}x); final losses identical in every round: {payload['same_losses']}. Prediction "
             f"after the fit (network forward, batch 1, 224 px): 'returned' / 'kept' ms {predict:.2f}x (per-round "
             f"range {predict_low:.2f}-{predict_high:.2f}x; 1.00: the same speed).")
    write_results("allocator_quick" if args.quick else "allocator", payload, rows, header, notes=notes,
                  headline={"training speed-up": speedup}, headline_ranges={"training speed-up": [low, high]})


if __name__ == "__main__":
    main()
