"""Low-shot learning by weight imprinting on stanford_cars_a (imprinted-weights Tables 1-2, Fig. 6).

Base = the first 49 classes with all their training images; novel = the other 49 with
n in {1, 2, 5, 10, 20} exemplars (capped by what a class has), 3 random draws each. On
frozen default-backbone features (160 px). Rows: Rand-noFT, Imprinting, Rand+FT,
Imprinting+FT, AllClassJoint, and the nearest neighbour over all exemplars (ours, Fig. 6's
setting with the base classes' images as well). Also the paper's novel-only protocol (novel
images classified among the novel classes only): the imprinted templates, with the paper's
rule and calibrated (the default), and the nearest neighbour among the novel exemplars.
Imprinting+Aug needs images (``extractor=``) and is not part of the frozen-feature run.

``--e2e`` runs the protocol end to end instead (``results/imprinting_e2e.*``), scored on
val (for choices) and test: the base model is ``ImprintedClassifier(extractor=
CNNFeatureExtractor())`` with the fine-tuning recipe (``--e2e-blocks`` / ``--e2e-epochs``
override it), then Rand-noFT, Imprinting with the paper's rule and calibrated (the
default, ``calibrate_imprints``), Imprinting+Aug (``--aug`` random crops per exemplar),
Imprinting+FT and Rand+FT (``--e2e-ft-epochs``, n <= 5, ``--e2e-ft-draws`` draws), and the
nearest neighbour among the novel exemplars (novel-only protocol), on images.

    python benchmarks/imprinting.py --quick   # n in {1, 5}, 1 draw
    python benchmarks/imprinting.py           # full
    python benchmarks/imprinting.py --e2e     # end to end (about 30 minutes on 2 cores)
"""

import argparse
import io
import time

import joblib
import numpy as np
import torch
from torch import nn

from _common import DATA, write_results
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
    parser.add_argument("--e2e-ft-epochs", type=int, default=2, help="Imprinting+FT / Rand+FT epochs (0: none)")
    parser.add_argument("--e2e-ft-draws", type=int, default=3, help="draws with the fine-tuning rows")
    parser.add_argument("--aug", type=int, default=5, help="random crops per exemplar for Imprinting+Aug")
    args = parser.parse_args()
    root = DATA / "stanford_cars_a"
    Xtr, ytr = load_image_folder(root / "train")
    Xte, yte = load_image_folder(root / "test")
    if args.e2e:
        Xva, yva = load_image_folder(root / "val")
        return end_to_end(args, Xtr, ytr, Xva, yva, Xte, yte)
    ext = CNNFeatureExtractor(image_size=160, cache=args.cache).fit()
    Ftr, Fte = ext.transform(Xtr), ext.transform(Xte)
    shots, draws = ((1, 5), 1) if args.quick else ((1, 2, 5, 10, 20), 3)
    if args.quick:
        args.ft_epochs = sorted({min(e, 3) for e in args.ft_epochs})
    classes = np.unique(ytr)
    n_base = len(classes) // 2
    novel_test = ~np.isin(yte, classes[:n_base])
    base_idx, _ = low_shot_split(ytr, n_base, 1, random_state=0)
    t = time.perf_counter()
    base = ImprintedClassifier(random_state=0).fit(Ftr[base_idx], ytr[base_idx])
    base_fit_s = time.perf_counter() - t

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


