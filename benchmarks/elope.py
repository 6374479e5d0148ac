"""ELoPE's components on stanford_cars_a, an ablation like the paper's Table 5 in one run (issue 7).

Every row fine-tunes EfficientNet-Lite0 (ImageNet weights, 160 px, CPU) end to end with
the same budget: the last ``--blocks`` stages and a 512-d hidden layer before the softmax
(the paper's baselines have it too), up to ``--epochs`` epochs with early stopping on 10%
of ``train``; test accuracy on ``test``. By default without augmentation, so the frozen
stages run once per image (frozen-prefix cache) and a row takes about two minutes on 2
cores; ``--augment`` trains with random-resized crops and flips (about 8 minutes a row
for 5 epochs).

Rows: GAP, GMP, GKMP (K=4); GKMP + localization; GKMP + center loss; GKMP + L_w;
GKMP + L_w + L_b; + localization; + weighted averaging (eq. 4, the two-step schedule:
``--weighted-epochs`` more epochs that also train the K pooling weights, at lr/10).
The localization module (``ObjectCropper``) is trained with the GKMP row's fine-tuned
network as teacher, seeing 224 px images (7 x 7 maps; paper section 5), and crops train
and test images once.

Every row runs for each of ``--seeds`` (the classifier's seed: its initialisation, the
early-stopping split and the batch order); the localization rows crop with one cropper,
taught by the first seed's GKMP network. Each row is reported as mean +- 95 % t
half-width over the seeds and minus GAP paired by seed (``_common.paired_by_seed``).

Also measured: the added components' parameters, FLOPs (multiply-adds counted by
``torch.utils.flop_counter``) and batch-1 latency against the GAP model, timed
alternately image by image in the same loop, ``--timing-rounds`` rounds (best time per
image, and the ratio's range over the rounds alone). ``stanford_cars_a``'s images are already
cropped to the car, so the localization rows have nothing to remove here;
``benchmarks/localization.py`` measures the module where the object is small, on real
photographs with known boxes.

    python benchmarks/elope.py --quick   # 20 classes, 96 px, 2 epochs, 2 seeds: minutes
    python benchmarks/elope.py           # 98 classes, 160 px, 15 epochs, 3 seeds: about 75 min on 2 cores
    python benchmarks/elope.py --rows 0 1 2 ; python benchmarks/elope.py --resume   # in parts
    python benchmarks/elope.py --resume --cost-only   # the cost section again, on the kept models
    python benchmarks/elope.py --recipe --rows 0 2 6 --work /work/logs/elope_recipe   # on the recipe, in parts

``--recipe`` (issue 48, item 4) fits every row on the strong base instead: the recipe's
defaults (224 px, every stage trainable, augmentation, AdamW, its epochs and schedule),
each row keeping its 512-d hidden layer, pooling and loss; about seven minutes a fit on 2
cores, so it runs in parts (``--rows``, then ``--resume``) and only the rows that add the
paper's components one at a time (GAP, GKMP, + L_w, + L_b, + localization, + weighted). Its results go to
``results/elope_recipe.json``, with val accuracy beside test (a setting worth making an
option is chosen on val).

Fitted models and finished rows are kept in ``--work`` (``ledger.parts.Parts``), so ``--resume``
continues where a run stopped, with the same data and settings, while the skfg code they ran
is unchanged; the result's stamp covers the code every part ran.
"""

import argparse
import time


import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import (DATA, TRACER, alternating_ms, mergeable_rows, paired_by_seed, seed_summary, speedup_spread,
                     write_results)
from ledger.parts import Parts
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.backbones import build_backbone
from skfg.datasets import load_image_folder
from skfg.localization import ObjectCropper

# label, pooling, embedding_loss, localization, weighted averaging
ROWS = [
    ("GAP", "gap", None, False, False),
    ("GMP", "gmp", None, False, False),
    ("GKMP", "kmax", None, False, False),
    ("GKMP + localization", "kmax", None, True, False),
    ("GKMP + center loss", "kmax", "center", False, False),
    ("GKMP + L_w", "kmax", "within", False, False),
    ("GKMP + L_w + L_b", "kmax", "class_means", False, False),
    ("GKMP + L_w + L_b + localization", "kmax", "class_means", True, False),
    ("GKMP + L_w + L_b + localization + weighted", "kmax_weighted", "class_means", True, True),
]
# --recipe: the paper's components added one at a time (GMP and center loss, the paper's
# side rows, are left out: a fit costs ten times more on the recipe)
RECIPE_ROWS = [0, 2, 5, 6, 7, 8]


