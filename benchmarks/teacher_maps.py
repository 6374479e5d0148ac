"""Which teacher heat map finds the object? The choice of ``ObjectCropper(teacher_map=...)`` (issue 48).

On ``make_fine_grained(return_boxes=True)`` (the cartoon birds of ``cropper_default.py``: 20
classes at 128 px, 30 training images a class drawn with the seed, val 10 and test 20 a
class in fixed draws), per seed the auto teacher of a small set,
``SoftmaxClassifier(extractor=CNNFeatureExtractor(), validation_fraction=0.1)`` fine-tuned
with the recipe, and the pretrained EfficientNet-Lite0 see every val and test image at
448 px (``teacher_size="auto"``: 14 x 14 maps). Each candidate map is turned into a box
as the cropper does (min-max, ``tau``, ``box="component"``, upsampled) and scored by the
share of boxes with IoU >= 0.5 (the paper's Table 4 measure), at each ``tau`` of a grid.
No student is trained: the teacher's own boxes rank the candidates (the student learns
the map it is given; ``cropper_default.py`` measures the students of the two that
``teacher_map`` offers).

Candidates (``norm``: min-max per map; ``last``: the ``head`` stage, ``previous``:
``stage7``; ``scaled``: each channel divided by its own maximum over the image before the
channel mean):

- ``last`` (``teacher_map="last"``, the paper's) and ``last + previous scaled``
  (``teacher_map="last+previous"``), composed as the cropper composes them (:func:`cropper_map`);
- ``pretrained last``, ``fine-tuned + pretrained last``, each averaged with its flip;
- ``last scaled``, ``previous``, ``previous scaled``, ``last + previous``, and the
  pretrained teacher's ``last scaled`` alone and with the fine-tuned one's.

With ``--set cars`` the same question on the car composites of ``localization.py``
(``stanford_cars_a``'s cars feathered onto backgrounds disjoint between the splits,
224 px, 98 classes): per seed the teacher that ``ObjectCropper().fit(X, y)`` trains there
(``SoftmaxClassifier(extractor=CNNFeatureExtractor(), random_state=seed)`` on the
composite training images; read from ``localization.py``'s ``--work`` folder when it is
there and the skfg code that fitted it is unchanged (``ledger.parts.Parts``), else fitted and kept
in it) and the pretrained EfficientNet-Lite0, on every val
and test composite at 448 px. Candidates: each teacher's ``"last"`` and
``"last+previous"`` maps alone and the fine-tuned one's joined with the pretrained one's
(sums of min-max normalised maps), at each ``tau`` of ``CAR_TAUS``.

    python benchmarks/teacher_maps.py --quick   # 1 seed, 8 classes
    python benchmarks/teacher_maps.py           # 3 seeds (about 10 minutes on 2 cores)
    python benchmarks/teacher_maps.py --set cars --work /tmp/skfg_localization   # about 15 minutes with the teachers fitted
"""

import argparse
import time

import numpy as np
import torch
from PIL import Image

from _common import seed_interval, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.images import eval_transform
from skfg.localization import box_iou, heatmap_to_box

TAUS = (0.2, 0.3, 0.4, 0.5, 0.6)
SIZE, TEACHER_SIZE = 128, 448


class Teacher:
    """A teacher as ``ObjectCropper`` resolves its ``teacher`` parameter: a network with
    ``forward_stages``, its input normalisation (``preprocessing``) and its device."""

    def __init__(self, network, preprocessing):
        self.network, self.preprocessing = network, preprocessing
        self.device = next(network.parameters()).device


def pretrained_teacher():
    """``teacher=None``'s: the pretrained EfficientNet-Lite0, its input squashed (224 px normalisation)."""
    ext = CNNFeatureExtractor(image_size=224, resize="squash").fit()
    return Teacher(ext.network_, ext.preprocessing_)


def fine_tuned_teacher(clf):
    """A classifier fine-tuned with ``extractor=CNNFeatureExtractor()`` as a teacher: its trained trunk."""
    return Teacher(clf.module_.trunk, clf.preprocessing_)


