"""The fine-tuning recipe on stanford_cars_a: the default against the old recipe, a plain
torchvision-style loop and the recipe with one ingredient removed at a time (issue 20).

Every row fine-tunes on the train split, picks nothing on test, and reports val and test
accuracy, fit minutes, training throughput (images/s over the mini-batches of an epoch)
and predict ms/image; "epochs" counts the fine-tuning epochs (the recipe first trains the
head for ``head_epochs`` on cached features, seconds in all). Rows:

- ``recipe (default)``: ``SoftmaxClassifier(extractor=CNNFeatureExtractor())`` with
  every parameter at its default, for its default epochs (the headline; its own budget).
- At an equal, shorter wall-time budget (``--budget`` minutes each; every row's epochs
  are the budget over its measured epoch time): the recipe itself, the old recipe
  (Adam 3e-3, last 2 stages, crop + flip at full size: the 52.7 % row of
  ``finetune.md``), a plain torchvision loop (PIL decoding every epoch, RandomResizedCrop
  + flip, SGD with step decay, contiguous memory), and each ingredient removed.
- ``--backbones``: EfficientNet-Lite1 and Lite2 with the default recipe.

    python benchmarks/recipe.py --quick                 # 12 classes, 64 px, ~2 min
    python benchmarks/recipe.py --rows recipe_default   # the headline only
    python benchmarks/recipe.py                         # every row (~2.5 h on 2 cores)
    python benchmarks/recipe.py --steps                 # step time: NCHW / channels-last / bf16
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from _common import DATA, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.backbones import build_backbone
from skfg.datasets import load_image_folder
from skfg.images import Augmentation

OLD = dict(optimizer="adam", lr=3e-3, weight_decay=1e-4, trainable_blocks=2, label_smoothing=0.0, warmup_epochs=0,
           head_epochs=0, freeze_batchnorm=False,
           augment=Augmentation(crop_ratio=1.0, scale=(0.25, 1.0), trivial_augment=False, erasing=0.0))
# name -> (SoftmaxClassifier parameters, note); None is the plain torchvision loop
ROWS = {
    "recipe_default": ({}, "every parameter at its default (its own budget)"),
    "recipe": ({}, "the default recipe, at the shared budget"),
    "old_recipe": (OLD, "Adam 3e-3, last 2 stages, crop+flip at full size"),
    "plain_loop": (None, "torchvision-style loop: PIL every epoch, SGD 0.01 + step decay"),
    "no_trivial_augment": ({"augment": Augmentation(trivial_augment=False)}, "ablation"),
    "no_erasing": ({"augment": Augmentation(erasing=0.0)}, "ablation"),
    "no_fixres": ({"augment": Augmentation(crop_ratio=1.0)}, "ablation: train crops at the test size"),
    "no_label_smoothing": ({"label_smoothing": 0.0}, "ablation"),
    "no_warmup": ({"warmup_epochs": 0}, "ablation"),
    "no_frozen_batchnorm": ({"freeze_batchnorm": False}, "ablation: BatchNorm on batch statistics"),
    "no_head_epochs": ({"head_epochs": 0}, "ablation: no linear probing first"),
    "lr_0.03": ({"lr": 0.03}, "the head at 0.03, the backbone at 0.02"),
    "mild_augment": ({"augment": Augmentation(scale=(0.5, 1.0), trivial_augment=False, erasing=0.0)},
                     "crops of 50-100 %, flips only"),
    "adamw": ({"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05}, "AdamW instead of SGD"),
    "ema": ({"ema_decay": 0.998}, "with an EMA of the weights"),
    "lite1": ({"backbone": "efficientnet_lite1"}, "EfficientNet-Lite1, default recipe"),
    "lite2": ({"backbone": "efficientnet_lite2"}, "EfficientNet-Lite2, default recipe"),
}
SHARED = [r for r in ROWS if r not in ("recipe_default", "lite1", "lite2")]


def step_seconds(backbone, crop, batch_size, trainable, channels_last, steps=4, dtype=None):
    """Seconds per training image of a forward + backward + SGD step (random input), under
    autocast to ``dtype`` when given."""
    net = build_backbone(backbone, weights=None)
    names = net.stage_names
    for name in names[: len(names) - trainable]:
        net.stages[name].requires_grad_(False)
    head = torch.nn.Linear(1280, 98)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-3)
    x = torch.randn(batch_size, 3, crop, crop).contiguous(memory_format=fmt)
    y = torch.randint(0, 98, (batch_size,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            for _, h in net.forward_stages(x):
                pass
            logits = head(h.mean((2, 3)))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])) / batch_size


def plain_loop(Xtr, ytr, size, epochs, seed, batch_size=32):
    """What a user would write: torchvision transforms on PIL images every epoch, SGD with
    step decay, a linear head on the pretrained Lite0, contiguous (NCHW) tensors."""
    import torchvision.transforms as T
    from PIL import Image

    torch.manual_seed(seed)
    classes = sorted(set(ytr))
    targets = np.searchsorted(classes, ytr)
    norm = T.Normalize([0.5] * 3, [0.5] * 3)
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), norm])

    class Folder(torch.utils.data.Dataset):
        def __init__(self, paths, y, tf):
            self.paths, self.y, self.tf = paths, y, tf

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            with Image.open(self.paths[i]) as img:
                return self.tf(img.convert("RGB")), int(self.y[i])

    net = build_backbone("efficientnet_lite0")
    model = torch.nn.Sequential()
    model.net, model.head = net, torch.nn.Linear(1280, len(classes))

    def forward(x):
        for _, h in net.forward_stages(x):
            pass
        return model.head(h.mean((2, 3)))

    loader = torch.utils.data.DataLoader(Folder(Xtr, targets, train_tf), batch_size=batch_size, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    history = []
    for epoch in range(epochs):
        model.train()
        t, n = time.perf_counter(), 0
        for x, y in loader:
            loss = F.cross_entropy(forward(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(y)
        sched.step()
        history.append({"train_seconds": time.perf_counter() - t, "n_samples": n})

    def predict(X):
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(X), 32):
                x = torch.stack([test_tf(Image.open(p).convert("RGB")) for p in X[i : i + 32]])
                out.append(forward(x).argmax(1).numpy())
        return np.asarray(classes, dtype=object)[np.concatenate(out)]

    return predict, history


def step_table(args):
    """Training step time per image: memory format and autocast dtype, side by side."""
    rows, results = [], []
    sizes = (64,) if args.quick else (128, 160)
    for size in sizes:
        base = None
        for label, cl, dtype in [("float32, contiguous (NCHW)", False, None), ("float32, channels-last", True, None),
                                 ("bfloat16 autocast, channels-last", True, torch.bfloat16)]:
            ms = 1000 * step_seconds("efficientnet_lite0", size, 32, 9, cl, steps=3 if args.quick else 5, dtype=dtype)
            base = base or ms
            rows.append((size, label, f"{ms:.1f}", f"{base / ms:.2f}x"))
            results.append({"crop": size, "setting": label, "ms_per_image": ms, "speedup_vs_nchw": base / ms})
            print(rows[-1], flush=True)
    write_results("recipe_steps_quick" if args.quick else "recipe_steps", {"rows": results},
                  rows, ("crop px", "setting", "ms/image (fwd+bwd+SGD)", "vs NCHW float32"),
                  "EfficientNet-Lite0, every stage trained, batch 32, random input, median of the steps after one "
                  "warm-up step, 2 CPU cores. bfloat16 autocast is why precision='auto' stays float32 on CPUs.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--budget", type=float, default=12.0, help="minutes of training for the shared rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="results file name (default: recipe or recipe_quick)")
    parser.add_argument("--steps", action="store_true", help="only the step-time table (recipe_steps.md)")
    args = parser.parse_args()
    if args.steps:
        return step_table(args)
    root = DATA / "stanford_cars_a"
    Xtr, ytr = load_image_folder(root / "train")
    Xva, yva = load_image_folder(root / "val")
    Xte, yte = load_image_folder(root / "test")
    size = CNNFeatureExtractor().image_size
    if args.quick:
        keep = sorted(set(ytr))[:12]
        (Xtr, ytr), (Xva, yva), (Xte, yte) = ((X[np.isin(y, keep)], y[np.isin(y, keep)])
                                              for X, y in [(Xtr, ytr), (Xva, yva), (Xte, yte)])
        size, args.budget = 64, 0.5
    names = list(ROWS) if args.rows is None else args.rows.split(",")
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    rows, results = [], []
    for name in names:
        params, note = ROWS[name]
        params = None if params is None else dict(params)
        backbone = "efficientnet_lite0" if params is None else params.pop("backbone", "efficientnet_lite0")
        ext = CNNFeatureExtractor(backbone, image_size=size)
        epochs = None
        if name in SHARED:  # equal wall time: the budget over this row's measured cost per image
            aug = (params or {}).get("augment", Augmentation()) if params is not None else None
            crop = size if aug is None else aug.crop_size(size)
            blocks = 9 if params is None else {"all": 9, "auto": 9}.get(params.get("trainable_blocks", "auto"),
                                                                        params.get("trainable_blocks"))
            per_image = step_seconds(backbone, crop, 32, blocks, channels_last=params is not None)
            epochs = max(1, int(args.budget * 60 / (per_image * len(ytr) * (1.0 if params is None else 0.9))))
        t = time.perf_counter()
        if params is None:
            predict, history = plain_loop(Xtr, ytr, size, epochs, args.seed)
            fit_s = time.perf_counter() - t
            best_epoch = epochs
        else:
            if epochs is not None:
                params["max_epochs"] = epochs
            clf = SoftmaxClassifier(extractor=ext, random_state=args.seed, **params).fit(Xtr, ytr)
            fit_s = time.perf_counter() - t
            # the fine-tuning epochs (after the head_epochs of linear probing on cached features)
            predict, history, best_epoch = clf.predict, clf.history_[-clf._setting("max_epochs"):], clf.best_epoch_
        val = float(np.mean(predict(Xva) == yva))
        t = time.perf_counter()
        test = float(np.mean(predict(Xte) == yte))
        ms = 1000 * (time.perf_counter() - t) / len(Xte)
        ips = float(np.median([h["n_samples"] / h["train_seconds"] for h in history]))
        results.append({"name": name, "note": note, "backbone": backbone, "params": repr(params), "seed": args.seed,
                        "epochs": len(history), "best_epoch": best_epoch, "fit_minutes": fit_s / 60,
                        "train_images_per_s": ips, "val_accuracy": val, "test_accuracy": test,
                        "predict_ms_per_image": ms})
        rows.append((name, backbone.replace("efficientnet_", ""), f"{val:.3f}", f"{test:.3f}", f"{fit_s / 60:.1f}",
                     len(history), f"{ips:.1f}", f"{ms:.1f}", note))
        print(rows[-1], flush=True)
        header = ("row", "backbone", "val acc", "test acc", "fit min", "epochs", "train img/s", "predict ms/img",
                  "note")
        by = {r["name"]: r for r in results}
        notes = (f"stanford_cars_a ({len(ytr)} train / {len(yva)} val / {len(yte)} test images), {size} px test size, "
                 f"seed {args.seed}, 2 CPU cores. Shared rows: {args.budget:g} min of training each (epochs = budget / "
                 "the row's measured step time). Nothing is chosen on test.")
        if "plain_loop" in by and "no_fixres" in by:
            ratio = by["no_fixres"]["train_images_per_s"] / by["plain_loop"]["train_images_per_s"]
            notes += (f"\n\nTraining throughput, same model, batch 32 and {size} px crops: skfg loop "
                      f"{by['no_fixres']['train_images_per_s']:.1f} img/s vs plain loop "
                      f"{by['plain_loop']['train_images_per_s']:.1f} img/s = {ratio:.2f}x.")
        write_results(args.name or ("recipe_quick" if args.quick else "recipe"),
                      {"rows": results, "budget_minutes": args.budget, "image_size": size, "quick": args.quick},
                      rows, header, notes)


if __name__ == "__main__":
    main()
