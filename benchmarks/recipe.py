"""The fine-tuning recipe on stanford_cars_a: the default against the old recipe, a plain
torchvision-style loop and the recipe with one ingredient removed at a time (issue 20).

Every row fine-tunes on the train split, picks nothing on test, and reports val and test
accuracy, fit minutes, training throughput (images/s over the mini-batches of an epoch)
and predict ms/image; "epochs" counts the fine-tuning epochs (the recipe first trains the
head for ``head_epochs`` on cached features, seconds in all). Rows:

- ``recipe (default)``: ``SoftmaxClassifier(extractor=CNNFeatureExtractor())`` with
  every parameter at its default, for its default epochs (the headline; its own budget).
- At an equal, shorter wall-time budget (``--budget`` minutes each; every row's epochs
  are the budget over its measured step time, timed once per network shape, so rows that
  differ only in hyper-parameters train equally many epochs): the recipe itself, the old recipe
  (Adam 3e-3, last 2 stages, crop + flip at full size: the best fine-tuning before the
  recipe), a plain torchvision loop (PIL decoding every epoch, RandomResizedCrop
  + flip, SGD with step decay, contiguous memory), each ingredient removed (or, for the
  augmentations off by default, added: ``with_trivial_augment``, ``with_erasing``), and
  EfficientNet-Lite1 / Lite2 with the default recipe.
- ``default_old_augment``: the headline with TrivialAugmentWide and random erasing (p=0.25),
  the default until the paired 3-seed ablation at full length dropped them, at the default's
  full length; with ``recipe_default`` on the same seeds the table adds the paired difference
  (per seed, row minus default) with a 95 % interval.
- ``default_no_label_smoothing``: the headline without label smoothing, at full length,
  paired by seed in the same way.
- ``default_adamw``: the headline with AdamW (3e-3, weight decay 0.05: the optimiser of
  ``impostor_recipe.py``'s chosen row), at full length, paired by seed in the same way.
- ``quality_224``: the headline with twice its epochs (22 at the default 224 px: the quality
  setting, ``quality.py``'s ``lite0_224``): its fit time on this CPU.

The headline rows (the default over 3 seeds, and the quality setting's fit time) are kept
in a file of their own (``--name recipe_headline``), so that they can be re-measured after a
change without re-running the whole table.

Every row runs once per ``--seeds`` seed; with two or more, the table adds each row's
mean and a 95 % Student-t interval. ``--merge`` adds rows (other rows, other seeds) to
an existing results file when the code it measured is unchanged, so a long table can be
filled over several runs.

    python benchmarks/recipe.py --quick                 # 12 classes, 64 px, ~5 min
    python benchmarks/recipe.py --rows recipe_default --seeds 0,1,2 --name recipe_headline   # the headline
    python benchmarks/recipe.py --rows quality_224 --merge --name recipe_headline  # + the quality setting
    python benchmarks/recipe.py --rows recipe,plain_loop --merge      # shared rows, added
    python benchmarks/recipe.py --steps                 # step cost, one ingredient at a time
"""

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from _common import (DATA, TRACER, format_table, machine_gflops, mergeable_rows, paired_by_seed, ratio_over_rounds,
                     seed_interval, write_results)
from skfg import CNNFeatureExtractor, SoftmaxClassifier, clear_feature_cache
from skfg.backbones import build_backbone
from skfg.datasets import load_image_folder
from skfg.images import Augmentation

OLD = dict(optimizer="adam", lr=3e-3, weight_decay=1e-4, trainable_blocks=2, label_smoothing=0.0, warmup_epochs=0,
           head_epochs=0, freeze_batchnorm=False, divergence_guard=None,
           augment=Augmentation(crop_ratio=1.0, scale=(0.25, 1.0), trivial_augment=False, erasing=0.0))
