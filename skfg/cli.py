"""The ``skfg`` command line (also ``python -m skfg``).

``skfg demo`` compares classifiers on CNN features; ``skfg fit DATA -o MODEL`` trains one
and saves it; ``skfg predict MODEL IMAGES...`` and ``skfg evaluate MODEL DATA`` use it;
``skfg export MODEL --onnx FILE`` writes it as an ONNX graph; ``skfg verify DIR`` lists unreadable images; ``skfg backbones`` lists the backbones.
A user error (a missing file, an unreadable image, a bad option) prints one line naming
it and exits with status 2 (``--debug`` shows the traceback instead).
"""

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._table import format_table
from ._version import __version__

MODELS = ("softmax", "impostor", "imprinted", "early-exit")


def demo_classifiers():
    """``(name, estimator)`` rows of the demo table; each new skfg estimator adds one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    from .impostor import ImpostorClassifier
    from .imprinting import ImprintedClassifier
    from .softmax import SoftmaxClassifier

    return [
        ("LogisticRegression", LogisticRegression(C=10, max_iter=2000)),
        ("LinearSVC", LinearSVC()),
        ("SoftmaxClassifier", SoftmaxClassifier(random_state=0)),
        ("SoftmaxClassifier(embedding_dim=512)", SoftmaxClassifier(512, random_state=0)),
        ("ImpostorClassifier(impostors='loose')", ImpostorClassifier(impostors="loose", random_state=0)),
        ("ImprintedClassifier", ImprintedClassifier(random_state=0)),
    ]


def _demo_data(args):
    from sklearn.model_selection import train_test_split

    from .datasets import load_image_folder, make_fine_grained

    if args.data is None:
        Xtr, ytr = make_fine_grained(args.n_classes, args.n_train, args.image_size, random_state=0)
        Xte, yte = make_fine_grained(args.n_classes, args.n_test, args.image_size, random_state=1)
        return Xtr, ytr, Xte, yte, f"synthetic fine-grained ({args.n_classes} classes)"
    root = Path(args.data)
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{root} has no train/ folder (expected DIR/train/<class>/<image>)")
    Xtr, ytr = load_image_folder(root / "train")
    for split in ("test", "val"):
        if (root / split).is_dir():
            Xte, yte = load_image_folder(root / split)
            return Xtr, ytr, Xte, yte, f"{root} ({split} split)"
    Xtr, Xte, ytr, yte = train_test_split(Xtr, ytr, test_size=0.25, stratify=ytr, random_state=0)
    return Xtr, ytr, Xte, yte, f"{root} (25% of train held out)"


def _check_backbone(name):
    """A clear error, before any work, for a ``--backbone`` that is not registered."""
    import difflib

    from .backbones import list_backbones

    names = list_backbones()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"--backbone {name!r} is not a backbone; {hint}choose one of: {', '.join(names)}")


def cmd_demo(args):
    from sklearn.base import clone

    from .extractor import CNNFeatureExtractor

    _check_backbone(args.backbone)
    t0 = time.perf_counter()
    Xtr, ytr, Xte, yte, what = _demo_data(args)
    print(f"data: {what}: {len(Xtr)} train / {len(Xte)} test images, {len(np.unique(ytr))} classes")
    ext = CNNFeatureExtractor(args.backbone, image_size=args.image_size, verbose=args.verbose).fit()
    t = time.perf_counter()
    Ftr = ext.transform(Xtr)
    print(f"features: {args.backbone} at {args.image_size}px, {Ftr.shape[1]} dims, "
          f"{(time.perf_counter() - t) / len(Xtr) * 1000:.1f} ms/image")
    t = time.perf_counter()
    Fte = ext.transform(Xte)
    extract_ms = (time.perf_counter() - t) / len(Xte) * 1000
    rows = []
    for name, estimator in demo_classifiers():
        t = time.perf_counter()
        clf = clone(estimator).fit(Ftr, ytr)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        acc = float(np.mean(clf.predict(Fte) == yte))
        ms = extract_ms + (time.perf_counter() - t) / len(Xte) * 1000
        rows.append((name, f"{acc:.3f}", f"{fit_s:.1f}", f"{ms:.1f}"))
    print()
    print(format_table(rows, ("classifier", "test accuracy", "fit s", "ms/image (CNN incl.)")))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_verify(args):
    from .datasets import load_image_folder, verify_images

    try:
        X, _ = load_image_folder(args.dir)
    except FileNotFoundError as exc:  # a usage error, not "bad images found" (exit 1)
        print(f"skfg verify: {exc}", file=sys.stderr)
        return 2
    bad = verify_images(X, n_jobs=args.n_jobs, image_size=args.image_size)
    for b in bad:
        print(b.error)
    print(f"{len(X)} images checked, {len(bad)} unreadable")
    return 1 if bad else 0


def cmd_backbones(args):
    from .backbones import get_backbone_spec, list_backbones

    for name in list_backbones():
        spec = get_backbone_spec(name)
        print(f"{name:20s} {spec.description}\n{'':20s} stages: {', '.join(spec.stages)}")
    return 0


SPLITS = ("train", "val", "test")


def _split(root, split):
    """``root/split`` when it exists; ``root`` itself when it is a folder of class folders
    (no ``train``/``val``/``test`` in it); an error for a split root without ``split``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no data folder at {root} (expected {root}/[{split}/]<class>/<image>)")
    if (root / split).is_dir():
        return root / split
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        raise FileNotFoundError(f"{root} has no {split}/ folder (it has {', '.join(p + '/' for p in present)})")
    return root