def minmax(maps):
    """Per-map min-max normalisation to [0, 1] (a constant map becomes zeros), as the cropper normalises."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


def cropper_map(m, kind):
    """The map ``ObjectCropper(teacher_map=kind)`` learns from, composed from a batch's
    :func:`stage_maps` ``m``: ``"last"``, the last stage's channel mean (the paper's);
    ``"last+previous"``, that map min-max normalised plus the stage before's scaled map
    (pooled to the same size), each min-max normalised."""
    last = m["last", False]
    if kind == "last":
        return last
    prev = m["previous", True]
    if prev.shape[-2:] != last.shape[-2:]:
        prev = torch.nn.functional.adaptive_avg_pool2d(prev[:, None], last.shape[-2:])[:, 0]
    return minmax(last) + minmax(prev)


def stage_maps(teacher, batch, flip=False):
    """``{(stage, scaled): (n, I, J)}`` for the last two stages: the channel mean, and the
    channel mean after each channel is scaled to its own maximum (negatives clipped)."""
    if flip:
        batch = batch.flip(-1)
    with torch.inference_mode():
        teacher.network.eval()
        x = teacher.preprocessing.to_input(batch, teacher.device, dtype=torch.float32)
        outs = [out.float() for _, out in teacher.network.forward_stages(x)][-2:]
    res = {}
    for name, out in zip(("previous", "last"), outs):
        positive = out.clamp_min(0)
        scaled = (positive / positive.flatten(2).amax(2).clamp_min(1e-6)[..., None, None]).mean(1)
        for key, m in (((name, False), out.mean(1)), ((name, True), scaled)):
            res[key] = m.flip(-1) if flip else m
    return res


def teacher_maps(teacher, X):
    """``{(stage, scaled, flipped): (n, I, J)}`` of every image of ``X``, and under ``"last"`` and
    ``"last+previous"`` the cropper's own maps."""
    tf, acc = eval_transform(TEACHER_SIZE, "squash"), {}
    for start in range(0, len(X), 8):
        batch = torch.stack([tf(Image.fromarray(x)) for x in X[start:start + 8]])
        for flip in (False, True):
            for key, m in stage_maps(teacher, batch, flip).items():
                acc.setdefault((*key, flip), []).append(m)
        for kind in ("last", "last+previous"):  # what ObjectCropper(teacher_map=kind) learns from
            acc.setdefault(kind, []).append(cropper_map(stage_maps(teacher, batch), kind))
    return {k: torch.cat(v) for k, v in acc.items()}


def candidates(ft, pre):
    """The candidate maps (unnormalised sums of min-max normalised maps)."""
    n = minmax
    return {
        "last (teacher_map='last', the paper's)": n(ft["last"]),
        "last + previous scaled (teacher_map='last+previous')": n(ft["last+previous"]),
        "last, flip averaged": n(ft["last", False, False]) + n(ft["last", False, True]),
        "pretrained last": n(pre["last", False, False]),
        "fine-tuned + pretrained last": n(ft["last", False, False]) + n(pre["last", False, False]),
        "fine-tuned + pretrained last, flip averaged": n(ft["last", False, False]) + n(ft["last", False, True])
        + n(pre["last", False, False]) + n(pre["last", False, True]),
        "last scaled": n(ft["last", True, False]),
        "previous": n(ft["previous", False, False]),
        "previous scaled": n(ft["previous", True, False]),
        "last + previous": n(ft["last", False, False]) + n(ft["previous", False, False]),
        "pretrained last scaled": n(pre["last", True, False]),
        "fine-tuned + pretrained last scaled": n(ft["last", True, False]) + n(pre["last", True, False]),
        "last + previous scaled, + pretrained last": n(ft["last+previous"]) + n(pre["last", False, False]),
        "last + previous scaled, + pretrained last + previous scaled": n(ft["last+previous"]) + n(pre["last+previous"]),
    }


def rates(maps, X, boxes):
    """``{tau: share of boxes with IoU >= 0.5}`` (``box="component"``, upsampled, as the cropper)."""
    out = {}
    for tau in TAUS:
        found = np.array([heatmap_to_box(m, x.shape, tau, True, True) for m, x in zip(maps.numpy(), X)])
        out[str(tau)] = float(np.mean(box_iou(found, boxes) >= 0.5))
    return out


CAR_TAUS = (0.3, 0.4, 0.5, 0.6, 0.7)