# name -> (SoftmaxClassifier parameters, note); None is the plain torchvision loop
ROWS = {
    "recipe_default": ({}, "every parameter at its default (its own budget)"),
    "recipe": ({}, "the default recipe, at the shared budget"),
    "old_recipe": (OLD, "Adam 3e-3, last 2 stages, crop+flip at full size"),
    "plain_loop": (None, "torchvision-style loop: PIL every epoch, SGD 0.01 + step decay"),
    "with_trivial_augment": ({"augment": Augmentation(trivial_augment=True)}, "ablation: adds TrivialAugmentWide"),
    "with_erasing": ({"augment": Augmentation(erasing=0.25)}, "ablation: adds random erasing (p=0.25)"),
    "no_fixres": ({"augment": Augmentation(crop_ratio=1.0)}, "ablation: train crops at the test size"),
    "no_label_smoothing": ({"label_smoothing": 0.0}, "ablation"),
    "no_warmup": ({"warmup_epochs": 0}, "ablation"),
    "no_frozen_batchnorm": ({"freeze_batchnorm": False}, "ablation: BatchNorm on batch statistics"),
    "no_head_epochs": ({"head_epochs": 0}, "ablation: no linear probing first"),
    "no_divergence_guard": ({"divergence_guard": None}, "ablation: no divergence guard"),
    "grad_clip_5": ({"max_grad_norm": 5.0}, "gradient norm clipped to 5"),
    "lr_0.03": ({"lr": 0.03}, "the head at 0.03, the backbone at 0.02"),
    "lr_0.003": ({"lr": 0.003}, "the head at 0.003, the backbone at 0.002"),
    "mild_augment": ({"augment": Augmentation(scale=(0.5, 1.0))},
                     "crops of 50-100 %, flips only"),
    "adamw": ({"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05}, "AdamW instead of SGD"),
    "ema": ({"ema_decay": 0.998}, "with an EMA of the weights"),
    "lite1": ({"backbone": "efficientnet_lite1"}, "EfficientNet-Lite1, default recipe, at the shared budget"),
    "lite2": ({"backbone": "efficientnet_lite2"}, "EfficientNet-Lite2, default recipe, at the shared budget"),
    # the augmentations the default dropped, at the default's full length (paired by seed)
    "default_old_augment": ({"augment": Augmentation(trivial_augment=True, erasing=0.25)},
                            "recipe_default + TrivialAugmentWide + erasing, the previous default (its own budget)"),
    # label smoothing, which the single-seed shared-budget ablations did not support, at full length
    "default_no_label_smoothing": ({"label_smoothing": 0.0},
                                   "recipe_default without label smoothing (its own budget)"),
    # the optimiser of impostor_recipe.py's chosen row, so that the impostor gain is read at an equal optimiser
    "default_adamw": ({"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05},
                      "recipe_default with AdamW 3e-3, wd 0.05 (its own budget)"),
    # the quality setting (quality.py's lite0_224), for its fit time on this CPU
    "quality_224": ({"max_epochs": 22}, "recipe_default with 22 epochs (at 224 px): the quality setting"),
}
FULL = ["recipe_default", "default_old_augment", "default_no_label_smoothing", "default_adamw", "quality_224"]
SHARED = [r for r in ROWS if r not in FULL]



def cpu_has_bf16():
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX; Linux)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags

def make_step(backbone, crop, batch_size, trainable, channels_last, dtype=None, weights=None,
              train_batchnorm=False, compiled=False):
    """A function that runs one forward + backward + SGD step of ``batch_size`` random
    images and returns its seconds; under autocast to ``dtype`` when given; BatchNorm on
    batch statistics or frozen (skfg's default); the forward through ``torch.compile``
    when ``compiled``."""
    net = build_backbone(backbone, weights=weights)
    names = net.stage_names
    for name in names[: len(names) - trainable]:
        net.stages[name].requires_grad_(False)
    head = torch.nn.Linear(1280, 98)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    if not train_batchnorm:
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()

    def forward(x):
        for _, h in net.forward_stages(x):
            pass
        return head(h.mean((2, 3)))

    forward = torch.compile(forward) if compiled else forward
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-3)
    x = torch.randn(batch_size, 3, crop, crop).contiguous(memory_format=fmt)
    y = torch.randint(0, 98, (batch_size,))

    def step():
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return step


def step_seconds(backbone, crop, batch_size, trainable, channels_last, steps=4, compiled=False, **kwargs):
    """Seconds per training image of :func:`make_step`'s step: the median of ``steps``
    steps, untraced, after the warm-up (one step; three under ``torch.compile``), traced."""
    step = make_step(backbone, crop, batch_size, trainable, channels_last, compiled=compiled, **kwargs)
    for _ in range(3 if compiled else 1):  # the warm-up, traced
        step()
    with TRACER.paused():
        times = [step() for _ in range(steps)]
    return float(np.median(times)) / batch_size


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


def data_ms(Xtr, size, crop, n=96):
    """Milliseconds per training image of input preparation: the plain loop's PIL decode +
    RandomResizedCrop + flip every epoch against skfg's augmentation of cached uint8
    tensors (skfg's default augmentation: crop and flip)."""
    import torchvision.transforms as T
    from PIL import Image

    from skfg.images import ImageCache, ImageSource, eval_transform

    paths = Xtr[:n]
    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.5] * 3, [0.5] * 3)])
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            tf(img.convert("RGB"))
    plain = 1000 * (time.perf_counter() - t) / n
    cache = ImageCache(ImageSource(paths), eval_transform(size, "squash"))
    for i in range(n):
        cache[i]
    aug = Augmentation(crop_ratio=crop / size)
    image_tf, erase = aug.image_transform(size), aug.batch_transform()
    t = time.perf_counter()
    x = torch.stack([image_tf(cache[i]) for i in range(n)])
    if erase is not None:
        erase(x.float())
    return plain, 1000 * (time.perf_counter() - t) / n


