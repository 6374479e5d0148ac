"""The ``skfg`` command line (also ``python -m skfg``).

``skfg demo`` compares classifiers on CNN features; ``skfg fit DATA -o MODEL`` trains one
and saves it; ``skfg predict MODEL IMAGES...`` and ``skfg evaluate MODEL DATA`` use it;
``skfg export MODEL --onnx FILE`` writes it as an ONNX graph; ``skfg verify DIR`` lists unreadable images; ``skfg backbones`` lists the backbones.
A user error (a missing file, an unreadable image, a bad option) prints one line naming
it and exits with status 2 (``--debug`` shows the traceback instead).
"""

import argparse
import csv
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._table import format_table
from ._version import __version__

MODELS = ("softmax", "impostor", "imprinted", "early-exit")
DESCRIPTION = """Fine-grained image classification with lightweight CNNs, from the shell.

  skfg fit DATA -o model.skops        train a classifier on DATA/train/<class>/<image>
  skfg predict model.skops IMAGES...  predict the class of images (CSV or JSON)
  skfg evaluate model.skops DATA      accuracy and a per-class report on DATA/test
  skfg export model.skops --onnx F    write an ONNX file for onnxruntime
  skfg verify DIR                     list every unreadable image under DIR
  skfg demo                           compare classifiers on CNN features

A user error prints one line naming it and exits with status 2 (--debug: the traceback)."""


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

    from .datasets import load_image_folder, make_fine_grained, split_names

    if args.data is None:
        Xtr, ytr = make_fine_grained(args.n_classes, args.n_train, args.image_size, random_state=0)
        Xte, yte = make_fine_grained(args.n_classes, args.n_test, args.image_size, random_state=1)
        return Xtr, ytr, Xte, yte, f"synthetic fine-grained ({args.n_classes} classes)"
    root = Path(args.data)
    Xtr, ytr = load_image_folder(root, split="train")
    for split in ("test", "val"):
        if split in split_names(root):
            Xte, yte = load_image_folder(root, split=split)
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
    from .datasets import load_image_folder, split_names, verify_images

    try:  # a split root: every split
        X = np.concatenate([load_image_folder(args.dir, split=s)[0] for s in split_names(args.dir)]
                           or [load_image_folder(args.dir)[0]])
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


def _load_split(root, split):
    """``root/split`` when ``root`` holds split folders, else ``root`` itself (a folder of
    class folders): the images and labels, read as ``load_image_folder`` does."""
    from .datasets import load_image_folder, split_names

    return load_image_folder(root, split=split if split_names(root) else None)


def _writable(path, what):
    """Check, before any work, that the file ``path`` can be written: its folder exists and
    is writable, and ``path`` is not a folder."""
    path_ = Path(path)
    if path_.is_dir():
        raise IsADirectoryError(f"the {what} {path} is a folder; give a file name")
    folder = path_.resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"No such folder: {folder} (to write the {what} {path_.name} into)")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write the {what} into {folder}")
    return path


def _readable_images(X, y, what, image_size, skip):
    """``(X, y)`` once every image has been decoded (:func:`skfg.datasets.verify_images`):
    all unreadable ones are listed at once before any training; they stop the command
    unless ``skip`` (``--skip-unreadable``) leaves them out."""
    from .datasets import verify_images

    bad = verify_images(X, image_size=image_size)
    if not bad:
        return X, y
    for b in bad:
        print(f"unreadable: {b.error}", file=sys.stderr)
    if not skip:
        raise ValueError(f"{len(bad)} of the {len(X)} {what} images are unreadable (listed above; `skfg verify` "
                         "lists them too): remove or replace them, or pass --skip-unreadable to leave them out")
    print(f"skfg fit: leaving out {len(bad)} unreadable {what} images", file=sys.stderr)
    keep = np.setdiff1d(np.arange(len(X)), [b.index for b in bad])
    return X[keep], y[keep]


MODEL_SUFFIXES = (".skops", ".joblib", ".pkl", ".pickle")


def _model_file(text):
    """``-o``: a model file name with a known ending (the ending chooses the format)."""
    if Path(text).suffix.lower() not in MODEL_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no model file ending: use .skops (the safe format) or .joblib (a pickle that needs "
            "--trust-pickle to load)")
    return text


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

    verbose = False if args.quiet else "auto"  # bars in a terminal, for work longer than a few seconds
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
    if Path(path).suffix.lower() == ".skops":
        from .persistence import save_model

        save_model(model, path)
    else:
        import joblib

        from ._files import atomic_path

        with atomic_path(path) as tmp:
            joblib.dump(model, tmp)


