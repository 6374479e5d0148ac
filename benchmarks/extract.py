"""Throughput of ``CNNFeatureExtractor.transform`` vs a naive torchvision loop, same run.

The naive reference is what most code does: ``torchvision.datasets.ImageFolder`` +
``DataLoader`` + the same network in eval mode under ``no_grad``
(channels-first), each image resized whole to the square input as skfg's default
``resize="squash"``. The baseline is tuned as a user would tune it: batch sizes 32, 8
and 4 without loader workers and 8 with two (``NAIVE``); the ratios are against the
fastest of them ("x best naive") and against the common ``batch_size=32``. Both
produce GAP + L2-normalised features of the last stage of the
default backbone, checked equal (max abs diff < 1e-4).

    python benchmarks/extract.py            # stanford_cars_a test split, 160 and 224 px
    python benchmarks/extract.py --quick    # 160 images
"""

import argparse
import time

import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from _common import DATA, write_results
from skfg import CNNFeatureExtractor, clear_feature_cache
from skfg.backbones import build_backbone
from skfg.pooling import pool_stage_outputs


NAIVE = [(32, 0), (8, 0), (4, 0), (8, 2)]  # (batch_size, num_workers) of the baseline


def naive_features(root, size, indices, batch_size=32, num_workers=0):
    net = build_backbone("efficientnet_lite0", "imagenet").eval()
    # the whole image resized to size x size, as CNNFeatureExtractor's default resize="squash"
    tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(net.mean, net.std)])
    ds = ImageFolder(str(root), transform=tf)
    loader = DataLoader(Subset(ds, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = []
    t = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            maps = net.forward_features(x, ["head"])
            out.append(pool_stage_outputs(maps, ["head"]).numpy())
    return np.concatenate(out), time.perf_counter() - t, [ds.samples[i][0] for i in indices]


def skfg_features(paths, size, **params):
    ext = CNNFeatureExtractor(image_size=size, cache=False, **params).fit()
    ext.transform(paths[:8])  # warm-up, as the naive loop's first batch is not special either
    t = time.perf_counter()
    F = ext.transform(paths)
    return F, time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="160 images, one size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    args = parser.parse_args()
    root = DATA / "stanford_cars_a" / "test"
    n_total = len(ImageFolder(str(root)))
    indices = list(range(n_total))
    sizes = args.sizes
    if args.quick:
        indices = list(np.linspace(0, n_total - 1, 160).astype(int))
        sizes = sizes[:1]
    rows, results = [], []
    for size in sizes:
        naive_features(root, size, indices[:32])  # warm-up
        naive = {}
        for bs, workers in NAIVE:
            F, sec, paths = naive_features(root, size, indices, bs, workers)
            naive[(bs, workers)] = (F, len(paths) / sec)
        naive_F, naive_32 = naive[(32, 0)]
        best_naive = max(ips for _, ips in naive.values())
        for (bs, workers), (F, ips) in naive.items():
            diff = float(np.abs(F - naive_F).max())
            rows.append((size, f"naive ImageFolder + DataLoader(batch_size={bs}, num_workers={workers})", f"{ips:.1f}",
                         f"{1000 / ips:.1f}", f"{ips / best_naive:.2f}", f"{ips / naive_32:.2f}", f"{diff:.1e}"))
            results.append({"image_size": size, "method": "naive", "batch_size": bs, "num_workers": workers,
                            "images": len(paths), "images_per_s": ips, "ratio_vs_best_naive": ips / best_naive,
                            "ratio_vs_naive_32": ips / naive_32})
        variants = [
            ("skfg default (batch 4, channels-last, decode in caller)", {}),
            ("skfg 1 decode thread", {"n_jobs": 1}),
            ("skfg batch 32", {"batch_size": 32}),
            ("skfg batch 1", {"batch_size": 1}),
        ]
        for name, params in variants:
            F, s = skfg_features(np.asarray(paths, dtype=object), size, **params)
            diff = float(np.abs(F - naive_F).max())
            ips = len(paths) / s
            rows.append((size, name, f"{ips:.1f}", f"{1000 / ips:.1f}", f"{ips / best_naive:.2f}",
                         f"{ips / naive_32:.2f}", f"{diff:.1e}"))
            results.append({"image_size": size, "method": name, "params": params, "images": len(paths),
                            "images_per_s": ips, "ratio_vs_best_naive": ips / best_naive,
                            "ratio_vs_naive_32": ips / naive_32, "max_abs_diff": diff})
            assert diff < 1e-4, f"features differ from the reference by {diff}"
        ext = CNNFeatureExtractor(image_size=size).fit()
        ext.transform(np.asarray(paths, dtype=object))
        t = time.perf_counter()
        ext.transform(np.asarray(paths, dtype=object))
        ips = len(paths) / (time.perf_counter() - t)
        clear_feature_cache()
        rows.append((size, "skfg default, second transform (feature cache)", f"{ips:.0f}", f"{1000 / ips:.3f}",
                     f"{ips / best_naive:.0f}", f"{ips / naive_32:.0f}", "0"))
        results.append({"image_size": size, "method": "cached", "images_per_s": ips, "ratio_vs_best_naive": ips / best_naive})
    write_results(
        "extract" + ("_quick" if args.quick else ""),
        {"dataset": "stanford_cars_a/test", "backbone": "efficientnet_lite0", "results": results},
        rows,
        ("px", "method", "images/s", "ms/image", "x best naive", "x naive batch 32", "max |diff|"),
        notes="Decode + resize + CNN + GAP + L2, EfficientNet-Lite0 (ImageNet weights), "
        "measured side by side in one run, one pass each (no repeats: differences of a few per cent are noise). "
        "The baseline at its best setting of those tried is the comparison; target: default >= 1.5x the best naive.",
    )


if __name__ == "__main__":
    main()