def load(split, n_classes):
    X, y = load_image_folder(DATA / "stanford_cars_a" / split)
    keep = np.isin(y, np.unique(y)[:n_classes])
    return X[keep], y[keep]


def flops(module, *inputs):
    """Multiply-adds of one forward pass (FlopCounterMode counts 2 FLOPs per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 classes, 96 px, 1 epoch")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--weighted-epochs", type=int, default=5, help="second step of weighted averaging")
    parser.add_argument("--augment", action="store_true", help="random-resized crops and flips (slower)")
    parser.add_argument("--blocks", type=int, default=2, help="trainable_blocks of every row")
    parser.add_argument("--tau", type=float, default=0.2, help="box threshold on cars (Table 2: 0.2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of every row (default 0 1 2; "
                        "quick: 0 1)")
    parser.add_argument("--n-timing", type=int, default=100, help="test images timed at batch 1")
    parser.add_argument("--rows", nargs="*", type=int, default=None,
                        help="fit only these rows (indices into ROWS) and stop; finish with --resume")
    parser.add_argument("--work", default=None, help="where fitted models and finished rows are kept "
                        "(default: /tmp/skfg_elope[_quick])")
    parser.add_argument("--resume", action="store_true", help="skip the rows already finished in --work")
    parser.add_argument("--cost-only", action="store_true",
                        help="re-measure only the cost section on the models a finished run left in --work; the "
                        "rows keep the values and provenance of results/elope.json (whose code must be unchanged)")
    parser.add_argument("--timing-rounds", type=int, default=5, help="rounds of the batch-1 timing (quick: 2)")
    parser.add_argument("--recipe", action="store_true",
                        help="every row at the recipe's defaults (224 px, all stages, augmentation, AdamW): "
                        "results/elope_recipe.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    n_classes, size, epochs = (20, 96, 2) if args.quick else (98, 160, args.epochs)
    if args.recipe and not args.quick:
        size, epochs = CNNFeatureExtractor().image_size, None  # None: the recipe's own epochs
    n_weighted = 1 if args.quick else args.weighted_epochs
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    name = "elope" + ("_recipe" if args.recipe else "") + ("_quick" if args.quick else "")
    (Xtr, ytr), (Xte, yte) = load("train", n_classes), load("test", n_classes)
    payload = {"dataset": "stanford_cars_a", "image_size": size, "backbone": "efficientnet_lite0", "device": "cpu",
               "n_train": len(ytr), "n_test": len(yte), "n_classes": n_classes, "epochs": epochs,
               "weighted_epochs": n_weighted, "trainable_blocks": None if args.recipe else args.blocks,
               "tau": args.tau, "augment": True if args.recipe else args.augment, "recipe": args.recipe,
               "seeds": seeds}
    Xva, yva = load("val", n_classes) if args.recipe else (None, None)
    if args.recipe:
        payload["n_val"] = len(yva)
    # finished rows and fitted models, reused with --resume while the skfg code they ran is unchanged
    parts = Parts(args.work or f"/tmp/skfg_{name}", dict(payload), args.resume)
    done = parts.get("rows", {})
    rows, results = [], []
    header = ("section", "method", "seed", "test acc", "fit s", "extra fit s", "predict ms/img", "note")

    def save(notes=""):
        payload["results"] = results
        write_results(name, payload, rows, header, notes=notes, rows_key="results")

    class Models(dict):
        """Fitted models of this run, loaded from ``parts`` when an earlier part fitted them."""

        def __missing__(self, key):
            model = parts.load(key)
            if model is None:
                raise KeyError(key)
            self[key] = model
            return self[key]

        def get(self, key, default=None):
            try:
                return self[key]
            except KeyError:
                return default

    models, crops = Models(), {}
    every = RECIPE_ROWS if args.recipe else range(len(ROWS))
    todo = every if args.rows is None else args.rows
    if args.cost_only:  # every row from the results file, checked against the run that fitted the models
        keys = [f"{i}:{seed}" for seed in seeds for i in every]
        kept = mergeable_rows(name, key="results")
        if not args.resume or any(k not in done for k in keys) or [
                {k: v for k, v in r.items() if k != "run"} for r in kept] != [done[k]["result"] for k in keys]:
            raise SystemExit(f"--cost-only needs --resume and a finished run in {parts.work} that produced "
                             f"results/{name}.json")
        results.extend(kept)
        rows.extend(tuple(done[k]["row"]) for k in keys)
        for k in keys:
            payload.update(done[k].get("payload", {}))
        todo = []
    for seed in seeds:
        for i in todo:
            key = f"{i}:{seed}"
            if key in done:
                results.append(done[key]["result"])
                rows.append(tuple(done[key]["row"]))
                payload.update(done[key].get("payload", {}))
                continue
            result, row = fit_row(i, seed, seeds[0], args, models, crops, parts, (Xtr, ytr, Xte, yte, Xva, yva), size,
                                  epochs, n_weighted, payload)
            results.append(result)
            rows.append(row)
            print(row, flush=True)
            done[key] = {"result": result, "row": row,
                         "payload": {"localization": payload["localization"]} if ROWS[i][3] else {}}
            parts.put("rows", done)
            save()

    if args.rows is not None:  # a part of the run: the cost section comes with --resume
        save()
        return

    # ---- cost of the added components (Table 3)
    backbone = build_backbone("efficientnet_lite0", "imagenet").eval()
    cost = {"backbone_multiply_adds": flops(backbone, torch.zeros(1, 3, size, size)),
            "backbone_parameters": sum(p.numel() for p in backbone.parameters()),
            "embedding_layer_parameters": 1280 * 512 + 512, "pool_weights": 4}
    if models.get("cropper") is not None:
        cost["cropper_parameters"] = int(models["cropper"].n_parameters_)
        cost["cropper_multiply_adds"] = float(models["cropper"].flops_)
    full = models.get(f"row{len(ROWS) - 1}_s{seeds[0]}")
    base = models.get(f"row0_s{seeds[0]}")
    if full is not None and base is not None:
        cropper = models["cropper"]
        X_time = Xte[: args.n_timing]
        rounds = 2 if args.quick else args.timing_rounds
        times = alternating_ms([base.predict, lambda x: full.predict(cropper.transform(x)),
                                lambda x: cropper.transform(x)], X_time, rounds, per_round=True)
        ms = times.min(0).mean(1)
        ratio, low, high = speedup_spread(times[:, [1, 0]])  # full / GAP time, and its range over the rounds
        cost.update(gap_ms_per_image=ms[0], full_ms_per_image=ms[1], cropper_ms_per_image=ms[2],
                    full_over_gap=ratio, full_over_gap_low=low, full_over_gap_high=high, timing_rounds=rounds,
                    n_timing=len(X_time))
        rows.append(("cost", "full model vs GAP, batch 1", "", "", "", "", f"{ms[1]:.2f} vs {ms[0]:.2f}",
                     f"x{ratio:.2f} time [rounds {low:.2f}-{high:.2f}]; the cropper alone {ms[2]:.2f} ms "
                     f"(decode + student + crop)"))
    if "cropper_multiply_adds" in cost:
        rows.append(("cost", "added multiply-adds", "", "", "", "", "",
                     f"cropper {cost['cropper_multiply_adds'] / 1e6:.1f} M + embedding 0.66 M vs backbone "
                     f"{cost['backbone_multiply_adds'] / 1e6:.0f} M at {size} px "
                     f"(+{(cost['cropper_multiply_adds'] + 0.66e6) / cost['backbone_multiply_adds']:.1%}); "
                     f"parameters: cropper {cost['cropper_parameters']:,}, pool weights 4"))
    payload["cost"] = cost

    payload["summary"], payload["paired_vs_gap"] = summarise(results)
    budget = ("the recipe's defaults (every stage trainable, augmentation, AdamW, its epochs)" if args.recipe else
              f"trainable_blocks={args.blocks}, up to {epochs} epochs, {'with' if args.augment else 'no'} augmentation")
    notes = [f"{n_classes} classes, {size} px, {budget} (+{n_weighted} epochs for weighted averaging), 512-d hidden "
             f"layer in every row; seeds {seeds}; test accuracy mean +- 95 % t half-width, and minus GAP paired by seed"
             + (" (val accuracy in the results file)" if args.recipe else "") + ":"]
    for label, *_ in ROWS:
        m = payload["summary"].get(label)
        p = payload["paired_vs_gap"].get(label)
        if m is not None:
            notes.append(f"{label}: {m['test_mean']:.3f} +- {m['test_half_width']:.3f}" + (
                f"; minus GAP {100 * p['test_mean']:+.1f} +- {100 * p['test_half_width']:.1f} points "
                f"(per seed {', '.join(f'{100 * d:+.1f}' for d in p['test_per_seed'])})" if p else ""))
    save("\n".join(f"- {n}" for n in notes))


def summarise(results):
    """Per row the test accuracy's mean and 95 % half-width over seeds, and each row minus
    GAP paired by seed (:func:`paired_by_seed`; ``None`` with fewer than two seeds)."""
    summary, paired = {}, {}
    gap = [r for r in results if r["method"] == "GAP"]
    parts = ("val", "test") if results and all("val_accuracy" in r for r in results) else ("test",)
    for label, *_ in ROWS:
        mine = [r for r in results if r["method"] == label]
        if mine:
            summary[label] = {**seed_summary(mine, parts=parts), "n_seeds": len(mine)}
            if label != "GAP":
                paired[label] = paired_by_seed(mine, gap, parts=parts)
    return summary, paired


def fit_row(i, seed, first_seed, args, models, crops, parts, data, size, epochs, n_weighted, payload):
    """Fit ROWS[i] with ``seed``: ``(result dict, table row)``; the fitted model is kept in
    ``models`` and ``parts``. The localization rows crop with one cropper, taught by
    ``first_seed``'s GKMP network (fitted on the first call, kept in ``crops``)."""
    Xtr, ytr, Xte, yte, Xva, yva = data
    label, pooling, loss, loc, weighted = ROWS[i]
    extra_s, A, B, V, note = 0.0, Xtr, Xte, Xva, ""
    if loc:
        if not crops:  # the teacher is the GKMP row's fine-tuned network (section 5)
            teacher = models.get(f"row2_s{first_seed}")
            if teacher is None:
                raise SystemExit(f"localization rows need the GKMP row (index 2) with seed {first_seed} in the run")
            t = time.perf_counter()
            cropper = models.get("cropper")
            if cropper is None:
                cropper = ObjectCropper(teacher=teacher, teacher_size=224, tau=args.tau, random_state=0).fit(Xtr)
                parts.dump("cropper", cropper)
            crops.update(train=cropper.transform(Xtr), test=cropper.transform(Xte), fit_s=time.perf_counter() - t,
                         val=None if Xva is None else cropper.transform(Xva))
            boxes = cropper.predict_boxes(Xte)
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            originals = np.array([np.prod(im.size) for im in _originals(Xte)], dtype=float)
            payload["localization"] = {
                "fit_and_crop_s": crops["fit_s"], "n_parameters": int(cropper.n_parameters_),
                "multiply_adds": float(cropper.flops_), "mean_kept_area_fraction": float(np.mean(areas / originals)),
                "share_cropped_below_90pct": float(np.mean(areas / originals < 0.9)),
            }
            models["cropper"] = cropper
        A, B, V, extra_s = crops["train"], crops["test"], crops["val"], crops["fit_s"]
        note = f"crops keep {payload['localization']['mean_kept_area_fraction']:.0%} of the image area on average"
    if args.recipe:  # the recipe's defaults; only what defines the row is set (and the epochs of --quick)
        budget = {} if epochs is None else {"max_epochs": epochs}
    else:
        budget = {"trainable_blocks": args.blocks, "max_epochs": epochs, "augment": args.augment}
    clf = SoftmaxClassifier(
        embedding_dim=512, embedding_loss=loss, extractor=CNNFeatureExtractor(image_size=size, pooling=pooling),
        kmax_weight_epochs=n_weighted if weighted else 0, random_state=seed, **budget,
    )
    t = time.perf_counter()
    clf.fit(A, ytr)
    fit_s = time.perf_counter() - t
    clf.predict(B[:8])  # traced, untimed: the code the timed predict runs
    with TRACER.paused():
        t = time.perf_counter()
        acc = float(np.mean(clf.predict(B) == yte))
        pred_ms = 1000 * (time.perf_counter() - t) / len(yte)
    parts.dump(f"row{i}_s{seed}", clf)  # ``models`` loads it from there when asked
    if weighted:
        note += ("; " if note else "") + "pool weights " + ", ".join(
            f"{w:.2f}" for w in clf.module_.pool_parameters()[0].detach().tolist())
    result = {"method": label, "seed": seed, "pooling": pooling, "embedding_loss": loss, "localization": loc,
              "weighted": weighted, "test_accuracy": acc, "fit_s": fit_s, "extra_fit_s": extra_s,
              "epochs": clf.n_iter_, "best_epoch": clf.best_epoch_, "predict_ms_per_image": pred_ms}
    if V is not None:
        result["val_accuracy"] = float(np.mean(clf.predict(V) == yva))
    row = ("cars", label, str(seed), f"{acc:.3f}", f"{fit_s:.0f}", f"{extra_s:.0f}" if loc else "",
           f"{pred_ms:.2f}", note)
    return result, list(row)


def _originals(X):
    from skfg.images import ImageSource

    source = ImageSource(X)
    return [source.load(i) for i in range(len(source))]


if __name__ == "__main__":
    main()