def step_table(args):
    """Training cost per image, one ingredient at a time: the plain loop's settings against
    skfg's (memory format, frozen BatchNorm, FixRes crops, autocast, torch.compile), with
    pretrained weights and the input preparation of each."""
    size = 64 if args.quick else CNNFeatureExtractor().image_size
    crop = Augmentation().crop_size(size)
    Xtr, _ = load_image_folder(DATA / "stanford_cars_a" / "train")
    settings = [  # label, crop, channels-last, BatchNorm trained, dtype, compile, input preparation
        ("plain loop: NCHW, BatchNorm on batch statistics, PIL decoding", size, False, True, None, False, "plain"),
        ("channels-last", size, True, True, None, False, "plain"),
        ("+ frozen BatchNorm", size, True, False, None, False, "plain"),
        ("+ cached uint8 tensors, skfg augmentation (test-size crops)", size, True, False, None, False, "skfg"),
        (f"+ FixRes crops of {crop} px (skfg default)", crop, True, False, None, False, "skfg"),
        ("skfg default under bfloat16 autocast", crop, True, False, torch.bfloat16, False, "skfg"),
        ("skfg default under torch.compile (inductor)", crop, True, False, None, True, "skfg"),
    ]
    if args.quick:
        settings = [s for s in settings if not s[5]]
    steppers = []
    for label, c, cl, bn_train, dtype, compiled, _ in settings:
        step = make_step("efficientnet_lite0", c, 32, 9, cl, dtype=dtype, weights="imagenet",
                         train_batchnorm=bn_train, compiled=compiled)
        for _ in range(3 if compiled else 1):  # warm-up (and, traced, the record of the code it runs)
            step()
        steppers.append(step)
    rounds, steps = (2, 3) if args.quick else (args.rounds, 5)
    step_ms, data = np.empty((rounds, len(settings))), np.empty((rounds, len(settings)))
    with TRACER.paused():
        for r in range(rounds):  # every setting once per round, so a slow spell hits all of them
            plain_data, skfg_data = data_ms(Xtr, size, crop, n=32 if args.quick else 96)
            for k, (setting, step) in enumerate(zip(settings, steppers)):
                step_ms[r, k] = 1000 * np.median([step() for _ in range(steps)]) / 32
                data[r, k] = skfg_data if setting[-1] == "skfg" else plain_data
            print(f"round {r}: " + " ".join(f"{v:.1f}" for v in step_ms[r]), flush=True)
    total = step_ms + data
    med = {k: np.median(v, 0) for k, v in (("step", step_ms), ("data", data), ("total", total))}
    rows, results = [], []
    for k, (label, c, *_) in enumerate(settings):
        speedup, lo, hi = ratio_over_rounds(total[:, 0], total[:, k])  # over the plain loop
        rows.append((label, c, f"{med['step'][k]:.1f}", f"{med['data'][k]:.1f}", f"{med['total'][k]:.1f}",
                     f"{1000 / med['total'][k]:.1f}", f"{speedup:.2f}x [{lo:.2f}-{hi:.2f}]"))
        results.append({"setting": label, "crop": c, "step_ms_per_image": float(med["step"][k]),
                        "data_ms_per_image": float(med["data"][k]), "ms_per_image": float(med["total"][k]),
                        "images_per_s": float(1000 / med["total"][k]), "speedup_vs_plain": float(speedup),
                        "speedup_low": float(lo), "speedup_high": float(hi),
                        "ms_per_image_rounds": total[:, k].tolist()})
    with warnings.catch_warnings():  # the check precision="bfloat16" makes (float32 without native support)
        warnings.simplefilter("ignore")
        native_bf16 = cpu_has_bf16()
    write_results("recipe_steps_quick" if args.quick else "recipe_steps", {"rows": results, "cpu_has_bf16": native_bf16,
                                                                        "rounds": rounds, "steps_per_round": steps},
                  rows, ("setting (each row adds to the one above)", "crop px", "step ms/img", "data ms/img",
                         "ms/img", "img/s", "vs plain loop [round range]"),
                  "EfficientNet-Lite0 with its ImageNet weights, every stage trained, batch 32, SGD; step = forward + "
                  f"backward + update on a fixed batch, after a warm-up (torch.compile: three steps); {rounds} rounds, "
                  f"each timing every setting in turn ({steps} steps, their median); data = preparing one training "
                  "image from the stanford_cars_a train files, once per round. Times are medians over the rounds; "
                  "'vs plain loop' is the median of the ratios within each round, [lowest-highest] their range"
                  " (a ratio whose range holds 1.00 is no difference). 2 CPU cores. "
                  f"This CPU {'has' if native_bf16 else 'lacks'} native bfloat16 (AVX512-BF16/AMX); without it "
                  "precision='bfloat16' falls back to float32.")


