"""Open set on stanford_cars_a: do the classifiers' scores flag classes never seen in training? (issue 19)

Impostor networks' section 4.2 compares the entropy of the predicted class distribution
on seen and unseen classes. Here with a signed, threshold-free measure:
:func:`skfg.metrics.open_set_auroc`, the probability that an unseen-class image scores
higher than a seen-class one (1: perfect, 0.5: chance, below 0.5: the score ranks unseen
images as *more* familiar, the wrong way round); the KS distance the paper uses is kept
beside it, but it is unsigned.

Protocol: frozen EfficientNet-Lite0 features (ImageNet weights, 160 px, computed once).
The first half of the classes (sorted names) are "seen": every head trains on their
training images only, its main parameter chosen by ``GridSearchCV`` on their **val**
images (``PredefinedSplit``, three candidates each, the same budget for every head), refit
on train + val. Test: the seen classes' test images against the unseen classes' test
images. Two scores per head: the entropy of ``predict_proba`` (``open_set_score``) and one
minus the largest probability. Heads: ``SoftmaxClassifier`` ("ConvNet"),
``SoftmaxClassifier(embedding_dim=512)`` ("ConvNet-extra"), and ``ImpostorClassifier``
with tied, fixed and loose impostors. Every head runs once per ``--seeds`` seed; each row
gets its mean AUROC with a 95 % Student-t interval, and its AUROC minus the softmax
entropy's, paired by seed.

    python benchmarks/open_set.py --quick   # 12 classes, 96 px: a minute or two
    python benchmarks/open_set.py           # 98 classes, 160 px, 3 seeds: about 10 minutes on 2 cores

The features are kept in ``--work`` (as ``benchmarks/impostor_frozen.py`` keeps them).
"""

import numpy as np

from _common import seed_interval, write_results
from impostor_frozen import LRS, SIGMAS, frozen_setup, search_on_val
from skfg import ImpostorClassifier, SoftmaxClassifier
from skfg.metrics import ks_distance, open_set_auroc

# name -> (estimator for a seed, the parameter GridSearchCV chooses, its candidates)
HEADS = {
    "softmax": (lambda seed: SoftmaxClassifier(random_state=seed), "lr", LRS),
    "softmax_512": (lambda seed: SoftmaxClassifier(embedding_dim=512, random_state=seed), "lr", LRS),
    "impostor_tied": (lambda seed: ImpostorClassifier(impostors="tied", random_state=seed), "sigma", SIGMAS),
    "impostor_fixed": (lambda seed: ImpostorClassifier(impostors="fixed", random_state=seed), "sigma", SIGMAS),
    "impostor_loose": (lambda seed: ImpostorClassifier(impostors="loose", random_state=seed), "sigma", SIGMAS),
}
SCORES = {
    "entropy": lambda model, F: model.open_set_score(F),
    "1 - max probability": lambda model, F: 1.0 - model.predict_proba(F).max(1),
}
REFERENCE = ("softmax", "entropy")  # what the paired differences are against


def run_head(name, seed, seen, unseen_test):
    """One head and seed: ``GridSearchCV`` on the seen classes' val, refit on train + val,
    then seen-class test accuracy and every score's AUROC / KS on seen vs unseen test."""
    make, param, grid = HEADS[name]
    search, seconds = search_on_val(make(seed), param, grid, seen)
    model = search.best_estimator_
    Fte, yte = seen[2]
    out = {"head": name, "seed": seed, "param": param, "chosen": search.best_params_[param],
           "val_accuracy": float(search.best_score_), "seen_test_accuracy": float(model.score(Fte, yte)),
           "fit_s": seconds, "scores": {}}
    for score, fn in SCORES.items():
        s_seen, s_unseen = fn(model, Fte), fn(model, unseen_test)
        out["scores"][score] = {"auroc": open_set_auroc(s_seen, s_unseen), "ks": ks_distance(s_seen, s_unseen),
                                "seen_mean": float(np.mean(s_seen)), "unseen_mean": float(np.mean(s_unseen))}
    return out