def car_maps(teacher, X):
    """``{"last", "last+previous"}`` -> ``(n, I, J)`` min-max normalised maps of the 224 px
    composites ``X`` at 448 px, one teacher pass for both (``"last+previous"`` composed
    from :func:`stage_maps` as the cropper composes it, :func:`cropper_map`)."""
    tf, acc = eval_transform(TEACHER_SIZE, "squash"), {"last": [], "last+previous": []}
    for start in range(0, len(X), 4):
        batch = torch.stack([tf(Image.fromarray(x)) for x in X[start:start + 4]])
        m = stage_maps(teacher, batch)
        for kind in acc:
            acc[kind].append(minmax(cropper_map(m, kind)))
    return {k: torch.cat(v) for k, v in acc.items()}


def car_candidates(ft, pre):
    n = minmax
    return {
        "last (teacher_map='last', the paper's)": ft["last"],
        "last + previous scaled (teacher_map='last+previous')": ft["last+previous"],
        "pretrained last": pre["last"],
        "pretrained last + previous scaled": pre["last+previous"],
        "fine-tuned + pretrained last": n(ft["last"] + pre["last"]),
        "last + previous scaled, + pretrained last": n(ft["last+previous"] + pre["last"]),
        "last + previous scaled, + pretrained last + previous scaled": n(ft["last+previous"] + pre["last+previous"]),
    }


def car_rates(maps, boxes, size):
    out = {}
    for tau in CAR_TAUS:
        found = np.array([heatmap_to_box(m, (size, size), tau, True, True) for m in maps.numpy()])
        out[str(tau)] = float(np.mean(box_iou(found, boxes) >= 0.5))
    return out


def cars_main(args):
    """The ``--set cars`` run (see the module docstring)."""
    from localization import COMPOSITE, composite_split, work_settings
    from skfg.datasets import load_image_folder
    from _common import DATA
    from ledger.parts import Parts

    seeds = [int(s) for s in args.seeds.split(",")]
    classes = sorted(set(load_image_folder(DATA / "stanford_cars_a" / "train")[1]))
    size = 224
    parts = {"val": composite_split("val", classes, size), "test": composite_split("test", classes, size)}
    pretrained = pretrained_teacher()
    pre = {part: car_maps(pretrained, X) for part, (X, _, _) in parts.items()}
    # localization.py's teachers (its --work), while the skfg code that fitted them is unchanged
    train_y = load_image_folder(DATA / "stanford_cars_a" / "train")[1]
    settings = work_settings({"n_classes": len(classes), "image_size": size, "composite": COMPOSITE,
                              "n_train": int(np.isin(train_y, classes).sum())})
    work = args.work or "/tmp/skfg_localization"
    teachers = Parts(work, settings, resume=True, cache=True)
    runs = []
    for seed in seeds:
        saved = teachers.load(f"teacher_s{seed}")
        if saved is not None:  # localization.py's teacher for this seed
            clf = saved["model"]
        else:
            Xtr, ytr, _ = composite_split("train", classes, size)
            t = time.perf_counter()
            clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=size), random_state=seed).fit(Xtr, ytr)
            teachers.dump(f"teacher_s{seed}", {"model": clf, "fit_s": time.perf_counter() - t})
        teacher = fine_tuned_teacher(clf)
        run = {"seed": seed, "rates": {}}
        for part, (X, _, boxes) in parts.items():
            for name, maps in car_candidates(car_maps(teacher, X), pre[part]).items():
                run["rates"].setdefault(name, {})[part] = car_rates(maps, boxes, size)
        runs.append(run)
        print(seed, {k: v["val"] for k, v in run["rates"].items()}, flush=True)
    summary = summarise(runs)
    rows = table_rows(summary)
    write_results(
        "teacher_maps_cars", {"image_size": size, "teacher_size": TEACHER_SIZE, "n_classes": len(classes),
                              "seeds": seeds, "taus": list(CAR_TAUS), "summary": summary, "runs": runs},
        rows, HEADER,
        notes=(f"localization.py's car composites (stanford_cars_a on backgrounds disjoint between the splits), "
               f"{size} px, {len(classes)} classes, val {len(parts['val'][1])} / test {len(parts['test'][1])} images. "
               f"The teacher's own boxes (box='component', upsampled) from maps at {TEACHER_SIZE} px; share with "
               f"IoU >= 0.5, mean over seeds {seeds}. The fine-tuned teacher: SoftmaxClassifier(extractor="
               f"CNNFeatureExtractor(), random_state=seed) on the composite training images, what "
               f"ObjectCropper().fit(X, y) trains there; the pretrained one: EfficientNet-Lite0's ImageNet weights. "
               f"Joined maps: the sum of the min-max normalised maps. The val-best tau is chosen on the mean over "
               f"seeds from {list(CAR_TAUS)}."),
    )