def end_to_end(args, Xtr, ytr, Xva, yva, Xte, yte):
    """The protocol with the CNN trained end to end and imprinting from images, scored on val and test."""
    classes = np.unique(ytr)
    if args.quick:
        keep = np.isin(ytr, classes[:20]), np.isin(yva, classes[:20]), np.isin(yte, classes[:20])
        Xtr, ytr, Xva, yva, Xte, yte = (Xtr[keep[0]], ytr[keep[0]], Xva[keep[1]], yva[keep[1]], Xte[keep[2]],
                                        yte[keep[2]])
        classes = classes[:20]
    shots, draws = ((1, 5), 1) if args.quick else ((1, 2, 5, 10, 20), 3)
    n_base = len(classes) // 2
    base_classes, novel_classes = classes[:n_base], classes[n_base:]
    base_idx, _ = low_shot_split(ytr, n_base, 1, random_state=0)
    ext = CNNFeatureExtractor()
    fit_params = {k: v for k, v in (("trainable_blocks", args.e2e_blocks), ("max_epochs", args.e2e_epochs))
                  if v is not None}  # None: the fine-tuning recipe's default
    t = time.perf_counter()
    base = ImprintedClassifier(extractor=ext, random_state=0, **fit_params).fit(Xtr[base_idx], ytr[base_idx])
    base_fit_s = time.perf_counter() - t
    print(f"base model: {len(base_idx)} images, {base_fit_s:.0f} s", flush=True)
    splits = {"val": (Xva, yva), "test": (Xte, yte)}
    novel_images = {name: np.isin(y, novel_classes) for name, (_, y) in splits.items()}
    embedded = {name: unit(base.transform(X)) for name, (X, _) in splits.items()}

    def scores(templates, labels, embeddings=None):
        """Accuracy on all classes, on the novel classes' images, and on the novel classes'
        images among the novel templates only (the paper's novel-only protocol), per split."""
        out = {}
        W = unit(np.asarray(templates, dtype=np.float64))
        labels = np.asarray(labels)
        novel_rows = np.isin(labels, novel_classes)
        for name, (_, y) in splits.items():
            E = embedded[name] if embeddings is None else embeddings[name]
            S = E @ W.T
            pred = labels[np.argmax(S, 1)]
            novel = novel_images[name]
            only = labels[novel_rows][np.argmax(S[novel][:, novel_rows], 1)]
            out[name] = (float((pred == y).mean()), float((pred[novel] == y[novel]).mean()),
                         float((only == y[novel]).mean()))
        return out

    def model_scores(model):
        embeddings = {name: unit(model.transform(X)) for name, (X, _) in splits.items()}
        return scores(model.class_weights_, model.classes_, embeddings)

    runs, imprint_ms = {}, []
    for n in shots:
        for draw in range(draws):
            _, novel_idx = low_shot_split(ytr, n_base, n, random_state=draw)
            Xn, yn = Xtr[novel_idx], ytr[novel_idx]
            res = {}
            t = time.perf_counter()
            imp = copy(base).imprint(Xn, yn)
            imprint_ms.append(1000 * (time.perf_counter() - t) / len(np.unique(yn)))  # CNN included
            res["Imprinting (calibrated)"] = scores(imp.class_weights_, imp.classes_)
            paper = copy(base).set_params(calibrate_imprints=False).imprint(Xn, yn)
            res["Imprinting (paper rule)"] = scores(paper.class_weights_, paper.classes_)
            aug = copy(base).imprint(Xn, yn, augment=args.aug)
            res["Imprinting+Aug (calibrated)"] = scores(aug.class_weights_, aug.classes_)
            rand = randomise_novel(copy(imp), draw)
            res["Rand-noFT"] = scores(rand.class_weights_, rand.classes_)
            if args.e2e_ft_epochs and n <= 5 and draw < args.e2e_ft_draws:
                tuned = copy(base).set_params(fine_tune_epochs=args.e2e_ft_epochs).partial_fit(Xn, yn)
                res["Imprinting+FT"] = model_scores(tuned)
                rand = randomise_novel(copy(imp), draw).set_params(fine_tune_epochs=args.e2e_ft_epochs)
                rand.partial_fit(Xn, yn, imprint=False)  # the fine-tuning step, from random novel templates
                res["Rand+FT"] = model_scores(rand)
            # nearest neighbour among the novel exemplars (novel-only protocol: novel images only)
            En = unit(base.transform(Xn))
            res["Nearest neighbour (novel exemplars)"] = {
                name: (np.nan, np.nan, float((yn[np.argmax(embedded[name][novel] @ En.T, 1)] == y[novel]).mean()))
                for name, (_, y), novel in zip(splits, splits.values(), novel_images.values())}
            for k, v in res.items():
                runs.setdefault((k, n), []).append(v)
            print(n, draw, {k: "/".join(f"{a:.3f}" for a in v["val"]) for k, v in res.items()}, flush=True)
    methods = ["Rand-noFT", "Imprinting (paper rule)", "Imprinting (calibrated)", "Imprinting+Aug (calibrated)",
               "Rand+FT", "Imprinting+FT", "Nearest neighbour (novel exemplars)"]
    rows, results = [], []
    for split in splits:
        parts = (("all classes", 0), ("novel classes", 1), ("novel only", 2))
        split_runs = {key: [v[split] for v in vals] for key, vals in runs.items()}
        part_rows, part_results = summarise(split_runs, methods, shots, parts=parts)
        rows += [(split, *r) for r in part_rows]
        results += [{"split": split, **r} for r in part_results]
    write_results(
        "imprinting_e2e" + ("_quick" if args.quick else ""),
        {"dataset": "stanford_cars_a", "image_size": ext.image_size, "features": "efficientnet_lite0 trained end to end",
         "base_params": fit_params, "base_history_epochs": len(base.history_), "aug": args.aug,
         "n_base_classes": int(n_base), "n_novel_classes": int(len(novel_classes)), "draws": draws,
         "fine_tune_epochs": args.e2e_ft_epochs, "fine_tune_draws": min(args.e2e_ft_draws, draws),
         "base_fit_seconds": base_fit_s, "base_classes": base_classes.tolist(),
         "imprint_one_class_ms_with_cnn": {"median": float(np.median(imprint_ms))}, "results": results},
        rows,
        ("split", "part", "method", *[f"n={n}" for n in shots]),
        notes=(f"Top-1 accuracy (%), mean ± std over {draws} draws of the novel exemplars, on val and test "
               f"(choices are made on val). Base model: ImprintedClassifier(extractor=CNNFeatureExtractor()) with "
               f"{'the fine-tuning recipe' if not fit_params else fit_params}, fitted once on {len(base_idx)} images "
               f"of {n_base} classes ({base_fit_s / 60:.1f} min). all classes: base and novel test images against "
               "all templates; novel classes: the novel classes' images, same templates; novel only: the novel "
               "classes' images against the novel templates (or exemplars) only. Imprinting+Aug averages "
               f"{args.aug} random crops/flips per exemplar. Imprinting per class, CNN included: median "
               f"{np.median(imprint_ms):.0f} ms."
               + (f" Imprinting+FT / Rand+FT: {args.e2e_ft_epochs} epochs at fine_tune_lr, n <= 5, "
                  f"{min(args.e2e_ft_draws, draws)} draw(s)." if args.e2e_ft_epochs else "")),
    )


if __name__ == "__main__":
    main()
