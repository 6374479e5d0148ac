"""Low-shot learning by weight imprinting on stanford_cars_a (imprinted-weights Tables 1-2, Fig. 6).

Base = the first 49 classes with all their training images; novel = the other 49 with
n in {1, 2, 5, 10, 20} exemplars (capped by what a class has), 3 random draws each. On
frozen default-backbone features (160 px). Rows: Rand-noFT, Imprinting, Rand+FT,
Imprinting+FT, AllClassJoint, and the nearest neighbour over all exemplars (ours, Fig. 6's
setting with the base classes' images as well). Also the paper's novel-only protocol (novel
images classified among the novel classes only): the imprinted templates, with the paper's
rule and calibrated (the default), and the nearest neighbour among the novel exemplars.
Imprinting+Aug needs images (``extractor=``) and is not part of the frozen-feature run.

``--e2e`` runs it end to end instead (``results/imprinting_e2e.*``), on the make-disjoint
split of issue 48 (``make_disjoint.py``'s halves: base = the 50 classes of the makes AM
General to Buick, novel = the 48 of the other makes; n in {1, 2, 5, 10}, 3 draws), scored
on val (for choices) and test: the base model is ``ImprintedClassifier(extractor=
CNNFeatureExtractor())`` with the fine-tuning recipe (``--e2e-blocks`` / ``--e2e-epochs``
override it), then Rand-noFT, Imprinting with the paper's rule, the mean calibration
(``imprint_whitening=0``) and the default (whitened), Imprinting+Aug (``--aug`` random
crops per exemplar), Imprinting+FT and Rand+FT at n in {1, 5} (each start's learning rate
and epochs chosen on val from the same candidates, ``FT_CANDIDATES``, among them the
paper's 10x rate for the new layers), and the nearest neighbour among the novel exemplars
(novel-only protocol). Besides all-class and novel accuracy it reports the share of the
base model's accuracy on the old classes that imprinting keeps.

    python benchmarks/imprinting.py --quick   # n in {1, 5}, 1 draw
    python benchmarks/imprinting.py           # full
    python benchmarks/imprinting.py --e2e     # end to end (about an hour on 2 cores)
    python benchmarks/imprinting.py --e2e --resume --work /work/logs/imprinting_e2e  # stop and go on

``--e2e`` keeps its finished parts (the base model, each fine-tuning choice, each draw)
in ``--work`` (``ledger.parts.Parts``); ``--resume`` goes on from them while the skfg code they
ran is unchanged (else it starts afresh), and the result's stamp covers the code every part
ran (each part's trace is kept with it).
"""

import argparse
import io
import json
import time

import joblib
import numpy as np
import torch
from torch import nn

from _common import DATA, TRACER, timed, write_results
from ledger.parts import Parts
from make_disjoint import make_halves
from skfg import CNNFeatureExtractor, ImprintedClassifier, SoftmaxClassifier
from skfg.datasets import load_image_folder, low_shot_split
from skfg.index import NearestNeighborIndex


def copy(est):
    buf = io.BytesIO()
    joblib.dump(est, buf)
    buf.seek(0)
    return joblib.load(buf)


def unit(A):
    """The rows of ``A`` scaled to unit L2 norm."""
    return A / np.linalg.norm(A, axis=1, keepdims=True)


def nearest_label(E, W, labels):
    """For each row of ``E``, the label of the row of ``W`` with the largest cosine."""
    return np.asarray(labels)[np.argmax(unit(E) @ unit(np.asarray(W, dtype=np.float64)).T, 1)]


def randomise_novel(clf, seed):
    """Rand-noFT: Xavier-uniform random templates for the imprinted (novel) classes."""
    head = clf.module_.head
    w = head.weight.detach().clone()
    novel = torch.as_tensor(clf.imprint_counts_ > 0)
    g = torch.Generator().manual_seed(seed)
    bound = float(np.sqrt(6.0 / (w.shape[0] + w.shape[1])))
    w[novel] = (torch.rand(int(novel.sum()), w.shape[1], generator=g) * 2 - 1) * bound
    head.weight = nn.Parameter(w)
    return clf


