"""Impostor networks end to end on the fine-tuning recipe's base (issue 22), against softmax.

Every row fine-tunes ``ImpostorClassifier(extractor=CNNFeatureExtractor())`` (loose
impostors, 512-d embedding) on the train split of ``stanford_cars_a`` with the recipe's
shared ingredients (all stages, linear probing first, warm-up then cosine, FixRes crops,
frozen BatchNorm, the divergence guard) and one candidate's optimiser, ``sigma`` and
impostor learning rate; it reports val and test accuracy. The softmax rows it compares
against are not refitted: they are read from ``results/recipe.json`` (same split, same
epochs, same seeds), and the stale-results check keeps both files on current code.

- ``--epochs N`` (selection): every candidate at N fine-tuning epochs, seed 0; compared
  on **val** with the recipe rows of the shared budget that trained N epochs.
- ``--epochs 0`` (default, full length): the recipe's 22 epochs; ``--rows`` the
  candidate(s) chosen on val, ``--seeds 0,1,2``; paired by seed with ``recipe_default``
  (difference per seed and a 95 % Student-t interval).

    python benchmarks/impostor_recipe.py --quick                  # 12 classes, 64 px, 2 epochs
    python benchmarks/impostor_recipe.py --epochs 7               # selection, ~25 min
    python benchmarks/impostor_recipe.py --rows adamw_s0.3 --seeds 0,1,2 --merge   # ~45 min
    python benchmarks/impostor_recipe.py --epochs 7 --merge \
        --rows adamw_s0.3_smooth0.1,adamw_s0.6to0.3,adamw_s0.3_implr1   # schedule ideas, ~15 min
    python benchmarks/impostor_recipe.py --render   # the table again, e.g. after recipe.json gained rows
"""

import argparse
import json
import time

import numpy as np
import torch

from _common import DATA, RESULTS, format_table, mergeable_rows, paired_by_seed, write_results
from skfg import CNNFeatureExtractor, ImpostorClassifier
from skfg.datasets import load_image_folder
from skfg.losses import class_log_proba, exclude_self, rbf_log_kernel, weighted_finite_mean



class ScheduleVariant(ImpostorClassifier):
    """Two ideas of issue 22 tried here, not in skfg: ``smoothing``, label smoothing of the
    RBF vote (the softmax recipe smooths by 0.1; impostors train without it), and
    ``sigma_start``, sigma annealed geometrically from ``sigma_start`` to ``sigma`` over the
    fine-tuning epochs (the head epochs at ``sigma_start``; prediction at ``sigma``).
    Loose impostors only; the sum runs over every impostor (``n_neighbors=None``).
    """

    def __init__(self, smoothing=0.0, sigma_start=None, **params):
        super().__init__(**params)
        self.smoothing = smoothing
        self.sigma_start = sigma_start

    def _train(self, ctx, max_epochs, signature, **kw):
        self._phase = (max_epochs, signature.endswith(":head"))
        self._sigma_now = self.sigma_start or self.sigma
        return super()._train(ctx, max_epochs, signature, **kw)

    def _epoch_start(self, ctx, epoch):
        super()._epoch_start(ctx, epoch)
        n_epochs, head = self._phase
        if self.sigma_start and not head:
            self._sigma_now = self.sigma_start * (self.sigma / self.sigma_start) ** (epoch / max(1, n_epochs - 1))

    def _training_loss(self, ctx, batch):
        # eq. (6) with the NCA term smoothed: (1 - e) * -log p(l_i | x_i) + e * mean_l -log p(l | x_i)
        x, t, w, rows = batch
        aux, emb = ctx.aux, ctx.data.forward(ctx.net, x)
        own, impostors = aux.own[rows], aux.positions()
        lk = exclude_self(rbf_log_kernel(torch.cdist(emb, impostors).pow(2), self._sigma_now, aux.log_weights), own)
        log_p = class_log_proba(lk, aux.labels, aux.n_classes)
        loss = -(1 - self.smoothing) * log_p.gather(1, t[:, None]).squeeze(1) \
            - self.smoothing * log_p.clamp_min(-30).mean(1)
        gap = ((emb - impostors[own.clamp_min(0)]) ** 2).sum(1).to(loss.dtype) * (own >= 0)
        return weighted_finite_mean(loss + self.attachment * gap, w)