def summarise(runs):
    """Per (head, score): mean AUROC with its 95 % t half-width, and minus ``REFERENCE`` paired by seed."""
    ref = {r["seed"]: r["scores"][REFERENCE[1]]["auroc"] for r in runs if r["head"] == REFERENCE[0]}
    summary = []
    for name in HEADS:
        mine = [r for r in runs if r["head"] == name]
        for score in SCORES:
            values = [r["scores"][score]["auroc"] for r in mine]
            mean, half = seed_interval(values)
            diffs = [r["scores"][score]["auroc"] - ref[r["seed"]] for r in mine if r["seed"] in ref]
            d_mean, d_half = seed_interval(diffs) if diffs else (float("nan"), float("nan"))
            summary.append({"head": name, "score": score, "auroc_mean": mean, "auroc_half_width": half,
                            "auroc_per_seed": values, "minus_reference_mean": d_mean,
                            "minus_reference_half_width": d_half, "minus_reference_per_seed": diffs,
                            "seen_test_accuracy_mean": float(np.mean([r["seen_test_accuracy"] for r in mine]))})
    return summary


def main():
    args, classes, size, splits, extract_s = frozen_setup(__doc__)
    seen_classes = classes[: len(classes) // 2]
    seen = [(F[np.isin(y, seen_classes)], y[np.isin(y, seen_classes)]) for F, y in splits]
    Fte, yte = splits[2]
    unseen_test = Fte[~np.isin(yte, seen_classes)]
    runs = []
    for seed in args.seeds:
        for name in HEADS:
            runs.append(run_head(name, seed, seen, unseen_test))
            print({k: v for k, v in runs[-1].items() if k != "scores"},
                  {s: round(v["auroc"], 3) for s, v in runs[-1]["scores"].items()}, flush=True)
    summary = summarise(runs)
    rows = [(s["head"], s["score"], f"{100 * s['seen_test_accuracy_mean']:.1f}",
             f"{s['auroc_mean']:.3f} ± {s['auroc_half_width']:.3f}",
             " ".join(f"{v:.3f}" for v in s["auroc_per_seed"]),
             "" if (s["head"], s["score"]) == REFERENCE else
             f"{s['minus_reference_mean']:+.3f} ± {s['minus_reference_half_width']:.3f}") for s in summary]
    header = ("head", "novelty score", "seen test acc %", "AUROC (95 % t)", "AUROC per seed",
              "minus softmax entropy (paired)")
    per_run = [(r["head"], r["seed"], f"{r['param']}={r['chosen']:g}", f"{r['val_accuracy']:.3f}",
                *(f"{r['scores'][s]['auroc']:.3f} / KS {r['scores'][s]['ks']:.3f} / "
                  f"{r['scores'][s]['seen_mean']:.2f} vs {r['scores'][s]['unseen_mean']:.2f}" for s in SCORES))
               for r in runs]
    notes = (f"Frozen EfficientNet-Lite0 features ({size} px). Seen: {len(seen_classes)} classes "
             f"({len(seen[0][1])} train / {len(seen[1][1])} val / {len(seen[2][1])} test images); unseen: the other "
             f"{len(classes) - len(seen_classes)} classes' {len(unseen_test)} test images. Each head's parameter "
             f"chosen by GridSearchCV on the seen classes' val (sigma in {SIGMAS}, lr in {LRS}), refit on train + val; "
             f"seeds {args.seeds}. AUROC: the probability that an unseen-class test image scores higher than a "
             "seen-class one (0.5 chance; below 0.5 the wrong way round). The paired column: AUROC minus the "
             "softmax entropy's AUROC of the same seed, mean and 95 % Student-t half-width.\n\n"
             "Per run (AUROC / KS distance / mean score seen vs unseen):\n\n"
             + "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in
                         [("head", "seed", "chosen on val", "val acc", *SCORES), ("---",) * (4 + len(SCORES))]
                         + per_run))
    write_results("open_set" + ("_quick" if args.quick else ""),
                  {"runs": runs, "summary": summary, "reference": list(REFERENCE), "image_size": size,
                   "n_classes": len(classes), "seen_classes": len(seen_classes), "extract_s": extract_s,
                   "sigmas": SIGMAS, "lrs": LRS},
                  rows, header, notes)


if __name__ == "__main__":
    main()