def load(path, trust_pickle, onnx=False):
    """A model file: skfg's safe format, or with ``trust_pickle`` a joblib/pickle file; with
    ``onnx`` also an ONNX file of :func:`skfg.export.export_onnx` with its classes (served
    by :class:`skfg.serving.OnnxModel`). The file's kind is read from its first bytes
    before anything is unpickled: an image, an ONNX file, a damaged or a foreign file each
    get their own message, and only a pickle the advice to trust it."""
    from .persistence import load_model, model_file_kind

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such model file: {path}" + (" (a folder)" if os.path.isdir(path) else ""))
    kind = model_file_kind(path)
    if kind == "image":
        raise ValueError(f"{path} is an image, not a model file: the model file comes first "
                         "(skfg predict MODEL IMAGE..., skfg evaluate MODEL DATA)")
    if kind == "onnx":
        if not onnx:
            raise ValueError(f"{path} is an ONNX file, not a model file of skfg fit (it is already exported)")
        from .serving import OnnxModel

        model = OnnxModel(path)
        if model.classes_ is None or "probabilities" not in model.output_names:
            raise ValueError(f"{path} is an ONNX file of features, not of a classifier: it has no classes")
        return model
    if kind == "pickle" and not trust_pickle:
        raise ValueError(f"{path} is a joblib/pickle file, not skfg's safe format (.skops); if it comes from a "
                         "source you trust, pass --trust-pickle (loading a pickle can run any code it holds)")
    return load_model(path, allow_pickle=kind == "pickle")  # (also forgets the folders the file names for writing)