HEADER = ("teacher map", "val at tau 0.4, per seed", "val at 0.4", "test at 0.4", "val-best tau (mean)",
          "val at it", "test at it")


def summarise(runs):
    """Per candidate: val and test at 0.4 and at the tau best on val's mean over seeds."""
    summary = {}
    for name in runs[0]["rates"]:
        mean_val = {tau: np.mean([r["rates"][name]["val"][tau] for r in runs]) for tau in runs[0]["rates"][name]["val"]}
        best = max(mean_val, key=lambda tau: (mean_val[tau], -abs(float(tau) - 0.4)))
        cells = {}
        for field, part, tau in (("val", "val", "0.4"), ("test", "test", "0.4"), ("val_best", "val", best),
                                 ("test_at_val_best", "test", best)):
            v = [r["rates"][name][part][tau] for r in runs]
            mean, half = seed_interval(v)
            cells[field] = {"mean": float(mean), "half_width": None if np.isnan(half) else float(half), "seeds": v}
        summary[name] = {**cells, "val_best_tau": float(best)}
    return summary


def table_rows(summary):
    return [(name, " / ".join(f"{100 * v:.0f}" for v in cell["val"]["seeds"]), f"{100 * cell['val']['mean']:.1f} %",
             f"{100 * cell['test']['mean']:.1f} %", cell["val_best_tau"], f"{100 * cell['val_best']['mean']:.1f} %",
             f"{100 * cell['test_at_val_best']['mean']:.1f} %") for name, cell in summary.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", choices=("birds", "cars"), default="birds",
                        help="the cartoon birds (default) or localization.py's car composites")
    parser.add_argument("--work", default=None, help="--set cars: localization.py's --work folder (its teachers)")
    args = parser.parse_args()
    if args.set == "cars":
        return cars_main(args)
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    n_classes, n_train, n_val, n_test = (8, 12, 6, 8) if args.quick else (20, 30, 10, 20)
    Xva, _, bva = make_fine_grained(n_classes, n_val, image_size=SIZE, random_state=1000, return_boxes=True)
    Xte, _, bte = make_fine_grained(n_classes, n_test, image_size=SIZE, random_state=2000, return_boxes=True)
    pretrained = pretrained_teacher()
    pre = {part: teacher_maps(pretrained, X) for part, X in (("val", Xva), ("test", Xte))}
    runs = []
    for seed in seeds:
        t = time.perf_counter()
        X, y = make_fine_grained(n_classes, n_train, image_size=SIZE, random_state=seed)
        clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(), validation_fraction=0.1, random_state=seed).fit(X, y)
        teacher = fine_tuned_teacher(clf)
        run = {"seed": seed, "teacher_fit_s": time.perf_counter() - t, "rates": {}}
        for part, Z, boxes in (("val", Xva, bva), ("test", Xte, bte)):
            for name, maps in candidates(teacher_maps(teacher, Z), pre[part]).items():
                run["rates"].setdefault(name, {})[part] = rates(maps, Z, boxes)
        runs.append(run)
        print(seed, {k: v["val"]["0.4"] for k, v in run["rates"].items()}, flush=True)

    summary = summarise(runs)
    rows = table_rows(summary)
    write_results(
        "teacher_maps" + ("_quick" if args.quick else ""),
        {"image_size": SIZE, "teacher_size": TEACHER_SIZE, "n_classes": n_classes, "seeds": seeds,
         "taus": list(TAUS), "summary": summary, "runs": runs},
        rows, HEADER,
        notes=(f"make_fine_grained cartoon birds, {SIZE} px, {n_classes} classes, {n_train} training images a class "
               f"(the seed's draw); val {n_val} and test {n_test} a class (fixed draws). The teacher's own boxes "
               f"(box='component', upsampled) from maps at {TEACHER_SIZE} px; share with IoU >= 0.5, mean over seeds "
               f"{seeds}. The fine-tuned teacher: SoftmaxClassifier(extractor=CNNFeatureExtractor(), "
               f"validation_fraction=0.1), what ObjectCropper().fit(X, y) trains on a set this small; the pretrained "
               f"one: EfficientNet-Lite0's ImageNet weights. 0.4 is the cropper's default tau; the val-best tau is "
               f"chosen on the mean over seeds from {list(TAUS)}."),
    )


if __name__ == "__main__":
    main()
