"""ELoPE's localization on real photographs with known boxes (issue 22, item 2).

``stanford_cars_a``'s images are already cropped to the car, so there is nothing to
localise in them. Here every car crop is pasted once, at a random scale (its longer side
30-70 % of the image) and position, onto a random crop of a real photograph
(:func:`skfg.datasets.make_composite`; scikit-learn's two sample photographs), 224 px,
train / val / test from the data set's own splits with different seeds. The pasted
rectangle is the ground-truth box.

Rows (one seed, ``--seed``; the paper's protocol: the box threshold ``tau`` is fixed, ``ObjectCropper``'s
default 0.3 (Table 2), never chosen with ground-truth boxes; the rates at other ``tau`` on
**val** are reported beside it, and the ``tau`` val picks is applied to test in its own row;
each for ``ObjectCropper``'s default box rule, the connected region around the map's
maximum, and for the paper's, every cell above ``tau``; the teacher sees the images at
``teacher_size="auto"``, twice its own input size, so 14 x 14 maps at 224 px):

- ``ObjectCropper(None)``, the pretrained ImageNet teacher (the default before the teacher was
  fine-tuned in ``fit``), every other parameter at its default: the share of
  test images whose box reaches IoU >= 0.5 (paper Table 4), for the student and for the
  teacher's own heat map;
- a teacher fine-tuned on the composite training images with class labels only
  (``SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=224))``, the recipe at
  ``--teacher-epochs``), then ``ObjectCropper(teacher=FrozenEstimator(teacher))``; its
  student is also refitted with each of ``--cropper-seeds`` on the same teacher, for the
  spread of the IoU rate at the default ``tau`` (mean, 95 % t interval);
- the classification gain from cropping: ``SoftmaxClassifier(embedding_dim=512)`` on frozen
  GKMP features of the full composites against the same on the fine-tuned teacher's
  cropper's crops (val and test accuracy);
- ELoPE's headline on the composites, end to end, over ``--seeds``: GAP on the full images,
  GKMP + L_w + L_b on the full images, and GKMP + L_w + L_b on the crops of the fine-tuned
  teacher's cropper (default parameters), each ``SoftmaxClassifier(embedding_dim=512)``
  with the same per-fit budget (224 px, last ``--blocks`` stages trainable, up to
  ``--epochs`` epochs with early stopping on 10 % of train, no augmentation so the frozen
  stages run once: a few minutes a fit); each row minus GAP paired by seed (95 % t interval).
  The cropper is fitted once (seed ``--seed``); the classifiers' seeds vary.

    python benchmarks/localization.py --quick   # 12 classes, 128 px, 1 teacher epoch: minutes
    python benchmarks/localization.py           # 98 classes, 224 px: about 70 minutes on 2 cores
    python benchmarks/localization.py --resume --cropper-seeds-only   # only the cropper seeds, added

The fitted teacher and croppers are kept in ``--work`` (joblib), so a run that stopped in
the classification section continues there with ``--resume``.
"""

import argparse
import json
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.frozen import FrozenEstimator

from _common import DATA, RESULTS, mergeable_rows, paired_by_seed, seed_interval, seed_summary, write_results
from skfg import CNNFeatureExtractor, ObjectCropper, SoftmaxClassifier
from skfg.datasets import load_image_folder, make_composite
from skfg.localization import box_iou, heatmap_to_box

TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# label, pooling, embedding_loss, cropped (ELoPE's rows: elope.py)
E2E_ROWS = [
    ("GAP", "gap", None, False),
    ("GKMP + L_w + L_b", "kmax", "class_means", False),
    ("GKMP + L_w + L_b + localization", "kmax", "class_means", True),
]


def composite_split(split, classes, size, seed):
    X, y = load_image_folder(DATA / "stanford_cars_a" / split)
    keep = np.isin(y, classes)
    images, boxes = make_composite(X[keep], image_size=size, random_state=seed)
    return images, y[keep], boxes


