"""Heads on frozen features, each tuned the same way on val (issues 22 and 19).

The issue's second impostor target: on frozen CNN features (EfficientNet-Lite0 with its
ImageNet weights, ``CNNFeatureExtractor(image_size=160)``, computed once), the loose
impostor head should reach at least the accuracy of a softmax head with the same 512-d
hidden layer ("ConvNet-extra" in the paper's Table 1), each with its main parameter
chosen by ``GridSearchCV`` on **val**:

- ``ImpostorClassifier(impostors="loose")`` over ``sigma`` in ``SIGMAS``;
- ``SoftmaxClassifier(embedding_dim=512)`` over its learning rate in ``LRS`` (the same
  number of candidates: the same tuning budget).

Beside them, with the same budget of three candidates, the plain feature-path defaults
against scikit-learn's linear baselines at their best settings (features standardised
first, as a user would): ``SoftmaxClassifier()`` over ``LRS``,
``LogisticRegression`` over ``C`` in ``CS`` and ``LinearSVC`` over ``C`` in ``CS_SVC``.

``GridSearchCV(cv=PredefinedSplit(...))`` fits each candidate on train and scores it on
val; ``refit=True`` then fits the chosen one on train + val, as a user of scikit-learn
would, and that model is scored on test. Every row runs once per ``--seeds`` seed (the
heads' initialisation and batch order; the features are the same); the table gives each
row's mean with a 95 % Student-t interval and loose minus softmax paired by seed.

    python benchmarks/impostor_frozen.py --quick   # 12 classes, 96 px: a few minutes
    python benchmarks/impostor_frozen.py           # 98 classes, 160 px, 3 seeds: about 10 min on 2 cores

The features are kept in ``--work`` (``features_<size>_<n classes>.npz``) and reused by a later run
with the same classes and size while the skfg code that extracted them is unchanged
(``ledger.parts.Parts``; the stamp then covers that code).
"""

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from _common import DATA, paired_by_seed, seed_summary, timed, write_results
from ledger.parts import Parts
from skfg import CNNFeatureExtractor, ImpostorClassifier, SoftmaxClassifier
from skfg.datasets import load_image_folder

SIGMAS = (0.3, 0.6, 1.0)
LRS = (1e-3, 3e-3, 1e-2)
CS = (0.01, 0.1, 1.0)
CS_SVC = (1e-5, 1e-4, 1e-3)  # LinearSVC is best at small C here (and slow to converge at large C)
ROWS = {
    "impostor_loose": (lambda seed: ImpostorClassifier(impostors="loose", random_state=seed), "sigma", SIGMAS),
    "softmax_512": (lambda seed: SoftmaxClassifier(embedding_dim=512, random_state=seed), "lr", LRS),
    "softmax": (lambda seed: SoftmaxClassifier(random_state=seed), "lr", LRS),
    "logistic_regression": (lambda seed: make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed)), "logisticregression__C", CS),
    "linear_svc": (lambda seed: make_pipeline(StandardScaler(), LinearSVC(dual=True, random_state=seed)),
                   "linearsvc__C", CS_SVC),
}
# row minus baseline, paired by seed
PAIRS = (("impostor_loose", "softmax_512"), ("softmax", "logistic_regression"), ("softmax", "linear_svc"))


def features(classes, size, work):
    """Frozen features and labels of train, val and test (cached in ``work`` while the code
    that extracted them is unchanged)."""
    path = work / f"features_{size}_{len(classes)}.npz"
    cache = {"features": path.name}
    parts = Parts(work, cache, resume=True, cache=True)
    if parts.get("features") == path.name and path.exists():
        saved = np.load(path)
        return [(saved[f"F{i}"], saved[f"y{i}"]) for i in range(3)], float(saved["seconds"])
    ext, data = CNNFeatureExtractor(image_size=size).fit(), []
    for split in ("train", "val", "test"):
        X, y = load_image_folder(DATA / "stanford_cars_a" / split)
        keep = np.isin(y, classes)
        data.append((X[keep], y[keep]))
    out, seconds = timed(lambda: [(ext.transform(X), y) for X, y in data],
                         warmup=lambda: ext.transform(data[0][0][:4]))
    np.savez(path, seconds=seconds, **{f"F{i}": F for i, (F, _) in enumerate(out)},
             **{f"y{i}": np.asarray(y, dtype=str) for i, (_, y) in enumerate(out)})  # not object: loads unpickled
    parts.put("features", path.name)
    return out, seconds