def summarise(runs, methods, shots, parts=(("novel classes", 1), ("all classes", 0))):
    """Table rows and JSON records (mean ± std over draws) of ``runs[(method, n)] = [(all, novel), ...]``.

    ``parts`` names the positions of each run's tuple. A method measured at only some n (or
    parts: NaN) leaves the other cells empty; one never measured has no row.
    """
    rows, results = [], []
    for part, j in parts:
        for m in methods:
            cells = []
            for n in shots:
                v = np.array([r[j] for r in runs.get((m, n), [])], dtype=float)
                v = v[~np.isnan(v)]
                cells.append(f"{100 * v.mean():.1f} ± {100 * v.std():.1f}" if len(v) else "")
                if len(v):
                    results.append({"method": m, "n": n, "part": part, "accuracy_mean": float(v.mean()),
                                    "accuracy_std": float(v.std()), "draws": v.tolist()})
            if any(cells):
                rows.append((part, m, *cells))
    return rows, results


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ft-epochs", type=int, nargs="+", default=[10, 40],
                        help="fine-tuning budgets, each its own Rand+FT / Imprinting+FT rows")
    parser.add_argument("--cache", default=True, help="feature cache: a directory to reuse features across runs")
    parser.add_argument("--e2e", action="store_true", help="the end-to-end protocol (results/imprinting_e2e.*)")
    parser.add_argument("--e2e-epochs", type=int, default=None, help="base epochs (default: the recipe's)")
    parser.add_argument("--e2e-blocks", type=int, default=None, help="trainable stages (default: the recipe's)")
    parser.add_argument("--e2e-no-ft", action="store_true", help="without the Imprinting+FT / Rand+FT rows")
    parser.add_argument("--aug", type=int, default=5, help="random crops per exemplar for Imprinting+Aug")
    parser.add_argument("--work", default=None, help="--e2e: where finished parts are kept "
                        "(default /tmp/skfg_imprinting_e2e[_quick])")
    parser.add_argument("--resume", action="store_true", help="--e2e: go on from the parts kept in --work")
    args = parser.parse_args()
    root = DATA / "stanford_cars_a"
    if args.e2e:
        return end_to_end(args, root)
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    ext = CNNFeatureExtractor(image_size=160, cache=args.cache).fit()
    Ftr, Fte = ext.transform(Xtr), ext.transform(Xte)
    shots, draws = ((1, 5), 1) if args.quick else ((1, 2, 5, 10, 20), 3)
    if args.quick:
        args.ft_epochs = sorted({min(e, 3) for e in args.ft_epochs})
    classes = np.unique(ytr)
    n_base = len(classes) // 2
    novel_test = ~np.isin(yte, classes[:n_base])
    base_idx, _ = low_shot_split(ytr, n_base, 1, random_state=0)
    base, base_fit_s = timed(lambda: ImprintedClassifier(random_state=0).fit(Ftr[base_idx], ytr[base_idx]))

    novel_classes = classes[n_base:]

    def scores(model_predict):
        pred = model_predict(Fte)
        return float((pred == yte).mean()), float((pred[novel_test] == yte[novel_test]).mean()), np.nan

    def model_scores(model):
        """All classes, novel classes, and novel-only: the novel images among the novel
        templates only (the paper's protocol, section 6.1.1)."""
        all_acc, novel_acc, _ = scores(model.predict)
        rows = np.isin(model.classes_, novel_classes)
        only = nearest_label(model.transform(Fte[novel_test]), np.asarray(model.class_weights_)[rows],
                             model.classes_[rows])
        return all_acc, novel_acc, float((only == yte[novel_test]).mean())

    runs = {}
    imprint_ms = []
    for n in shots:
        for draw in range(draws):
            _, novel_idx = low_shot_split(ytr, n_base, n, random_state=draw)
            Fn, yn = Ftr[novel_idx], ytr[novel_idx]
            res = {}
            imp = copy(base).imprint(Fn, yn)
            res["Imprinting"] = model_scores(imp)
            res["Imprinting (paper rule)"] = model_scores(copy(base).set_params(calibrate_imprints=False)
                                                          .imprint(Fn, yn))
            # time to imprint one class from its exemplars (features given: the CNN excluded)
            one = copy(base)
            c0 = yn == yn[0]
            with TRACER.paused():  # imprint ran traced just above
                t = time.perf_counter()
                one.imprint(Fn[c0], yn[c0])
                imprint_ms.append(1000 * (time.perf_counter() - t))
            res["Rand-noFT"] = scores(randomise_novel(copy(imp), draw).predict)
            for ep in args.ft_epochs:  # the same fine-tuning (default fine_tune_lr) from both starts
                tuned = copy(base).set_params(fine_tune_epochs=ep).partial_fit(Fn, yn)
                res[f"Imprinting+FT ({ep} ep)"] = model_scores(tuned)
                rand = randomise_novel(copy(imp), draw).set_params(fine_tune_epochs=ep)
                rand.partial_fit(Fn, yn, imprint=False)  # the fine-tuning step, from random novel templates
                res[f"Rand+FT ({ep} ep)"] = model_scores(rand)
            joint_X = np.r_[Ftr[base_idx], Fn]
            joint_y = np.r_[ytr[base_idx], yn]
            # AllClassJoint: a plain softmax classifier on base + novel, novel oversampled
            counts = {c: (joint_y == c).sum() for c in np.unique(joint_y)}
            reps = np.array([max(1, round(24 / counts[c])) for c in joint_y])
            joint = SoftmaxClassifier(random_state=draw).fit(np.repeat(joint_X, reps, 0), np.repeat(joint_y, reps))
            res["AllClassJoint"] = scores(joint.predict)
            # Fig. 6: nearest neighbour (cosine) over every exemplar, in the base model's embedding
            E = base.transform(joint_X)
            nn_index = NearestNeighborIndex("exact").fit(E / np.linalg.norm(E, axis=1, keepdims=True))
            q = base.transform(Fte)
            _, nearest = nn_index.search(q / np.linalg.norm(q, axis=1, keepdims=True), 1)
            res["Nearest neighbour (all exemplars)"] = scores(lambda F, nn_=nearest: joint_y[nn_[:, 0]])
            # the paper's protocol: novel images, nearest neighbour among the novel exemplars only
            only = nearest_label(q[novel_test], base.transform(Fn), yn)
            res["Nearest neighbour (novel exemplars)"] = (np.nan, np.nan, float((only == yte[novel_test]).mean()))
            for k, v in res.items():
                runs.setdefault((k, n), []).append(v)
            print(n, draw, {k: "/".join(f"{a:.3f}" for a in v) for k, v in res.items()}, flush=True)

    methods = ["Rand-noFT", "Imprinting", "Imprinting (paper rule)",
               *[f"{m} ({ep} ep)" for ep in args.ft_epochs for m in ("Rand+FT", "Imprinting+FT")],
               "AllClassJoint", "Nearest neighbour (all exemplars)", "Nearest neighbour (novel exemplars)"]
    rows, results = summarise(runs, methods, shots,
                              parts=(("novel classes", 1), ("all classes", 0), ("novel only", 2)))
    write_results(
        "imprinting" + ("_quick" if args.quick else ""),
        {"dataset": "stanford_cars_a", "image_size": 160, "features": "frozen efficientnet_lite0 GAP",
         "n_base_classes": int(n_base), "n_novel_classes": int(len(classes) - n_base), "draws": draws,
         "fine_tune_epochs": args.ft_epochs, "fine_tune_lr": base.fine_tune_lr, "base_fit_seconds": base_fit_s,
         "imprint_one_class_ms": {"median": float(np.median(imprint_ms)), "max": float(np.max(imprint_ms))},
         "results": results},
        rows,
        ("test set", "method", *[f"n={n}" for n in shots]),
        notes=(f"Top-1 test accuracy (%), mean ± std over {draws} draws of the novel exemplars; base model "
               f"fitted once on {len(base_idx)} images of {n_base} classes. Imprinting one class (features "
               f"given, CNN excluded): median {np.median(imprint_ms):.2f} ms, max {np.max(imprint_ms):.2f} ms. "
               f"Fine-tuning: {' or '.join(map(str, args.ft_epochs))} epochs (ep) at lr {base.fine_tune_lr:g} on "
               "base + novel data, classes oversampled to equal counts. Imprinting: calibrated templates (the "
               "default); the paper rule: normalize(mean embedding). 'novel only': the novel classes' test images "
               "classified among the novel classes only (the paper's protocol); the other parts classify among all "
               "classes. Nearest neighbour (all exemplars, ours): base training images and novel exemplars. "
               "Imprinting+Aug needs images and is not part of this frozen-feature run."),
    )