def _writable(path, what):
    """Check, before any work, that the folder of the file ``path`` exists."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} to write the {what} {Path(path).name} into")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write the {what} into {folder}")
    return path


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_model(args):
    """The estimator ``skfg fit`` trains: the CNN's features into a classifier (a Pipeline), or
    with ``--fine-tune`` the classifier given the extractor, trained end to end."""
    from sklearn.pipeline import Pipeline

    from .extractor import CNNFeatureExtractor
    from .impostor import ImpostorClassifier
    from .imprinting import ImprintedClassifier
    from .early_exit import EarlyExitClassifier
    from .softmax import SoftmaxClassifier

    verbose = not args.quiet
    if args.model == "early-exit":
        if args.fine_tune:
            raise ValueError("--fine-tune is not available for --model early-exit (its exits train on the "
                             "frozen CNN's features)")
        layers = args.exits.split(",")
        ext = CNNFeatureExtractor(args.backbone, layers=layers, image_size=args.image_size, verbose=verbose)
        return EarlyExitClassifier(extractor=ext, alpha=args.alpha, random_state=args.seed)
    ext = CNNFeatureExtractor(args.backbone, image_size=args.image_size, verbose=verbose)
    cls = {"softmax": SoftmaxClassifier, "impostor": ImpostorClassifier, "imprinted": ImprintedClassifier}[args.model]
    params = {"random_state": args.seed}
    if args.max_epochs is not None:
        params["max_epochs"] = args.max_epochs
    if args.fine_tune:
        if args.trainable_blocks is not None:
            params["trainable_blocks"] = args.trainable_blocks
        return cls(extractor=ext, verbose=verbose, checkpoint_dir=checkpoint_dir(args), **params)
    if args.trainable_blocks is not None:
        raise ValueError("--trainable-blocks needs --fine-tune (without it the CNN is not trained)")
    if args.checkpoint_dir is not None:
        raise ValueError("--checkpoint-dir needs --fine-tune (a classifier on frozen features trains in seconds)")
    return Pipeline([("cnn", ext), ("clf", cls(**params))])


def checkpoint_dir(args):
    """Where ``skfg fit --fine-tune`` keeps its checkpoint: ``--checkpoint-dir``, by default
    ``<output>.checkpoints`` beside the model file."""
    return args.checkpoint_dir or f"{args.output}.checkpoints"


def save(model, path):
    """``.skops``: the safe format (:func:`skfg.save_model`); any other ending: joblib.
    Atomic either way: a failed save leaves the previous file as it was."""
    if Path(path).suffix == ".skops":
        from .persistence import save_model

        save_model(model, path)
    else:
        import joblib

        from ._files import atomic_path

        with atomic_path(path) as tmp:
            joblib.dump(model, tmp)


def load(path, trust_pickle):
    """A model file: skfg's safe format, or with ``trust_pickle`` a joblib/pickle file."""
    from .persistence import is_safe_format, load_model

    if os.path.isfile(path):
        pickled = not is_safe_format(path)
        if pickled and not trust_pickle:
            raise ValueError(f"{path} is not a file of skfg's safe format (.skops); if it is a joblib/pickle file "
                             "from a source you trust, pass --trust-pickle (loading a pickle can run any code)")
        if pickled:  # (load_model also forgets the folders the file names for writing)
            return load_model(path, allow_pickle=True)
    return load_model(path)


