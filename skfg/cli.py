"""The ``skfg`` command line: ``skfg demo``, ``skfg verify DIR``, ``skfg backbones``."""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ._table import format_table


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
        raise SystemExit(f"skfg demo: {root} has no train/ folder (expected DIR/train/<class>/<image>)")
    Xtr, ytr = load_image_folder(root / "train")
    for split in ("test", "val"):
        if (root / split).is_dir():
            Xte, yte = load_image_folder(root / split)
            return Xtr, ytr, Xte, yte, f"{root} ({split} split)"
    Xtr, Xte, ytr, yte = train_test_split(Xtr, ytr, test_size=0.25, stratify=ytr, random_state=0)
    return Xtr, ytr, Xte, yte, f"{root} (25% of train held out)"


def cmd_demo(args):
    from sklearn.base import clone

    from .extractor import CNNFeatureExtractor

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


def build_parser():
    parser = argparse.ArgumentParser(prog="skfg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit and compare classifiers on CNN features")
    demo.add_argument("--data", help="ImageFolder root with train/ and optional val/, test/")
    demo.add_argument("--backbone", default="efficientnet_lite0")
    demo.add_argument("--image-size", type=int, default=128)
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