SGD = dict(optimizer="sgd", lr=0.01, backbone_lr_scale=2 / 3, weight_decay=1e-4)
ADAMW = dict(optimizer="adamw", lr=3e-3, backbone_lr_scale=2 / 3, weight_decay=0.05)  # recipe.json's "adamw" row
RECIPE = dict(head_epochs=10, warmup_epochs=1, divergence_guard=1.5, embedding_dim=512)
# name -> (ImpostorClassifier parameters, note)
ROWS = {
    "defaults": ({}, "ImpostorClassifier's fine-tuning defaults (Adam 1e-3, backbone x0.1, no head epochs)"),
    "sgd_s0.3_fast": ({**RECIPE, **SGD, "sigma": 0.3, "impostor_lr_scale": 30.0},
                      "softmax recipe's SGD; impostors at 30x lr"),
    "sgd_s0.6_fast": ({**RECIPE, **SGD, "sigma": 0.6, "impostor_lr_scale": 30.0},
                      "softmax recipe's SGD; impostors at 30x lr"),
    "sgd_s0.45": ({**RECIPE, **SGD, "sigma": 0.45}, "softmax recipe's SGD; impostors at the head's lr"),
    "adamw_s0.3": ({**RECIPE, **ADAMW, "sigma": 0.3, "impostor_lr_scale": 0.3},
                   "AdamW 3e-3, wd 0.05; impostors at 0.3x lr"),
    "adamw_s0.6": ({**RECIPE, **ADAMW, "sigma": 0.6, "impostor_lr_scale": 0.3},
                   "AdamW 3e-3, wd 0.05; impostors at 0.3x lr"),
    # below the smallest sigma tried first (0.3, the best of four), after the equal-optimiser comparison
    "adamw_s0.2": ({**RECIPE, **ADAMW, "sigma": 0.2, "impostor_lr_scale": 0.3},
                   "AdamW 3e-3, wd 0.05; impostors at 0.3x lr; a fifth candidate, tried after the others"),
    # issue 22's schedule ideas on the chosen row, after the equal-optimiser comparison (ScheduleVariant)
    "adamw_s0.3_smooth0.1": ({**RECIPE, **ADAMW, "sigma": 0.3, "impostor_lr_scale": 0.3, "smoothing": 0.1},
                             "adamw_s0.3 with the vote label-smoothed by 0.1 (as the softmax recipe)"),
    "adamw_s0.6to0.3": ({**RECIPE, **ADAMW, "sigma": 0.3, "impostor_lr_scale": 0.3, "sigma_start": 0.6},
                        "adamw_s0.3 with sigma annealed 0.6 -> 0.3 over the fine-tuning epochs"),
    "adamw_s0.3_implr1": ({**RECIPE, **ADAMW, "sigma": 0.3, "impostor_lr_scale": 1.0},
                          "adamw_s0.3 with the impostors at the head's lr (1x)"),
}
VARIANT_PARAMS = {"smoothing", "sigma_start"}  # rows with these are ScheduleVariant fits


# recipe.json's shared-budget rows to compare with at a short budget: the recipe, the
# recipe without label smoothing (impostors have none) and with the candidates' AdamW
SHORT_COMPARATORS = ("recipe", "no_label_smoothing", "adamw")


# recipe.json's full-length rows to pair with: the headline (SGD) and the headline with
# the chosen impostor row's optimiser (AdamW), so the gain is also read at an equal optimiser
FULL_COMPARATORS = ("recipe_default", "default_adamw")