def _final(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def cmd_fit(args):
    from .datasets import load_image_folder

    _writable(args.output, "model")
    _check_backbone(args.backbone)
    X, y = load_image_folder(_split(args.data, "train"))
    model = build_model(args)
    ckpt = checkpoint_dir(args) if args.fine_tune else None
    if ckpt and any(Path(ckpt).rglob("checkpoint.pt")):
        print(f"skfg fit: resuming from the checkpoint in {ckpt}", file=sys.stderr)
    t = time.perf_counter()
    model.fit(X, y)
    fit_s = time.perf_counter() - t
    if getattr(_final(model), "interrupted_", False):  # Ctrl-C after an epoch: never saved as the model
        where = (f"the checkpoint is kept in {ckpt}: run the same command again to resume"
                 if ckpt else "nothing was kept")
        print(f"skfg fit: interrupted; {args.output} was not written; {where}", file=sys.stderr)
        return 130
    save(model, args.output)
    keep_onnx_copy(args.output, model)  # `skfg predict` then starts without torch
    if ckpt and not args.checkpoint_dir:  # the default folder has done its work
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
    size = os.path.getsize(args.output) / 2**20
    print(f"fitted {args.model} on {len(X)} images of {len(np.unique(y))} classes in {fit_s:.0f} s; "
          f"saved {args.output} ({size:.1f} MB)")
    val = Path(args.data) / "val"
    if val.is_dir():
        Xv, yv = load_image_folder(val)
        print(f"val accuracy: {np.mean(model.predict(Xv) == yv):.3f} ({len(Xv)} images)")
    return 0


def _images(items):
    """Image files named on the command line; folders are searched (recursively)."""
    from ._decode import IMAGE_EXTENSIONS

    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no images in {p}")
            paths.extend(found)
        elif p.is_file():
            paths.append(str(p))
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return np.asarray(paths, dtype=object)


def _top_k(model, X, k):
    """``(labels (n, k), probabilities (n, k) or None)``, best first."""
    if k == 1 and not hasattr(model, "predict_proba"):
        return model.predict(X)[:, None], None
    if not hasattr(model, "predict_proba"):
        raise ValueError(f"--top-k {k} needs a model with predict_proba; {type(model).__name__} has none")
    proba = model.predict_proba(X)
    k = min(k, proba.shape[1])
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return np.asarray(model.classes_)[order], np.take_along_axis(proba, order, axis=1)


def served_copy(path):
    """The ONNX copy of the model file ``path`` that an earlier ``skfg fit`` or ``skfg
    predict`` cached (:func:`skfg.serving.onnx_copy_path`), as an
    :class:`~skfg.serving.OnnxModel`; None without a copy, without onnxruntime, or for a
    copy that has no probabilities (a damaged copy is deleted). Serving it imports neither
    torch nor torchvision."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or not os.path.isfile(path):
        return None
    from .serving import OnnxModel, onnx_copy_path

    try:
        copy = onnx_copy_path(path)
        if not copy.is_file():
            return None
    except OSError:
        return None
    try:
        model = OnnxModel(copy)
    except Exception:  # noqa: BLE001 - a damaged copy: dropped (the model file answers and a new one is made)
        copy.unlink(missing_ok=True)
        return None
    return model if model.classes_ is not None and "probabilities" in model.output_names else None


def keep_onnx_copy(path, model):
    """Cache an ONNX copy of ``model``, saved in the safe format at ``path``, where later
    ``skfg predict`` calls serve it (:func:`served_copy`); nothing where the model does not
    export (e.g. early exits), the ``[onnx]`` extra is missing or the cache folder is not
    writable: the model file still answers, only slower to start."""
    import logging

    from ._engine import onnxruntime_available
    from .persistence import is_safe_format

    if not onnxruntime_available() or not is_safe_format(path):
        return
    from .export import export_onnx
    from .serving import onnx_copy_path

    try:
        copy = onnx_copy_path(path)
        if not copy.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(model, copy)  # written whole or not at all; checked against the torch model
    except Exception as exc:  # noqa: BLE001 - only a faster start is lost
        logging.getLogger("skfg").debug("skfg: no ONNX copy of %s (%s: %s)", path, type(exc).__name__, exc)


def cmd_predict(args):
    served = served_copy(args.model)  # a model cached as ONNX: no torch to import (benchmarks/engines.py)
    model = served or load(args.model, args.trust_pickle)
    X = _images(args.images)
    labels, proba = _top_k(model, X, args.top_k)
    _print_predictions(args, X, labels, proba)
    if served is None:
        keep_onnx_copy(args.model, model)  # the next call starts fast
    return 0


def _print_predictions(args, X, labels, proba):
    if args.format == "json":
        rows = []
        for i, path in enumerate(X):
            preds = [{"label": str(lab)} for lab in labels[i]]
            if proba is not None:
                for pred, q in zip(preds, proba[i]):
                    pred["probability"] = float(q)
            rows.append({"path": path, "predictions": preds})
        print(json.dumps(rows, indent=2), flush=True)
        return
    out = csv.writer(sys.stdout, lineterminator="\n")
    cols = ("label",) if proba is None else ("label", "probability")
    k = labels.shape[1]
    out.writerow(["path", *cols] if k == 1 else ["path", *(f"{c}_{j}" for j in range(1, k + 1) for c in cols)])
    for i, path in enumerate(X):
        row = [path]
        for j in range(k):
            row += [labels[i, j]] + ([] if proba is None else [f"{proba[i, j]:.4f}"])
        out.writerow(row)
    sys.stdout.flush()


def cmd_evaluate(args):
    from sklearn.metrics import classification_report, confusion_matrix

    from .datasets import load_image_folder

    if args.confusion:
        _writable(args.confusion, "confusion matrix")
    model = load(args.model, args.trust_pickle)
    X, y = load_image_folder(_split(args.data, args.split))
    unknown = sorted(set(y) - {str(c) for c in model.classes_})
    if unknown:
        raise ValueError(f"{args.data}: classes the model was not trained on: {', '.join(unknown[:5])}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    t = time.perf_counter()
    labels, _ = _top_k(model, X, 5 if hasattr(model, "predict_proba") else 1)
    ms = 1000 * (time.perf_counter() - t) / len(X)
    pred = labels[:, 0]
    result = {"n_images": len(X), "accuracy": float(np.mean(pred == y)), "ms_per_image": ms}
    if labels.shape[1] >= 5:
        result["top5_accuracy"] = float(np.mean((labels[:, :5] == y[:, None]).any(1)))
    if args.format == "json":
        result["report"] = classification_report(y, pred, output_dict=True, zero_division=0)
        print(json.dumps(result, indent=2))
    else:
        print(f"{len(X)} images: accuracy {result['accuracy']:.3f}"
              + (f", top-5 {result['top5_accuracy']:.3f}" if "top5_accuracy" in result else "")
              + f", {ms:.1f} ms/image\n")
        print(classification_report(y, pred, zero_division=0))
    if args.confusion:
        classes = np.asarray(model.classes_).astype(str)
        cm = confusion_matrix(y, pred, labels=classes)
        if args.confusion.endswith(".csv"):
            with open(args.confusion, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["true \\ predicted", *classes])
                w.writerows([c, *row] for c, row in zip(classes, cm.tolist()))
        else:
            try:
                from sklearn.metrics import ConfusionMatrixDisplay
                import matplotlib

                matplotlib.use("Agg")
            except ImportError as exc:
                raise ImportError("--confusion as an image needs matplotlib: pip install 'skfg[plot]' "
                                  "(or write a .csv)") from exc
            disp = ConfusionMatrixDisplay(cm, display_labels=classes)
            size = max(6, 0.25 * len(classes))
            disp.plot(include_values=len(classes) <= 20, xticks_rotation="vertical", colorbar=False)
            disp.figure_.set_size_inches(size, size)
            disp.figure_.savefig(args.confusion, bbox_inches="tight")
        print(f"confusion matrix written to {args.confusion}", file=sys.stderr)
    return 0


def cmd_export(args):
    from .export import OnnxModel, export_onnx

    _writable(args.onnx, "ONNX file")
    calibration = None
    if args.int8 is not None:  # (before loading the model: a wrong folder fails at once)
        found = _images([args.int8])
        # evenly spaced over the sorted files, so every class folder is represented
        calibration = found[np.linspace(0, len(found) - 1, min(len(found), args.calibration_images)).astype(int)]
    model = load(args.model, args.trust_pickle)
    t = time.perf_counter()
    # checked against the torch model on random images (float32), or for running (int8)
    export_onnx(model, args.onnx, quantize=None if calibration is None else "int8", calibration=calibration)
    onnx_model = OnnxModel(args.onnx)
    size = os.path.getsize(args.onnx) / 2**20
    what = (f"int8, calibrated on {len(calibration)} images of {args.int8}" if calibration is not None
            else "onnxruntime matches torch within 1e-3")
    print(f"exported {type(model).__name__} to {args.onnx} ({size:.1f} MB) in {time.perf_counter() - t:.0f} s: "
          f"input images uint8 (n, 3, {onnx_model.image_size}, {onnx_model.image_size}) ({onnx_model.resize}), "
          f"outputs {', '.join(onnx_model.output_names)}; {what}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the cause and the valid choices)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    parser = _Parser(prog="skfg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skfg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = sub.add_parser("fit", help="train a classifier on an image folder and save it")
    fit.add_argument("data", help="ImageFolder root: DATA/train/<class>/<image> (or DATA/<class>/<image>); "
                                  "DATA/val, when present, is scored after the fit")
    fit.add_argument("-o", "--output", required=True, help="model file: .skops (safe format) or .joblib")
    fit.add_argument("--model", choices=MODELS, default="softmax")
    fit.add_argument("--fine-tune", action="store_true",
                     help="train the CNN with the classifier (the fine-tuning recipe: minutes per thousand "
                          "images on a laptop CPU, see docs/training.rst) instead of a classifier on the frozen "
                          "CNN's features")
    fit.add_argument("--backbone", default="efficientnet_lite0", help="a name from `skfg backbones`")
    fit.add_argument("--image-size", type=int, default=160)
    fit.add_argument("--trainable-blocks", type=int, default=None, help="with --fine-tune: stages trained "
                                                                       "(default: all)")
    fit.add_argument("--max-epochs", type=int, default=None, help="default: the estimator's")
    fit.add_argument("--exits", default="stage4,stage6,head", help="early-exit: the exit stages")
    fit.add_argument("--alpha", type=float, default=0.1, help="early-exit: the false-acceptance rate")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--checkpoint-dir", help="with --fine-tune: the folder of the checkpoint written after every "
                                              "epoch (default: OUTPUT.checkpoints, removed once the model is "
                                              "saved); after Ctrl-C the same command resumes from it")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    fit.set_defaults(func=cmd_fit)

    predict = sub.add_parser("predict", help="predict the class of images (CSV or JSON on stdout)")
    predict.add_argument("model", help="a file written by skfg fit (or skfg.save_model / joblib)")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--top-k", type=_positive_int, default=1)
    predict.add_argument("--format", choices=("csv", "json"), default="csv")
    predict.add_argument("--trust-pickle", action="store_true",
                         help="also load a joblib/pickle model (it can run any code it holds)")
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="accuracy, top-5 and a per-class report on an image folder")
    evaluate.add_argument("model")
    evaluate.add_argument("data", help="ImageFolder root; DATA/<split> is used when present")
    evaluate.add_argument("--split", default="test", help="the split folder to score (when DATA has split folders)")
    evaluate.add_argument("--format", choices=("text", "json"), default="text")
    evaluate.add_argument("--confusion", help="write the confusion matrix: .csv, or an image (.png, needs "
                                              "matplotlib)")
    evaluate.add_argument("--trust-pickle", action="store_true",
                          help="also load a joblib/pickle model (it can run any code it holds)")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="export a fitted model for serving (ONNX, needs the [onnx] extra)")
    export.add_argument("model")
    export.add_argument("--onnx", required=True, help="the .onnx file to write")
    export.add_argument("--int8", metavar="IMAGES",
                        help="quantize to int8 (about 2x faster on a CPU), calibrated on the images of this folder "
                             "(training images, searched recursively; never the test set)")
    export.add_argument("--calibration-images", type=_positive_int, default=256, metavar="N",
                        help="--int8: at most N of the folder's images, evenly spaced (default: 256)")
    export.add_argument("--trust-pickle", action="store_true",
                        help="also load a joblib/pickle model (it can run any code it holds)")
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="fit and compare classifiers on CNN features")
    demo.add_argument("--data", help="ImageFolder root with train/ and optional val/, test/")
    demo.add_argument("--backbone", default="efficientnet_lite0", help="a name from `skfg backbones`")
    demo.add_argument("--image-size", type=int, default=160, help="as CNNFeatureExtractor's default")
    demo.add_argument("--n-classes", type=int, default=20, help="synthetic data: classes")
    demo.add_argument("--n-train", type=int, default=40, help="synthetic data: train images per class")
    demo.add_argument("--n-test", type=int, default=20, help="synthetic data: test images per class")
    demo.add_argument("--verbose", action="store_true", help="progress bars")
    demo.set_defaults(func=cmd_demo)
    verify = sub.add_parser("verify", help="list every unreadable image under DIR")
    verify.add_argument("dir")
    verify.add_argument("--n-jobs", type=int, default=2)
    verify.add_argument("--image-size", type=int, default=224,
                        help="also report images too large when resized to this size (0: skip)")
    verify.set_defaults(func=cmd_verify)
    backbones = sub.add_parser("backbones", help="list backbones and their stages")
    backbones.set_defaults(func=cmd_backbones)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"skfg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a user error: one line naming it (--debug: the traceback)
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"skfg {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