def search_on_val(estimator, param, grid, splits):
    """``GridSearchCV`` of ``estimator`` over ``param`` in ``grid``: each candidate fitted on
    train and scored on val (``PredefinedSplit``), the best refitted on train + val.
    Returns ``(search, seconds)``."""
    (Ftr, ytr), (Fva, yva) = splits[:2]
    search = GridSearchCV(estimator, {param: list(grid)}, cv=PredefinedSplit([-1] * len(ytr) + [0] * len(yva)),
                          refit=True)
    return timed(lambda: search.fit(np.concatenate([Ftr, Fva]), np.concatenate([ytr, yva])))


def frozen_setup(description):
    """The command line shared with ``open_set.py`` (``--quick``, ``--seeds``, ``--work``) and
    the frozen features it selects: ``(args, classes, size, splits, extract_s)``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 classes, 96 px")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="/tmp/skfg_impostor_frozen", help="where the features are kept")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    classes = sorted(set(load_image_folder(DATA / "stanford_cars_a" / "train")[1]))
    size = 160
    if args.quick:
        classes, size = classes[:12], 96
    splits, extract_s = features(classes, size, work)
    return args, classes, size, splits, extract_s


def run_row(name, seed, splits):
    """``GridSearchCV`` on val for one row and seed, refit on train + val, scored on test."""
    make, param, grid = ROWS[name]
    search, seconds = search_on_val(make(seed), param, grid, splits)
    Fte, yte = splits[2]
    return {"name": name, "seed": seed, "param": param, "chosen": search.best_params_[param],
            "val_accuracy": float(search.best_score_),  # the chosen candidate fitted on train, scored on val
            "val_scores": {str(v): float(s) for v, s in zip(grid, search.cv_results_["mean_test_score"])},
            "test_accuracy": float(search.score(Fte, yte)), "search_and_refit_s": seconds}


def main():
    args, classes, size, splits, extract_s = frozen_setup(__doc__)
    runs = []
    for seed in args.seeds:
        for name in ROWS:
            runs.append(run_row(name, seed, splits))
            print(runs[-1], flush=True)
    summary = {name: seed_summary([r for r in runs if r["name"] == name]) for name in ROWS}
    of = {name: [r for r in runs if r["name"] == name] for name in ROWS}
    paired = {f"{a}_minus_{b}": paired_by_seed(of[a], of[b]) for a, b in PAIRS}
    rows = [(r["name"], r["seed"], f"{r['param'].rsplit('__', 1)[-1]}={r['chosen']:g}",
             " / ".join(f"{s:.3f}" for s in r["val_scores"].values()), f"{r['val_accuracy']:.3f}",
             f"{r['test_accuracy']:.3f}", f"{r['search_and_refit_s']:.0f}") for r in runs]
    header = ("row", "seed", "chosen on val", "val per candidate", "val (chosen)", "test", "search + refit s")
    notes = [f"Frozen EfficientNet-Lite0 features (ImageNet weights, {size} px, {len(classes)} classes; "
             f"{len(splits[0][1])} train / {len(splits[1][1])} val / {len(splits[2][1])} test); GridSearchCV on val "
             f"(PredefinedSplit), refit on train + val; sigma in {SIGMAS}, lr in {LRS}, C in {CS} (LogisticRegression) "
             f"and {CS_SVC} (LinearSVC), after StandardScaler; seeds {args.seeds}."]
    for name, s in summary.items():
        notes.append(f"{name}: val {s['val_mean']:.3f} +- {s['val_half_width']:.3f}, "
                     f"test {s['test_mean']:.3f} +- {s['test_half_width']:.3f}")
    for (a, b), p in zip(PAIRS, paired.values()):
        if p is not None:
            notes.append(f"{a} minus {b}, paired by seed: test {100 * p['test_mean']:+.1f} +- "
                         f"{100 * p['test_half_width']:.1f} points (per seed "
                         f"{', '.join(f'{100 * d:+.1f}' for d in p['test_per_seed'])}), val "
                         f"{100 * p['val_mean']:+.1f} +- {100 * p['val_half_width']:.1f}")
    write_results("impostor_frozen" + ("_quick" if args.quick else ""),
                  {"runs": runs, "summary": summary, "paired": paired,
                   "paired_loose_minus_softmax": paired["impostor_loose_minus_softmax_512"], "image_size": size,
                   "n_classes": len(classes), "extract_s": extract_s, "sigmas": SIGMAS, "lrs": LRS, "cs": CS,
                   "cs_svc": CS_SVC},
                  rows, header, "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