def _final(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def cmd_fit(args):
    from .datasets import load_image_folder, split_names

    _writable(args.output, "model")
    if Path(args.output).suffix.lower() == ".skops" and importlib.util.find_spec("skops") is None:
        raise ImportError(f"{args.output}: the safe model format needs skops: pip install skops (skfg's "
                          "[safe] extra), or write a .joblib file")
    if args.fine_tune and args.checkpoint_dir:
        _writable(Path(args.checkpoint_dir) / "checkpoint.pt", "checkpoint")
    _check_backbone(args.backbone)
    model = build_model(args)  # (option errors before any work)
    X, y = _load_split(args.data, "train")
    X, y = _readable_images(X, y, "training", args.image_size, args.skip_unreadable)
    Xv = yv = None
    if "val" in split_names(args.data):  # scored after the fit: checked before it
        Xv, yv = load_image_folder(args.data, split="val")
        Xv, yv = _readable_images(Xv, yv, "validation", args.image_size, args.skip_unreadable)
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
    if Xv is not None:
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
    model = served or load(args.model, args.trust_pickle, onnx=True)
    X = _images(args.images)
    labels, proba = _top_k(model, X, args.top_k)
    _print_predictions(args, X, labels, proba)
    from .serving import OnnxModel

    if served is None and not isinstance(model, OnnxModel):
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

    if args.confusion:
        _writable(args.confusion, "confusion matrix")
    model = load(args.model, args.trust_pickle, onnx=True)
    X, y = _load_split(args.data, args.split)
    unknown = sorted(set(y) - {str(c) for c in model.classes_})
    if unknown:
        names = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        if not args.known_classes_only:
            raise ValueError(f"{args.data}: classes the model was not trained on: {names} (pass "
                             "--known-classes-only to score the images of the others)")
        known = ~np.isin(y, unknown)
        print(f"skfg evaluate: leaving out {int((~known).sum())} images of classes the model was not trained on: "
              f"{names}", file=sys.stderr)
        X, y = X[known], y[known]
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
                raise ImportError("--confusion as an image needs matplotlib: pip install matplotlib (skfg's [plot] "
                                  "extra), or write a .csv") from exc
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
    """argparse, with a usage error as one line (the cause and the valid choices), and a
    "did you mean" for a misspelt option."""

    options = set()  # every subcommand's option strings (the top parser reports unknown ones)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        _Parser.options.update(o for o in action.option_strings if o.startswith("--"))
        return action

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            import difflib

            for arg in (a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("-")):
                guess = difflib.get_close_matches(arg, sorted(_Parser.options), n=1)
                if guess and guess[0] == arg:  # an option of skfg itself, after the command
                    message += f" ({arg} goes before the command: skfg {arg} COMMAND ...)"
                elif guess:
                    message += f" (did you mean {guess[0]}?)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    parser = _Parser(prog="skfg", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skfg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = sub.add_parser("fit", help="train a classifier on an image folder and save it")
    fit.add_argument("data", help="ImageFolder root: DATA/train/<class>/<image> (or DATA/<class>/<image>); "
                                  "DATA/val, when present, is scored after the fit")
    fit.add_argument("-o", "--output", required=True, type=_model_file,
                     help="the model file to write: .skops (the safe format; needs the [safe] extra) or .joblib "
                          "(a pickle: loading it needs --trust-pickle)")
    fit.add_argument("--model", choices=MODELS, default="softmax",
                     help="the classifier on the CNN's features (default: %(default)s; see docs/user_guide.rst)")
    fit.add_argument("--fine-tune", action="store_true",
                     help="train the CNN with the classifier (the fine-tuning recipe: minutes per thousand "
                          "images on a laptop CPU, see docs/training.rst) instead of a classifier on the frozen "
                          "CNN's features")
    fit.add_argument("--backbone", default="efficientnet_lite0",
                     help="the CNN: a name from `skfg backbones` (default: %(default)s)")
    fit.add_argument("--image-size", type=_positive_int, default=224,
                     help="images are resized to this many pixels square (default: %(default)s; 160 is faster "
                          "and less accurate)")
    fit.add_argument("--trainable-blocks", type=int, default=None, help="with --fine-tune: stages trained "
                                                                       "(default: all)")
    fit.add_argument("--max-epochs", type=_positive_int, default=None,
                     help="training epochs (default: the estimator's)")
    fit.add_argument("--exits", default="stage4,stage6,head",
                     help="--model early-exit: the exit stages, comma-separated (default: %(default)s)")
    fit.add_argument("--alpha", type=float, default=0.1,
                     help="--model early-exit: the false-acceptance rate of each exit (default: %(default)s)")
    fit.add_argument("--seed", type=int, default=0,
                     help="random seed of the training (default: %(default)s; the same seed, data and options "
                          "give the same model)")
    fit.add_argument("--checkpoint-dir", help="with --fine-tune: the folder of the checkpoint written after every "
                                              "epoch (default: OUTPUT.checkpoints, removed once the model is "
                                              "saved); after Ctrl-C the same command resumes from it")
    fit.add_argument("--skip-unreadable", action="store_true",
                     help="leave out the images that cannot be decoded (listed on stderr) instead of stopping")
    fit.add_argument("--quiet", action="store_true",
                     help="no progress bars (by default they show in a terminal for steps longer than a few seconds)")
    fit.set_defaults(func=cmd_fit)

    predict = sub.add_parser("predict", help="predict the class of images (CSV or JSON on stdout)")
    predict.add_argument("model", help="a file written by skfg fit (or skfg.save_model / joblib), or an .onnx "
                                       "file written by skfg export")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--top-k", type=_positive_int, default=1,
                         help="the k most probable classes of each image, with their probabilities (default: "
                              "%(default)s)")
    predict.add_argument("--format", choices=("csv", "json"), default="csv",
                         help="the output on stdout (default: %(default)s)")
    predict.add_argument("--trust-pickle", action="store_true",
                         help="also load a joblib/pickle model (it can run any code it holds)")
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="accuracy, top-5 and a per-class report on an image folder")
    evaluate.add_argument("model", help="a file written by skfg fit, or an .onnx file written by skfg export")
    evaluate.add_argument("data", help="ImageFolder root: DATA/<split>/<class>/<image> (or DATA/<class>/<image>)")
    evaluate.add_argument("--split", default="test",
                          help="the split folder to score, when DATA has split folders (default: %(default)s)")
    evaluate.add_argument("--format", choices=("text", "json"), default="text",
                          help="the report on stdout (default: %(default)s)")
    evaluate.add_argument("--known-classes-only", action="store_true",
                          help="score only the images of classes the model knows (default: a class folder the "
                               "model was not trained on is an error)")
    evaluate.add_argument("--confusion", help="write the confusion matrix: .csv, or an image (.png, needs "
                                              "matplotlib)")
    evaluate.add_argument("--trust-pickle", action="store_true",
                          help="also load a joblib/pickle model (it can run any code it holds)")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="export a fitted model for serving (ONNX, needs the [onnx] extra)")
    export.add_argument("model", help="a file written by skfg fit")
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
    demo.add_argument("--backbone", default="efficientnet_lite0",
                      help="the CNN: a name from `skfg backbones` (default: %(default)s)")
    demo.add_argument("--image-size", type=_positive_int, default=160,
                      help="images are resized to this many pixels square (default: %(default)s)")
    demo.add_argument("--n-classes", type=_positive_int, default=20,
                      help="synthetic data: classes (default: %(default)s)")
    demo.add_argument("--n-train", type=_positive_int, default=40,
                      help="synthetic data: train images per class (default: %(default)s)")
    demo.add_argument("--n-test", type=_positive_int, default=20,
                      help="synthetic data: test images per class (default: %(default)s)")
    demo.add_argument("--verbose", action="store_true", help="progress bars")
    demo.set_defaults(func=cmd_demo)
    verify = sub.add_parser("verify", help="list every unreadable image under DIR")
    verify.add_argument("dir", help="an image folder (DATA/<class>/<image>, or every split of DATA/<split>/...)")
    verify.add_argument("--n-jobs", type=_positive_int, default=2, help="decoding threads (default: %(default)s)")
    verify.add_argument("--image-size", type=int, default=224,
                        help="also report images too large when resized to this size (default: %(default)s; 0: skip)")
    verify.set_defaults(func=cmd_verify)
    backbones = sub.add_parser("backbones", help="list backbones and their stages")
    backbones.set_defaults(func=cmd_backbones)
    return parser


def _warnings_as_lines(command):
    """``warnings.showwarning`` for the command line: ``skfg CMD: Category: message`` on one
    line of stderr, without the Python file and source line (progress bars stay apart:
    :func:`skfg._messages.progress_bar` writes it above them)."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"skfg {command}: {category.__name__}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)

    return show


def main(argv=None):
    import warnings

    args = build_parser().parse_args(argv)
    show = warnings.showwarning
    warnings.showwarning = _warnings_as_lines(args.command)
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
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