def softmax_rows(epochs):
    """recipe.json's softmax rows at ``epochs`` fine-tuning epochs (0: ``FULL_COMPARATORS``)."""
    rows = json.loads((RESULTS / "recipe.json").read_text())["rows"]
    if epochs == 0:
        return [r for r in rows if r["name"] in FULL_COMPARATORS]
    return [r for r in rows if r["epochs"] == epochs and r["name"] in SHORT_COMPARATORS]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs; 0: the recipe's (22)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--merge", action="store_true", help="add to the results file (same code only)")
    parser.add_argument("--render", action="store_true",
                        help="no fits: rewrite the table from the results file (e.g. after recipe.json gained rows)")
    args = parser.parse_args()
    root = DATA / "stanford_cars_a"
    splits = [load_image_folder(root / s) for s in ("train", "val", "test")]
    size = CNNFeatureExtractor().image_size
    if args.quick:
        keep = sorted(set(splits[0][1]))[:12]
        splits = [(X[np.isin(y, keep)], y[np.isin(y, keep)]) for X, y in splits]
        size, args.epochs = 64, 2
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits
    names = list(ROWS) if args.rows is None else args.rows.split(",")
    if set(names) - set(ROWS):
        parser.error(f"unknown rows {sorted(set(names) - set(ROWS))}; valid: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = "impostor_recipe_quick" if args.quick else "impostor_recipe"
    todo = [] if args.render else [(n, s, args.epochs) for s in seeds for n in names]
    try:
        results = [r for r in mergeable_rows(out) if (r["name"], r["seed"], r["epochs_arg"]) not in todo] \
            if args.merge or args.render else []
    except ValueError as err:
        parser.error(str(err))
    if args.render:
        write(out, results, args.quick, (len(ytr), len(yva), len(yte)), size)
    for name, seed, epochs in todo:
        params, note = ROWS[name]
        params = dict(params)
        if epochs:
            params["max_epochs"] = epochs
        base = {k: v for k, v in params.items() if k not in VARIANT_PARAMS}
        cls = ScheduleVariant if VARIANT_PARAMS & set(params) else ImpostorClassifier
        clf = cls(extractor=CNNFeatureExtractor(image_size=size), random_state=seed, **params)
        # (ScheduleVariant's **params hides ImpostorClassifier's parameters from get_params)
        n_epochs = ImpostorClassifier(extractor=clf.extractor, **base).resolved_param("max_epochs")
        t = time.perf_counter()
        clf.fit(Xtr, ytr)
        fit_min = (time.perf_counter() - t) / 60
        history = clf.history_
        results.append({"name": name, "note": note, "params": repr(params), "seed": seed, "epochs_arg": epochs,
                        "epochs": n_epochs, "fit_minutes": fit_min,
                        "val_accuracy": float(clf.score(Xva, yva)), "test_accuracy": float(clf.score(Xte, yte)),
                        "lr_halvings": history[-1].get("lr_halvings", 0) if history else 0,
                        "loss_history": [h.get("loss") for h in history]})
        print(results[-1], flush=True)
        write(out, results, args.quick, (len(ytr), len(yva), len(yte)), size)


def write(out, results, quick, sizes, size):
    order = {n: i for i, n in enumerate(ROWS)}
    results.sort(key=lambda r: (r["epochs_arg"] == 0, r["epochs_arg"], order[r["name"]], r["seed"]))
    rows = [(r["name"], r["epochs"], r["seed"], f"{r['val_accuracy']:.3f}", f"{r['test_accuracy']:.3f}",
             f"{r['fit_minutes']:.1f}", r["lr_halvings"], r["note"]) for r in results]
    softmax = {}
    for epochs in sorted({r["epochs_arg"] for r in results}):
        if not quick:
            softmax[epochs] = softmax_rows(epochs)
        for s in softmax.get(epochs, []):
            rows.append((f"softmax: {s['name']} (recipe.json)", s["epochs"], s["seed"], f"{s['val_accuracy']:.3f}",
                         f"{s['test_accuracy']:.3f}", f"{s['fit_minutes']:.1f}", s.get("lr_halvings", 0),
                         "SoftmaxClassifier, " + s["note"]))
    header = ("row", "epochs", "seed", "val acc", "test acc", "fit min", "lr halvings", "note")
    notes = (f"stanford_cars_a ({sizes[0]} train / {sizes[1]} val / {sizes[2]} test images), {size} px, 2 CPU cores; "
             "loose impostors, 512-d embedding, linear probing for 10 epochs first, warm-up, cosine, "
             "divergence guard 1.5; the softmax rows are read from recipe.json. Choices on val only.")
    paired = []
    for against in FULL_COMPARATORS:
        base = [s for s in softmax.get(0, []) if s["name"] == against]
        for name in ROWS:
            p = paired_by_seed([r for r in results if r["name"] == name and r["epochs_arg"] == 0], base)
            if p is not None:
                paired.append({"name": name, "against": against, **p})
    if paired:
        notes += "\n\nPaired by seed with the softmax rows at full length (impostor minus softmax, points; 95 % Student-t):\n\n"
        notes += format_table([(p["name"], p["against"], ",".join(map(str, p["seeds"])),
                                " ".join(f"{100 * v:+.1f}" for v in p["test_per_seed"]),
                                f"{100 * p['val_mean']:+.1f} ± {100 * p['val_half_width']:.1f}",
                                f"{100 * p['test_mean']:+.1f} ± {100 * p['test_half_width']:.1f}")
                               for p in paired],
                              ("row", "against", "seeds", "test diff per seed", "val diff", "test diff"))
    write_results(out, {"rows": results, "paired": paired, "image_size": size, "quick": quick}, rows, header, notes)


if __name__ == "__main__":
    main()