FT_CANDIDATES = {  # (fine_tune_lr, epochs); the trunk trains at fine_tune_lr * backbone_lr_scale (0.1)
    "lr 1e-4, 2 ep": (1e-4, 2),  # the estimator's default rates: templates 1e-4, trunk 1e-5
    "lr 1e-3, 2 ep": (1e-3, 2),  # the paper's scheme: pre-trained layers 1e-4, new layers 10x that
    "lr 1e-3, 4 ep": (1e-3, 4),
}


def end_to_end(args, root):
    """The protocol with the CNN trained end to end and imprinting from images, on the
    make-disjoint split (``make_disjoint.py``'s halves), scored on val (choices) and test."""
    halves, makes = make_halves(root)
    data = {split: load_image_folder(root / split) for split in ("train", "val", "test")}
    base_classes = np.array(sorted(halves["choose"]))
    novel_classes = np.array(sorted(set(data["train"][1].tolist()) - set(base_classes.tolist())))
    if args.quick:
        base_classes, novel_classes = base_classes[:10], novel_classes[:10]
    keep = np.r_[base_classes, novel_classes]
    for split, (X, y) in data.items():
        sel = np.isin(y, keep)
        data[split] = (X[sel], np.asarray(y)[sel])
    Xtr, ytr = data["train"]
    shots, draws = ((1, 5), 1) if args.quick else ((1, 2, 5, 10), 3)
    ft_shots = (1, 5)
    in_base = np.isin(ytr, base_classes)
    ext = CNNFeatureExtractor()
    fit_params = {k: v for k, v in (("trainable_blocks", args.e2e_blocks), ("max_epochs", args.e2e_epochs))
                  if v is not None}  # None: the fine-tuning recipe's default
    parts = Parts(args.work or f"/tmp/skfg_imprinting_e2e{'_quick' if args.quick else ''}",
                  {"quick": args.quick, "e2e_epochs": args.e2e_epochs, "e2e_blocks": args.e2e_blocks,
                   "e2e_no_ft": args.e2e_no_ft, "aug": args.aug}, args.resume)
    if parts.get("base_fit_s") is not None:
        base, base_fit_s = parts.load("base"), parts.get("base_fit_s")
    else:
        t = time.perf_counter()
        base = ImprintedClassifier(extractor=ext, random_state=0, **fit_params).fit(Xtr[in_base], ytr[in_base])
        base_fit_s = time.perf_counter() - t
        parts.dump("base", base)
        parts.put("base_fit_s", base_fit_s)
    print(f"base model: {int(in_base.sum())} images, {base_fit_s:.0f} s", flush=True)
    splits = {name: data[name] for name in ("val", "test")}
    old_images = {name: np.isin(y, base_classes) for name, (_, y) in splits.items()}
    embedded = {name: unit(base.transform(X)) for name, (X, _) in splits.items()}
    W0 = unit(np.asarray(base.class_weights_, dtype=np.float64))
    before = {name: float((base.classes_[np.argmax(embedded[name][old] @ W0.T, 1)] == splits[name][1][old]).mean())
              for name, old in old_images.items()}  # the base model on its own classes' images

    def scores(templates, labels, embeddings=None):
        """Per split: accuracy on all classes, the old classes' accuracy kept (a fraction of
        ``before``), the novel classes' images among all templates, and among the novel
        templates only (the paper's novel-only protocol)."""
        out = {}
        W = unit(np.asarray(templates, dtype=np.float64))
        labels = np.asarray(labels)
        novel_rows = np.isin(labels, novel_classes)
        for name, (_, y) in splits.items():
            E = embedded[name] if embeddings is None else embeddings[name]
            S = E @ W.T
            ok = labels[np.argmax(S, 1)] == y
            old = old_images[name]
            only = labels[novel_rows][np.argmax(S[~old][:, novel_rows], 1)]
            out[name] = (float(ok.mean()), float(ok[~old].mean()), float((only == y[~old]).mean()),
                         float(ok[old].mean() / before[name]))
        return out

    def model_scores(model):
        embeddings = {name: unit(model.transform(X)) for name, (X, _) in splits.items()}
        return scores(model.class_weights_, model.classes_, embeddings)

    def exemplars(n, draw):
        rng = np.random.RandomState(draw)
        return np.concatenate([rng.choice(np.flatnonzero(ytr == c), min(n, int((ytr == c).sum())), replace=False)
                               for c in novel_classes])

    def fine_tuned(method, setting, Xn, yn, draw):
        lr, epochs = FT_CANDIDATES[setting]
        if method == "Imprinting+FT":  # imprinted with the default rule, then fine-tuned
            return copy(base).set_params(fine_tune_epochs=epochs, fine_tune_lr=lr).partial_fit(Xn, yn)
        rand = randomise_novel(copy(base).imprint(Xn, yn), draw).set_params(fine_tune_epochs=epochs, fine_tune_lr=lr)
        return rand.partial_fit(Xn, yn, imprint=False)  # the fine-tuning step, from random novel templates

    # the fine-tuning setting of each method, chosen on val (all classes) at n = 5, draw 0: the same candidates
    # and the same budget for both starts
    n_choice = 5 if 5 in shots else shots[-1]
    idx = exemplars(n_choice, 0)
    choice_runs, chosen = {}, {}
    if not args.e2e_no_ft:
        for method in ("Imprinting+FT", "Rand+FT"):
            for setting in FT_CANDIDATES:
                key = f"choice {method} {setting}"
                if parts.get(key) is None:
                    parts.put(key, model_scores(fine_tuned(method, setting, Xtr[idx], ytr[idx], 0)))
                choice_runs[(method, setting)] = parts.get(key)
                print("choice", method, setting, choice_runs[(method, setting)]["val"], flush=True)
            chosen[method] = max(FT_CANDIDATES, key=lambda st, m=method: choice_runs[(m, st)]["val"][0])

    runs, imprint_ms = {}, []
    for n in shots:
        for draw in range(draws):
            if parts.get(f"draw {n} {draw}") is not None:
                res, ms = parts.get(f"draw {n} {draw}")
                imprint_ms.append(ms)
                for k, v in res.items():
                    runs.setdefault((k, n), []).append(v)
                continue
            idx = exemplars(n, draw)
            Xn, yn = Xtr[idx], ytr[idx]
            res = {}
            imp, s = timed(lambda: copy(base).imprint(Xn, yn), warmup=lambda: copy(base).imprint(Xn[:1], yn[:1]))
            imprint_ms.append(1000 * s / len(novel_classes))  # CNN included
            res["Imprinting (default)"] = scores(imp.class_weights_, imp.classes_)
            for name, params in (("Imprinting (paper rule)", {"calibrate_imprints": False}),
                                 ("Imprinting (mean calibration)", {"imprint_whitening": 0.0})):
                other = copy(base).set_params(**params).imprint(Xn, yn)
                res[name] = scores(other.class_weights_, other.classes_)
            aug = copy(base).imprint(Xn, yn, augment=args.aug)
            res["Imprinting+Aug (default)"] = scores(aug.class_weights_, aug.classes_)
            rand = randomise_novel(copy(imp), draw)
            res["Rand-noFT"] = scores(rand.class_weights_, rand.classes_)
            if not args.e2e_no_ft and n in ft_shots:
                for method, setting in chosen.items():
                    res[method] = (choice_runs[(method, setting)] if (n, draw) == (n_choice, 0)
                                   else model_scores(fine_tuned(method, setting, Xn, yn, draw)))
            # nearest neighbour among the novel exemplars (novel-only protocol: novel images only)
            En = unit(base.transform(Xn))
            res["Nearest neighbour (novel exemplars)"] = {
                name: (np.nan, np.nan, float((yn[np.argmax(embedded[name][~old] @ En.T, 1)] == y[~old]).mean()),
                       np.nan)
                for name, (_, y), old in zip(splits, splits.values(), old_images.values())}
            res = json.loads(json.dumps(res))  # as kept (tuples as lists), so a resumed run sees the same
            parts.put(f"draw {n} {draw}", [res, imprint_ms[-1]])
            for k, v in res.items():
                runs.setdefault((k, n), []).append(v)
            print(n, draw, {k: "/".join(f"{a:.3f}" for a in v["val"]) for k, v in res.items()}, flush=True)
    methods = ["Rand-noFT", "Imprinting (paper rule)", "Imprinting (mean calibration)", "Imprinting (default)",
               "Imprinting+Aug (default)", "Rand+FT", "Imprinting+FT", "Nearest neighbour (novel exemplars)"]
    rows, results = [], []
    for split in splits:
        parts = (("all classes", 0), ("old kept", 3), ("novel classes", 1), ("novel only", 2))
        split_runs = {key: [v[split] for v in vals] for key, vals in runs.items()}
        part_rows, part_results = summarise(split_runs, methods, shots, parts=parts)
        rows += [(split, *r) for r in part_rows]
        results += [{"split": split, **r} for r in part_results]
    choice = [{"method": m, "setting": st, "fine_tune_lr": FT_CANDIDATES[st][0], "epochs": FT_CANDIDATES[st][1],
               **{f"{split}_{part}": v[split][j] for split in splits
                  for part, j in (("all classes", 0), ("old kept", 3), ("novel classes", 1))}}
              for (m, st), v in choice_runs.items()]
    ft_note = "".join(
        f" {m}: {st} (val all classes {100 * choice_runs[(m, st)]['val'][0]:.1f} %)." for m, st in chosen.items())
    write_results(
        "imprinting_e2e" + ("_quick" if args.quick else ""),
        {"dataset": "stanford_cars_a", "split": "make-disjoint", "image_size": ext.image_size,
         "features": "efficientnet_lite0 trained end to end", "base_params": fit_params,
         "base_history_epochs": len(base.history_), "aug": args.aug, "base_makes": makes["choose"],
         "novel_makes": makes["confirm"], "n_base_classes": len(base_classes),
         "n_novel_classes": len(novel_classes), "draws": draws, "fine_tune_shots": list(ft_shots),
         "fine_tune_candidates": {k: list(v) for k, v in FT_CANDIDATES.items()}, "fine_tune_choice": choice,
         "fine_tune_chosen": chosen, "base_fit_seconds": base_fit_s, "base_accuracy_on_old": before,
         "imprint_one_class_ms_with_cnn": {"median": float(np.median(imprint_ms))}, "results": results},
        rows,
        ("split", "part", "method", *[f"n={n}" for n in shots]),
        notes=(f"Make-disjoint split: base = {len(base_classes)} classes of the makes {makes['choose'][0]} to "
               f"{makes['choose'][-1]}, novel = {len(novel_classes)} classes of the other makes, n exemplars each. "
               f"Top-1 accuracy (%), mean ± std over {draws} draws, on val and test (choices are made on val). "
               f"Base model: ImprintedClassifier(extractor=CNNFeatureExtractor()) with "
               f"{'the fine-tuning recipe' if not fit_params else fit_params}, fitted once on {int(in_base.sum())} "
               f"images ({base_fit_s / 60:.1f} min). all classes: every image against all templates; old kept: the "
               "base classes' images against all templates, as a fraction of the base model's accuracy on them; "
               "novel classes: the novel classes' images against all templates; novel only: against the novel "
               "templates (or exemplars) only. Imprinting (default): whitened and calibrated (imprint_whitening=60); "
               "mean calibration: imprint_whitening=0; the paper rule: normalize(mean embedding). Imprinting+Aug "
               f"averages {args.aug} random crops/flips per exemplar. Imprinting per class, CNN included: median "
               f"{np.median(imprint_ms):.0f} ms."
               + (f" Imprinting+FT / Rand+FT at n = {', '.join(map(str, ft_shots))}: base and novel images, novel "
                  f"oversampled; each start's setting chosen on val all-class accuracy at n = {n_choice}, draw 0, "
                  f"from the same candidates {list(FT_CANDIDATES)} (the trunk at a tenth of the rate).{ft_note}"
                  if not args.e2e_no_ft else "")),
    )


if __name__ == "__main__":
    main()
