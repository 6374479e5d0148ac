"""Why the recipe keeps BatchNorm on its pretrained statistics (``freeze_batchnorm``):
how much the pretrained EfficientNet-Lite0's features change when BatchNorm normalises
with the statistics of a training mini-batch (train mode) instead of its running
statistics (eval mode), stage by stage, and what that does to a linear probe fitted on
the eval-mode features.

    python benchmarks/batchnorm.py            # stanford_cars_a, 640 train images, ~1 min
    python benchmarks/batchnorm.py --quick    # 128 images
"""

import argparse
import copy

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from _common import DATA, write_results
from skfg import CNNFeatureExtractor
from skfg.datasets import load_image_folder
from skfg.images import ImageCache, ImageSource, eval_transform, to_input


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    X, y = load_image_folder(DATA / "stanford_cars_a" / "train")
    n = 128 if args.quick else 640
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(X))[:n]
    X, y = X[keep], y[keep]
    ext = CNNFeatureExtractor(image_size=args.size, normalize=False).fit()
    probe = LogisticRegression(max_iter=3000, C=10).fit(ext.transform(X), y)
    cache = ImageCache(ImageSource(X), eval_transform(args.size, "squash"))
    mean, std = ext.input_normalization()
    rows, results, probe_rows = [], [], []
    batches = [np.arange(i, i + args.batch) for i in range(0, n - args.batch + 1, args.batch)]
    names = ext.network_.stage_names
    diffs = {name: [] for name in names}
    acc_eval, acc_train = [], []
    for idx in batches:
        x = to_input(torch.stack([cache[i] for i in idx]), mean, std, "cpu")
        net = copy.deepcopy(ext.network_)  # train mode updates the running statistics: a fresh copy each time
        with torch.no_grad():
            a = net.eval().forward_features(x, names)
            b = copy.deepcopy(ext.network_).train().forward_features(x, names)
        for name in names:
            diffs[name].append(float((a[name] - b[name]).norm() / a[name].norm()))
        last = names[-1]
        acc_eval.append(np.mean(probe.predict(a[last].mean((2, 3)).numpy()) == y[idx]))
        acc_train.append(np.mean(probe.predict(b[last].mean((2, 3)).numpy()) == y[idx]))
    for name in names:
        results.append({"stage": name, "relative_difference": float(np.mean(diffs[name]))})
        rows.append((name, f"{np.mean(diffs[name]):.3f}"))
    probe_rows = {"probe_accuracy_eval_mode": float(np.mean(acc_eval)),
                  "probe_accuracy_train_mode": float(np.mean(acc_train))}
    notes = (f"EfficientNet-Lite0 (ImageNet weights), {n} stanford_cars_a training images at {args.size} px "
             f"(squash), {len(batches)} mini-batches of {args.batch}; relative difference "
             "||f_eval - f_train|| / ||f_eval|| of each stage's output, mean over the batches. A logistic-regression "
             f"probe fitted on the eval-mode pooled features (the same images) is right on "
             f"{probe_rows['probe_accuracy_eval_mode']:.3f} of them with eval-mode features and on "
             f"{probe_rows['probe_accuracy_train_mode']:.3f} with train-mode (batch statistics) features.")
    write_results("batchnorm_quick" if args.quick else "batchnorm", {"rows": results, **probe_rows},
                  rows, ("stage", "relative difference, train vs eval mode"), notes)


if __name__ == "__main__":
    main()