def summary(results):
    """Per row over its seeds: mean test / val accuracy with a 95 % Student-t interval."""
    out = {}
    for name in dict.fromkeys(r["name"] for r in results):
        rs = [r for r in results if r["name"] == name]
        test, test_hw = seed_interval([r["test_accuracy"] for r in rs])
        val, val_hw = seed_interval([r["val_accuracy"] for r in rs])
        out[name] = {"seeds": [r["seed"] for r in rs], "test_mean": test, "test_half_width": test_hw,
                     "val_mean": val, "val_half_width": val_hw,
                     "fit_minutes_max": max(r["fit_minutes"] for r in rs),
                     # the first seed's fit again with the provenance hook paused (full-length rows)
                     "fit_minutes_untraced": next((r["fit_minutes_untraced"] for r in rs
                                                   if r.get("fit_minutes_untraced") is not None), None),
                     "train_images_per_s_mean": float(np.mean([r["train_images_per_s"] for r in rs]))}
    return out


def paired_differences(results):
    """Each full-length row minus ``recipe_default`` on the seeds both ran (:func:`paired_by_seed`)."""
    base = [r for r in results if r["name"] == "recipe_default"]
    paired = {name: paired_by_seed([r for r in results if r["name"] == name], base) for name in FULL[1:]}
    return {name: p for name, p in paired.items() if p is not None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--budget", type=float, default=10.0, help="minutes of training for the shared rows")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every row runs once per seed")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows (row, seed) already in the results file when its measured code is "
                             "unchanged, and add these")
    parser.add_argument("--name", default=None, help="results file name (default: recipe or recipe_quick)")
    parser.add_argument("--steps", action="store_true", help="only the step-time table (recipe_steps.md)")
    parser.add_argument("--rounds", type=int, default=5, help="--steps: rounds of timing every setting in turn")
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
    seeds = [int(s) for s in args.seeds.split(",")]
    out_name = args.name or ("recipe_quick" if args.quick else "recipe")
    todo = [(name, seed) for seed in seeds for name in names]  # a stopped run leaves whole seeds
    try:
        results = [r for r in mergeable_rows(out_name) if (r["name"], r["seed"]) not in todo] if args.merge else []
    except ValueError as err:
        parser.error(str(err))
    budgets = {r["budget_minutes"] for r in results if r.get("budget_minutes") is not None}
    if any(n in SHARED for n in names) and budgets - {args.budget}:  # shared rows compare at one budget
        parser.error(f"--budget {args.budget:g} differs from the merged file's shared rows ({budgets.pop():g} min)")
    gflops = machine_gflops()
    shared_speeds = [r.get("machine_gflops") for r in results if r["name"] in SHARED]
    if any(n in SHARED for n in names) and any(g is None or abs(g / gflops - 1) > 0.2 for g in shared_speeds):
        parser.error(f"the merged file's shared rows ran on a machine of another speed ({shared_speeds} GFLOP/s, "
                     f"now {gflops:.0f}); a wall-time budget compares only on one machine: re-run them too")
    if budgets and not any(n in SHARED for n in names):
        args.budget = budgets.pop()  # the note states the merged shared rows' budget
    step_costs = {}
    for name, seed in todo:
        params, note = ROWS[name]
        params = None if params is None else dict(params)
        backbone = "efficientnet_lite0" if params is None else params.pop("backbone", "efficientnet_lite0")
        image_size = size if params is None else params.pop("image_size", size)
        ext = CNNFeatureExtractor(backbone, image_size=image_size)
        epochs = None
        if name in SHARED:  # equal wall time: the budget over this row's measured cost per image
            aug = (params or {}).get("augment", Augmentation()) if params is not None else None
            crop = size if aug is None else aug.crop_size(size)
            blocks = 9 if params is None else {"all": 9, "auto": 9}.get(params.get("trainable_blocks", "auto"),
                                                                        params.get("trainable_blocks"))
            key = (backbone, crop, blocks, params is not None)
            if key not in step_costs:  # once per network shape: rows that differ only in
                # their hyper-parameters get the same epochs, not each its own timing noise
                step_costs[key] = step_seconds(backbone, crop, 32, blocks, channels_last=params is not None,
                                               steps=12)
            per_image = step_costs[key]
            epochs = max(1, int(args.budget * 60 / (per_image * len(ytr) * (1.0 if params is None else 0.9))))
        t = time.perf_counter()
        if params is None:
            predict, history = plain_loop(Xtr, ytr, size, epochs, seed)
            fit_s = time.perf_counter() - t
            best_epoch = epochs
        else:
            if epochs is not None:
                params["max_epochs"] = epochs
            clf = SoftmaxClassifier(extractor=ext, random_state=seed, **params).fit(Xtr, ytr)
            fit_s = time.perf_counter() - t
            # the fine-tuning epochs (after the head_epochs of linear probing on cached features)
            predict, history, best_epoch = clf.predict, clf.history_[-clf.resolved_param("max_epochs"):], clf.best_epoch_
        val = float(np.mean(predict(Xva) == yva))
        with TRACER.paused():  # predict ran traced on val just before
            t = time.perf_counter()
            test = float(np.mean(predict(Xte) == yte))
            ms = 1000 * (time.perf_counter() - t) / len(Xte)
        ips = float(np.median([h["n_samples"] / h["train_seconds"] for h in history]))
        untraced_minutes = None
        if params is not None and name not in SHARED and seed == seeds[0]:
            # the same fit again with the provenance hook paused, for its time: a seeded fit is
            # bit-reproducible, so it runs the code the traced fit recorded (and the same model)
            clear_feature_cache()  # cold, as the first seed's traced fit started
            with TRACER.paused():
                t = time.perf_counter()
                SoftmaxClassifier(extractor=CNNFeatureExtractor(backbone, image_size=image_size), random_state=seed,
                                  **params).fit(Xtr, ytr)
                untraced_minutes = (time.perf_counter() - t) / 60
        results.append({"name": name, "note": note, "backbone": backbone, "image_size": image_size,
                        "params": repr(params), "seed": seed,
                        "epochs": len(history), "best_epoch": best_epoch, "fit_minutes": fit_s / 60,
                        "fit_minutes_untraced": untraced_minutes,
                        "budget_minutes": args.budget if name in SHARED else None,
                        "train_images_per_s": ips, "val_accuracy": val, "test_accuracy": test,
                        "predict_ms_per_image": ms, "machine_gflops": gflops,
                        "loss_history": [h.get("loss") for h in history],
                        "lr_halvings": history[-1].get("lr_halvings", 0) if history else 0,
                        "date": time.strftime("%Y-%m-%d", time.gmtime())})
        print(results[-1], flush=True)
        order = {n: i for i, n in enumerate(ROWS)}
        results.sort(key=lambda r: (order[r["name"]], r["seed"]))
        rows = [(r["name"], r["backbone"].replace("efficientnet_", ""), r["seed"], f"{r['val_accuracy']:.3f}",
                 f"{r['test_accuracy']:.3f}", f"{r['fit_minutes']:.1f}", r["epochs"], f"{r['train_images_per_s']:.1f}",
                 f"{r['predict_ms_per_image']:.1f}",
                 f"{r['machine_gflops']:.0f}" if r.get("machine_gflops") else "-", r["note"]) for r in results]
        header = ("row", "backbone", "seed", "val acc", "test acc", "fit min", "epochs", "train img/s",
                  "predict ms/img", "GFLOP/s", "note")
        summ = summary(results)
        notes = (f"stanford_cars_a ({len(ytr)} train / {len(yva)} val / {len(yte)} test images), {size} px test size, "
                 f"2 CPU cores. Shared rows: {args.budget:g} min of training each (epochs = budget / the row's "
                 "measured step time), all on one machine (GFLOP/s: its float32 matmul speed when the row ran; "
                 "'-': not recorded, an earlier, slower machine). Nothing is chosen on test.")
        multi = {n: s for n, s in summ.items() if len(s["seeds"]) > 1}
        if multi:
            notes += "\n\nMean over seeds, 95 % Student-t interval of the mean:\n\n" + format_table(
                [(n, len(s["seeds"]), f"{100 * s['val_mean']:.1f} ± {100 * s['val_half_width']:.1f}",
                  f"{100 * s['test_mean']:.1f} ± {100 * s['test_half_width']:.1f}", f"{s['fit_minutes_max']:.1f}",
                  "-" if s.get("fit_minutes_untraced") is None else f"{s['fit_minutes_untraced']:.1f}")
                 for n, s in multi.items()],
                ("row", "seeds", "val acc %", "test acc %", "longest fit min", "fit min, untraced"))
            notes += ("\n\nFit minutes are timed with the provenance hook on (it records the code each fit runs); "
                      "'untraced': the first seed's fit run again with it paused (the same code: seeded fits are "
                      "bit-reproducible), for the time alone.")
        paired = paired_differences(results)
        if paired:
            notes += "\n\nPaired by seed against recipe_default (row minus default, points; 95 % Student-t):\n\n" + \
                format_table([(n, len(d["seeds"]), f"{100 * d['val_mean']:+.1f} ± {100 * d['val_half_width']:.1f}",
                               f"{100 * d['test_mean']:+.1f} ± {100 * d['test_half_width']:.1f}")
                              for n, d in paired.items()], ("row", "seeds", "val diff", "test diff"))
        for fast in ("recipe", "no_fixres"):
            if "plain_loop" in summ and fast in summ:
                a, b = summ[fast]["train_images_per_s_mean"], summ["plain_loop"]["train_images_per_s_mean"]
                crops = "its 0.8x FixRes crops" if fast == "recipe" else "crops at the test size, as the plain loop"
                notes += (f"\n\nTraining throughput, same model and batch size: {fast} ({crops}) {a:.1f} img/s vs "
                          f"plain loop {b:.1f} img/s = {a / b:.2f}x.")
        write_results(out_name, {"rows": results, "summary": summ, "paired": paired, "budget_minutes": args.budget,
                                 "image_size": size, "quick": args.quick}, rows, header, notes)


if __name__ == "__main__":
    main()
