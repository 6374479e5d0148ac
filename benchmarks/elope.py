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

Also measured: the added components' parameters, FLOPs (multiply-adds counted by
``torch.utils.flop_counter``) and batch-1 latency against the GAP model, timed
alternately image by image in the same loop; and, since ``stanford_cars_a`` images are
already cropped to the car, the localization on the synthetic set with ground-truth
boxes: the share of test images with IoU >= 0.5 (paper Table 4) for the student and
for the teacher's own heat map, and frozen-feature accuracy with and without cropping.

    python benchmarks/elope.py --quick   # 20 classes, 96 px, 1 epoch: minutes
    python benchmarks/elope.py           # 98 classes, 160 px, 15 epochs: about 25 min on 2 cores
    python benchmarks/elope.py --rows 0 1 2 ; python benchmarks/elope.py --resume   # in parts

Fitted models and finished rows are kept in ``--work`` (joblib files), so ``--resume``
continues where a run stopped, with the same data and settings.
"""

import argparse
import json
import time
from pathlib import Path

import joblib

import numpy as np
import torch
from sklearn.frozen import FrozenEstimator
from torch.utils.flop_counter import FlopCounterMode

from _common import DATA, alternating_ms, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.backbones import build_backbone
from skfg.datasets import load_image_folder, make_fine_grained
from skfg.localization import ObjectCropper, box_iou, heatmap_to_box

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


def ious(maps, truth, size, tau):
    """IoU of the boxes of ``size x size`` images' heat maps at threshold ``tau`` with ``truth``."""
    return box_iou(np.array([heatmap_to_box(m, (size, size), tau) for m in maps]), truth)