def iou_rates(maps, truth, size, taus, component):
    """``{tau: share of images whose box at tau has IoU >= 0.5}`` and the mean IoU per tau
    (``component``: the box of the connected region around the maximum, else the paper's)."""
    out = {}
    for tau in taus:
        iou = box_iou(np.array([heatmap_to_box(m, (size, size), tau, component=component) for m in maps]), truth)
        out[tau] = (float(np.mean(iou >= 0.5)), float(iou.mean()))
    return out


def evaluate_cropper(name, cropper, data, size, default_tau, results):
    """IoU >= 0.5 rates of the student and the teacher's own maps on test, at the default
    ``tau`` and at the ``tau`` chosen on val, for the cropper's box rule and the paper's,
    appended to ``results`` (their Markdown rows: :func:`table_rows`)."""
    (Xva, bva), (Xte, bte) = data
    res = {"name": name}
    val_maps = {s: cropper.predict_heatmaps(Xva, source=s) for s in ("student", "teacher")}
    test_maps = {s: cropper.predict_heatmaps(Xte, source=s) for s in ("student", "teacher")}
    rules = [(cropper.box, cropper.box == "component")] + ([("all", False)] if cropper.box != "all" else [])
    for rule, component in rules:
        val_rates = {s: iou_rates(val_maps[s], bva, size, TAUS, component) for s in val_maps}
        val_tau = float(max(TAUS, key=lambda t: val_rates["student"][t][0]))  # chosen on val, never on test
        for label, tau in (("default tau", default_tau), ("tau chosen on val", val_tau)):
            test = {s: iou_rates(test_maps[s], bte, size, (tau,), component)[tau] for s in test_maps}
            res[f"{rule}: {label}"] = {"box": rule, "tau": tau, "student_iou05": test["student"][0],
                                       "teacher_iou05": test["teacher"][0], "student_mean_iou": test["student"][1],
                                       "teacher_mean_iou": test["teacher"][1]}
        res[f"{rule}: val_sweep"] = {f"{tau:g}": {"student_iou05": val_rates["student"][tau][0],
                                                  "teacher_iou05": val_rates["teacher"][tau][0]} for tau in TAUS}
    res["teacher_size"], res["heatmap_shape"] = cropper.teacher_size_, list(cropper.heatmap_shape_)
    results.append(res)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 classes, 128 px, 1 teacher epoch")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="fine-tuning epochs of the teacher")
    parser.add_argument("--seed", type=int, default=0, help="seed of the composites' teacher and croppers")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the end-to-end rows")
    parser.add_argument("--cropper-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the fine-tuned teacher's cropper (its student) for the spread of its IoU rates")
    parser.add_argument("--epochs", type=int, default=15, help="end-to-end rows: most epochs")
    parser.add_argument("--blocks", type=int, default=2, help="end-to-end rows: trainable_blocks")
    parser.add_argument("--work", default=None, help="where the fitted teacher and croppers are kept "
                        "(default: /tmp/skfg_localization[_quick])")
    parser.add_argument("--resume", action="store_true", help="reuse the teacher and croppers in --work")
    parser.add_argument("--cropper-seeds-only", action="store_true",
                        help="with --resume: only refit the cropper over --cropper-seeds on the kept teacher; every "
                        "other value keeps results/localization.json's value and stamp (its code must be unchanged)")
    args = parser.parse_args()
    classes = sorted(set(load_image_folder(DATA / "stanford_cars_a" / "train")[1]))
    size, epochs = 224, args.teacher_epochs
    if args.quick:
        classes, size, epochs = classes[:12], 128, 1
    t = time.perf_counter()
    (Xtr, ytr, btr), (Xva, yva, bva), (Xte, yte, bte) = (
        composite_split(split, classes, size, seed) for split, seed in (("train", 0), ("val", 1), ("test", 2)))
    payload = {"n_classes": len(classes), "image_size": size, "n_train": len(ytr), "n_val": len(yva),
               "n_test": len(yte), "teacher_epochs": epochs, "seed": args.seed,
               "object_area_fraction": float(np.mean((bte[:, 2] - bte[:, 0]) * (bte[:, 3] - bte[:, 1])) / size**2),
               "make_composite_s": time.perf_counter() - t}
    default_tau = ObjectCropper().tau
    croppers_out = []
    data = ((Xva, bva), (Xte, bte))

    work = Path(args.work or f"/tmp/skfg_localization{'_quick' if args.quick else ''}")
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: payload[k] for k in ("n_classes", "image_size", "n_train", "teacher_epochs", "seed")}

    def fitted(key, make):
        """``make()``'s estimator and its fit time, or both from ``work`` with ``--resume``."""
        path = work / f"{key}.joblib"
        if args.resume and path.exists():
            saved = joblib.load(path)
            if saved["settings"] != settings:
                raise SystemExit(f"--resume: {path} was fitted with other settings: {saved['settings']}")
            return saved["model"], saved["fit_s"]
        t = time.perf_counter()
        model = make()
        out = {"settings": settings, "model": model, "fit_s": time.perf_counter() - t}
        joblib.dump(out, path)
        return model, out["fit_s"]

    if args.cropper_seeds_only:
        return cropper_seeds_only(args, work, fitted, Xtr, (Xte, bte), size, default_tau)
    pretrained, payload["pretrained_cropper_fit_s"] = fitted(
        "pretrained_cropper", lambda: ObjectCropper(None, random_state=args.seed).fit(Xtr))
    evaluate_cropper("ObjectCropper(None) (pretrained teacher)", pretrained, data, size, default_tau, croppers_out)

    teacher, payload["teacher_fit_s"] = fitted("teacher", lambda: SoftmaxClassifier(
        extractor=CNNFeatureExtractor(image_size=size), max_epochs=epochs, random_state=args.seed).fit(Xtr, ytr))
    payload["teacher_val_accuracy"] = float(teacher.score(Xva, yva))
    payload["teacher_test_accuracy"] = float(teacher.score(Xte, yte))
    tuned, payload["tuned_cropper_fit_s"] = fitted("tuned_cropper", lambda: ObjectCropper(
        teacher=FrozenEstimator(teacher), random_state=args.seed).fit(Xtr))
    evaluate_cropper("ObjectCropper(teacher=fine-tuned)", tuned, data, size, default_tau, croppers_out)
    payload["croppers"] = croppers_out
    payload["cropper_seeds"] = cropper_seeds(args, tuned, teacher, fitted, Xtr, (Xte, bte), size, default_tau)
    name = "localization" + ("_quick" if args.quick else "")

    ext = CNNFeatureExtractor(image_size=size, pooling="kmax").fit()
    gain = {}
    for label, transform in (("full images", lambda X: X), ("cropped (fine-tuned teacher, default tau)",
                                                            tuned.transform)):
        clf = SoftmaxClassifier(embedding_dim=512, random_state=args.seed).fit(ext.transform(transform(Xtr)), ytr)
        gain[label] = {"val_accuracy": float(clf.score(ext.transform(transform(Xva)), yva)),
                       "test_accuracy": float(clf.score(ext.transform(transform(Xte)), yte))}
    payload["classification"] = gain
    crops = {"full": (Xtr, Xva, Xte), "cropped": tuple(tuned.transform(X) for X in (Xtr, Xva, Xte))}
    boxes = tuned.predict_boxes(Xte)
    payload["crop_kept_area_fraction"] = float(np.mean((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / size**2)
    payload["e2e"] = end_to_end(args, crops, (ytr, yva, yte), size)
    write(name, {"rows": croppers_out, **payload}, table_rows(croppers_out), args)


HEADER = ("cropper", "box", "tau", "student IoU>=0.5", "teacher IoU>=0.5", "student mean IoU", "teacher mean IoU")


def write(name, payload, rows, args):
    """The results file and its Markdown table and notes, from ``payload``."""
    size, epochs, gain, e2e = payload["image_size"], payload["teacher_epochs"], payload["classification"], payload["e2e"]
    notes = (f"Composite set: stanford_cars_a car crops on scikit-learn's two photographs, {size} px, "
             f"{payload['n_classes']} classes, {payload['n_train']} train / {payload['n_val']} val / "
             f"{payload['n_test']} test images; the car covers "
             f"{payload['object_area_fraction']:.0%} of the image on average. Rates on test; tau chosen on val boxes "
             f"in its own row. Fine-tuned teacher: {epochs} epochs, val {payload['teacher_val_accuracy']:.3f} / test "
             f"{payload['teacher_test_accuracy']:.3f}, fit {payload['teacher_fit_s'] / 60:.1f} min.\n\n"
             + cropper_seed_notes(payload["cropper_seeds"]) + ".\n\n"
             "Frozen GKMP features + SoftmaxClassifier(embedding_dim=512), val / test accuracy: "
             + "; ".join(f"{k}: {v['val_accuracy']:.3f} / {v['test_accuracy']:.3f}" for k, v in gain.items()) + ".\n\n"
             + e2e_notes(e2e, payload))
    write_results(name, payload, rows, HEADER, notes)


def table_rows(croppers):
    """The Markdown rows of :func:`evaluate_cropper`'s results."""
    rows = []
    for res in croppers:
        default_rule = None  # the cropper's own rule comes first (evaluate_cropper)
        for key, r in res.items():
            if isinstance(r, dict) and "student_iou05" in r:
                rule, label = key.split(": ", 1)
                default_rule = default_rule or rule
                label_rule = f"box={rule!r}" + (" (default)" if rule == default_rule else " (the paper's rule)")
                rows.append((res["name"], label_rule, f"{label} ({r['tau']:g})", f"{r['student_iou05']:.3f}",
                             f"{r['teacher_iou05']:.3f}", f"{r['student_mean_iou']:.3f}", f"{r['teacher_mean_iou']:.3f}"))
    return rows


def cropper_seeds_only(args, work, fitted, Xtr, test, size, tau):
    """``--cropper-seeds-only``: the kept teacher and seed-``--seed`` cropper from ``--work``
    (checked against the results file: the same test rate), the other seeds fitted, and
    the results file rewritten with ``cropper_seeds`` added; its other values and their
    stamp are kept (:func:`_common.mergeable_rows`)."""
    name = "localization" + ("_quick" if args.quick else "")
    croppers = mergeable_rows(name)
    saved = json.loads((RESULTS / f"{name}.json").read_text())
    if not args.resume:
        raise SystemExit("--cropper-seeds-only needs --resume (the teacher and cropper of the run in --work)")
    if not all((work / f"{k}.joblib").exists() for k in ("teacher", "tuned_cropper")):
        raise SystemExit(f"--cropper-seeds-only: no teacher.joblib and tuned_cropper.joblib in {work}")
    teacher, _ = fitted("teacher", None)
    tuned, _ = fitted("tuned_cropper", None)
    out = cropper_seeds(args, tuned, teacher, fitted, Xtr, test, size, tau)
    kept = croppers[1]["component: default tau"]["student_iou05"]
    at_seed = out["component"]["student_iou05_per_seed"][args.cropper_seeds.index(args.seed)]
    if abs(kept - at_seed) > 1e-12:
        raise SystemExit(f"the cropper in {work} is not the one results/{name}.json measured ({at_seed} vs {kept})")
    payload = {k: v for k, v in saved.items() if k not in ("provenance", "machine")}
    payload.update(rows=croppers, cropper_seeds=out)
    write(name, payload, table_rows(croppers), args)


def cropper_seeds(args, tuned, teacher, fitted, Xtr, test, size, tau):
    """The fine-tuned teacher's cropper refitted with each of ``--cropper-seeds`` (the
    student's initialisation and batch order; the same teacher): per box rule, the
    student's IoU >= 0.5 rate on test at the default ``tau``, per seed and as mean with a
    95 % Student-t half-width."""
    Xte, bte = test
    out = {"seeds": list(args.cropper_seeds), "tau": tau, "fit_s": {}}
    maps = {}
    for seed in args.cropper_seeds:
        cropper, out["fit_s"][str(seed)] = (tuned, None) if seed == args.seed else fitted(
            f"tuned_cropper_s{seed}", lambda: ObjectCropper(teacher=FrozenEstimator(teacher), random_state=seed).fit(Xtr))
        maps[seed] = cropper.predict_heatmaps(Xte, source="student")
    for rule, component in (("component", True), ("all", False)):
        rates = [iou_rates(maps[seed], bte, size, (tau,), component)[tau][0] for seed in args.cropper_seeds]
        mean, half = seed_interval(rates)
        out[rule] = {"student_iou05_per_seed": rates, "student_iou05_mean": mean, "student_iou05_half_width": half}
    return out


def cropper_seed_notes(c):
    return "Student IoU >= 0.5 on test at tau {:g} over cropper seeds {} (the same fine-tuned teacher): ".format(
        c["tau"], c["seeds"]) + "; ".join(
        f"box={rule!r} {c[rule]['student_iou05_mean']:.3f} +- {c[rule]['student_iou05_half_width']:.3f} (per seed "
        + " / ".join(f"{v:.3f}" for v in c[rule]["student_iou05_per_seed"]) + ")" for rule in ("component", "all"))


def end_to_end(args, crops, labels, size):
    """ELoPE's rows fitted end to end over ``args.seeds`` (see the module docstring):
    ``{"budget", "runs": [...], "summary": {label: mean/sd}, "paired_vs_gap": {label: ...}}``."""
    (ytr, yva, yte), runs = labels, []
    epochs = 1 if args.quick else args.epochs
    for seed in args.seeds:
        for label, pooling, loss, cropped in E2E_ROWS:
            Xtr, Xva, Xte = crops["cropped" if cropped else "full"]
            clf = SoftmaxClassifier(embedding_dim=512, embedding_loss=loss,
                                    extractor=CNNFeatureExtractor(image_size=size, pooling=pooling),
                                    trainable_blocks=args.blocks, max_epochs=epochs, augment=False, random_state=seed)
            t = time.perf_counter()
            clf.fit(Xtr, ytr)
            runs.append({"name": label, "seed": seed, "fit_s": time.perf_counter() - t, "epochs": clf.n_iter_,
                         "best_epoch": clf.best_epoch_, "val_accuracy": float(clf.score(Xva, yva)),
                         "test_accuracy": float(clf.score(Xte, yte))})
            print(runs[-1], flush=True)
    summary = {label: seed_summary([r for r in runs if r["name"] == label]) for label, *_ in E2E_ROWS}
    gap = [r for r in runs if r["name"] == "GAP"]
    paired = {label: paired_by_seed([r for r in runs if r["name"] == label], gap) for label, *_ in E2E_ROWS[1:]}
    return {"budget": {"image_size": size, "trainable_blocks": args.blocks, "max_epochs": epochs, "augment": False,
                       "embedding_dim": 512}, "runs": runs, "summary": summary, "paired_vs_gap": paired}


def e2e_notes(e2e, payload):
    """The end-to-end section of the Markdown notes: one line a row, then the paired gains."""
    b = e2e["budget"]
    lines = [f"End to end on the composites ({b['image_size']} px, trainable_blocks={b['trainable_blocks']}, up to "
             f"{b['max_epochs']} epochs, no augmentation, 512-d embedding; seeds "
             f"{sorted({r['seed'] for r in e2e['runs']})}; crops of the fine-tuned teacher's cropper at its defaults "
             f"keep {payload['crop_kept_area_fraction']:.0%} of the image), mean +- 95 % half-width, val / test:"]
    for label, s in e2e["summary"].items():
        per = " / ".join(f"{r['test_accuracy']:.3f}" for r in e2e["runs"] if r["name"] == label)
        lines.append(f"- {label}: {s['val_mean']:.3f} +- {s['val_half_width']:.3f} / "
                     f"{s['test_mean']:.3f} +- {s['test_half_width']:.3f} (test per seed {per})")
    for label, p in e2e["paired_vs_gap"].items():
        if p is not None:
            lines.append(f"- {label} minus GAP, paired by seed: val {100 * p['val_mean']:+.1f} +- "
                         f"{100 * p['val_half_width']:.1f} points, test {100 * p['test_mean']:+.1f} +- "
                         f"{100 * p['test_half_width']:.1f} points")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