def synthetic_localization(args, payload, rows):
    """IoU >= 0.5 rate of the student and of the teacher's map, and what cropping does to
    frozen-feature accuracy, on images with ground-truth boxes.

    Two teachers: the pretrained backbone (``teacher=None``) and a classifier fine-tuned
    on the synthetic training images (GKMP, last 3 stages, 30 epochs at 224 px), the
    paper's "trained classification model". The box threshold ``tau`` is chosen on the
    training images' boxes (the paper sets it per data set); the rates are also given for
    several ``tau`` from the same fit, as it is a prediction-time parameter.
    """
    n_train, n_test = (10, 10) if args.quick else (30, 20)
    size, taus = 128, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    Xtr, ytr, btr = make_fine_grained(args.synthetic_classes, n_train, image_size=size, random_state=0, return_boxes=True)
    Xte, yte, bte = make_fine_grained(args.synthetic_classes, n_test, image_size=size, random_state=1, return_boxes=True)
    t = time.perf_counter()
    tuned = SoftmaxClassifier(
        extractor=CNNFeatureExtractor(image_size=224, pooling="kmax", resize="squash"), trainable_blocks=3,
        max_epochs=2 if args.quick else 30, augment=False, random_state=0,
    ).fit(Xtr, ytr)
    out = {"n_train": len(ytr), "n_test": len(yte), "image_size": size,
           "teacher_fit_s": time.perf_counter() - t, "teacher_test_accuracy": float(tuned.score(Xte, yte)),
           "object_area_fraction": float(np.mean((bte[:, 2] - bte[:, 0]) * (bte[:, 3] - bte[:, 1])) / size**2)}
    croppers = {}
    for name, teacher in {"pretrained": None, "fine-tuned": FrozenEstimator(tuned)}.items():
        t = time.perf_counter()
        cropper = ObjectCropper(teacher=teacher, teacher_size=224, random_state=0).fit(Xtr)
        res = {"cropper_fit_s": time.perf_counter() - t}
        # the student's maps of the training images choose tau; the teacher's are not needed there
        train_maps = cropper.predict_heatmaps(Xtr)
        test_maps = {source: cropper.predict_heatmaps(Xte, source=source) for source in ("student", "teacher")}

        # tau: the paper's per-data-set threshold, chosen here on the training images' boxes
        chosen = args.tau_synthetic
        if chosen is None:
            chosen = float(taus[int(np.argmax([np.mean(ious(train_maps, btr, size, tau) >= 0.5) for tau in taus]))])
        res["tau"] = chosen
        for tau in sorted({*taus, chosen}):
            for source in ("student", "teacher"):
                iou = ious(test_maps[source], bte, size, tau)
                res[f"iou05_{source}_tau{tau:g}"] = float(np.mean(iou >= 0.5))
                res[f"iou_{source}_mean_tau{tau:g}"] = float(iou.mean())
        out[name] = res
        croppers[name] = cropper.set_params(tau=chosen)
        sweep = "; ".join(f"tau {tau:g}: {res[f'iou05_student_tau{tau:g}']:.2f} / {res[f'iou05_teacher_tau{tau:g}']:.2f}"
                          for tau in taus)
        rows.append(("synthetic", f"IoU>=0.5 student / teacher, {name} teacher",
                     f"{res[f'iou05_student_tau{chosen:g}']:.2f} / {res[f'iou05_teacher_tau{chosen:g}']:.2f}", "",
                     f"{res['cropper_fit_s']:.0f}", "", f"at tau {chosen:g} (chosen on the training boxes); {sweep}"))
    ext = CNNFeatureExtractor(image_size=size, pooling="kmax")
    cropper = croppers["fine-tuned"]
    for label, (A, B) in {"full images": (Xtr, Xte), "cropped": (cropper.transform(Xtr), cropper.transform(Xte))}.items():
        clf = SoftmaxClassifier(embedding_dim=512, random_state=0).fit(ext.fit().transform(A), ytr)
        out[f"frozen_accuracy_{label}"] = float(clf.score(ext.transform(B), yte))
    payload["synthetic"] = out
    rows.append(("synthetic", "GKMP frozen features: full / cropped (fine-tuned teacher)",
                 f"{out['frozen_accuracy_full images']:.3f} / {out['frozen_accuracy_cropped']:.3f}", "", "", "",
                 f"{args.synthetic_classes} classes, {n_train} train / {n_test} test per class; the object covers "
                 f"{out['object_area_fraction']:.0%} of the image; fine-tuned teacher: test accuracy "
                 f"{out['teacher_test_accuracy']:.3f}, fit {out['teacher_fit_s']:.0f} s; crops at tau {cropper.tau:g}"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 classes, 96 px, 1 epoch")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--weighted-epochs", type=int, default=5, help="second step of weighted averaging")
    parser.add_argument("--augment", action="store_true", help="random-resized crops and flips (slower)")
    parser.add_argument("--blocks", type=int, default=2, help="trainable_blocks of every row")
    parser.add_argument("--tau", type=float, default=0.2, help="box threshold on cars (Table 2: 0.2)")
    parser.add_argument("--tau-synthetic", type=float, default=None,
                        help="box threshold on the synthetic set (default: chosen on the training boxes)")
    parser.add_argument("--synthetic-classes", type=int, default=20)
    parser.add_argument("--n-timing", type=int, default=100, help="test images timed at batch 1")
    parser.add_argument("--rows", nargs="*", type=int, default=None,
                        help="fit only these rows (indices into ROWS) and stop; finish with --resume")
    parser.add_argument("--work", default=None, help="where fitted models and finished rows are kept "
                        "(default: /tmp/skfg_elope[_quick])")
    parser.add_argument("--resume", action="store_true", help="skip the rows already finished in --work")
    args = parser.parse_args()
    torch.manual_seed(0)
    n_classes, size, epochs = (20, 96, 2) if args.quick else (98, 160, args.epochs)
    n_weighted = 1 if args.quick else args.weighted_epochs
    name = "elope" + ("_quick" if args.quick else "")
    (Xtr, ytr), (Xte, yte) = load("train", n_classes), load("test", n_classes)
    payload = {"dataset": "stanford_cars_a", "image_size": size, "backbone": "efficientnet_lite0", "device": "cpu",
               "n_train": len(ytr), "n_test": len(yte), "n_classes": n_classes, "epochs": epochs,
               "weighted_epochs": n_weighted, "trainable_blocks": args.blocks, "tau": args.tau,
               "augment": args.augment}
    work = Path(args.work or f"/tmp/skfg_elope{'_quick' if args.quick else ''}")
    work.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.resume and (work / "rows.json").exists():
        saved = json.loads((work / "rows.json").read_text())
        if saved["settings"] != payload:
            raise SystemExit(f"--resume: {work} holds a run with other settings: {saved['settings']}")
        done = {int(k): v for k, v in saved["rows"].items()}
    rows, results = [], []
    header = ("section", "method", "test acc", "fit s", "extra fit s", "predict ms/img", "note")

    def save(notes=""):
        payload["results"] = results
        write_results(name, payload, rows, header, notes=notes)

    class Models(dict):
        """Fitted models of this run, loaded from ``work`` when an earlier part fitted them."""

        def __missing__(self, key):
            path = work / f"{key}.joblib"
            if not path.exists():
                raise KeyError(key)
            self[key] = joblib.load(path)
            return self[key]

        def get(self, key, default=None):
            try:
                return self[key]
            except KeyError:
                return default

    models, crops = Models(), None
    settings = dict(payload)
    todo = range(len(ROWS)) if args.rows is None else args.rows
    for i in todo:
        label, pooling, loss, loc, weighted = ROWS[i]
        if i in done:
            results.append(done[i]["result"])
            rows.append(tuple(done[i]["row"]))
            payload.update(done[i].get("payload", {}))
            continue
        extra_s, A, B, note = 0.0, Xtr, Xte, ""
        if loc:
            if crops is None:  # the teacher is the GKMP row's fine-tuned network (section 5)
                teacher = models.get("row2")
                if teacher is None:
                    raise SystemExit("localization rows need the GKMP row (index 2) in the same run")
                t = time.perf_counter()
                cropper = models.get("cropper")
                if cropper is None:
                    cropper = ObjectCropper(teacher=teacher, teacher_size=224, tau=args.tau, random_state=0).fit(Xtr)
                    joblib.dump(cropper, work / "cropper.joblib")
                crops = (cropper.transform(Xtr), cropper.transform(Xte), time.perf_counter() - t)
                boxes = cropper.predict_boxes(Xte)
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                originals = np.array([np.prod(im.size) for im in _originals(Xte)], dtype=float)
                payload["localization"] = {
                    "fit_and_crop_s": crops[2], "n_parameters": int(cropper.n_parameters_),
                    "multiply_adds": float(cropper.flops_), "mean_kept_area_fraction": float(np.mean(areas / originals)),
                    "share_cropped_below_90pct": float(np.mean(areas / originals < 0.9)),
                }
                models["cropper"] = cropper
            A, B, extra_s = crops[0], crops[1], crops[2]
            note = f"crops keep {payload['localization']['mean_kept_area_fraction']:.0%} of the image area on average"
        clf = SoftmaxClassifier(
            embedding_dim=512, embedding_loss=loss, extractor=CNNFeatureExtractor(image_size=size, pooling=pooling),
            trainable_blocks=args.blocks, max_epochs=epochs, kmax_weight_epochs=n_weighted if weighted else 0,
            augment=args.augment, random_state=0,
        )
        t = time.perf_counter()
        clf.fit(A, ytr)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        acc = float(np.mean(clf.predict(B) == yte))
        pred_ms = 1000 * (time.perf_counter() - t) / len(yte)
        models[f"row{i}"] = clf
        joblib.dump(clf, work / f"row{i}.joblib")
        if weighted:
            note += ("; " if note else "") + "pool weights " + ", ".join(
                f"{w:.2f}" for w in clf.module_.pool_parameters()[0].detach().tolist())
        results.append({"method": label, "pooling": pooling, "embedding_loss": loss, "localization": loc,
                        "weighted": weighted, "test_accuracy": acc, "fit_s": fit_s, "extra_fit_s": extra_s,
                        "epochs": clf.n_iter_, "best_epoch": clf.best_epoch_, "predict_ms_per_image": pred_ms})
        rows.append(("cars", label, f"{acc:.3f}", f"{fit_s:.0f}", f"{extra_s:.0f}" if loc else "",
                     f"{pred_ms:.2f}", note))
        print(rows[-1], flush=True)
        done[i] = {"result": results[-1], "row": rows[-1],
                   "payload": {"localization": payload["localization"]} if loc else {}}
        (work / "rows.json").write_text(json.dumps({"settings": settings, "rows": done}, indent=1))
        save()

    if args.rows is not None:  # a part of the run: the cost and synthetic sections come with --resume
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
    full = models.get(f"row{len(ROWS) - 1}")
    base = models.get("row0")
    if full is not None and base is not None:
        cropper = models["cropper"]
        X_time = Xte[: args.n_timing]
        ms = alternating_ms([base.predict, lambda x: full.predict(cropper.transform(x)),
                             lambda x: cropper.transform(x)], X_time, 2 if args.quick else 3)
        cost.update(gap_ms_per_image=ms[0], full_ms_per_image=ms[1], cropper_ms_per_image=ms[2])
        rows.append(("cost", "full model vs GAP, batch 1", "", "", "", f"{ms[1]:.2f} vs {ms[0]:.2f}",
                     f"x{ms[1] / ms[0]:.2f} time; the cropper alone {ms[2]:.2f} ms (decode + student + crop)"))
    if "cropper_multiply_adds" in cost:
        rows.append(("cost", "added multiply-adds", "", "", "", "",
                     f"cropper {cost['cropper_multiply_adds'] / 1e6:.1f} M + embedding 0.66 M vs backbone "
                     f"{cost['backbone_multiply_adds'] / 1e6:.0f} M at {size} px "
                     f"(+{(cost['cropper_multiply_adds'] + 0.66e6) / cost['backbone_multiply_adds']:.1%}); "
                     f"parameters: cropper {cost['cropper_parameters']:,}, pool weights 4"))
    payload["cost"] = cost

    synthetic_localization(args, payload, rows)
    acc = {r["method"]: r["test_accuracy"] for r in results}
    notes = [f"{n_classes} classes, {size} px, trainable_blocks={args.blocks}, up to {epochs} epochs (+{n_weighted} "
             f"for weighted averaging), {'with' if args.augment else 'no'} augmentation, 512-d hidden layer in "
             "every row; one seed."]
    if "GAP" in acc and ROWS[-1][0] in acc:
        notes.append(f"all components vs GAP: {acc[ROWS[-1][0]]:.3f} vs {acc['GAP']:.3f} "
                     f"({100 * (acc[ROWS[-1][0]] - acc['GAP']):+.1f} points)")
    save("\n".join(f"- {n}" for n in notes))


def _originals(X):
    from skfg.images import ImageSource

    source = ImageSource(X)
    return [source.load(i) for i in range(len(source))]


if __name__ == "__main__":
    main()
