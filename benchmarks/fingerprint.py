"""Not a benchmark: digests of what a fixed small protocol predicts, to show that a
refactoring changed no number. Run it at two commits (e.g. ``git worktree add`` the older
one and run it there with ``PYTHONPATH`` set to that tree) and compare the printed JSON:

    python benchmarks/fingerprint.py > after.json

The protocol (stanford_cars_a, 5 classes, 8 training and 4 test images each, 96 px, the
eager engine where the parameter exists, seed 0): a SoftmaxClassifier fine-tuning 2 stages
for 2 epochs after a 1-epoch head warm-up, a loose ImpostorClassifier, an
ImprintedClassifier, an EarlyExitClassifier over stage4 / stage5 / head, and k-max
features of two layers. For each: a hash of its test outputs and its per-epoch losses.
"""

import hashlib
import json

import numpy as np

from _common import DATA
from skfg import CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier, SoftmaxClassifier
from skfg.datasets import load_image_folder

X, y = load_image_folder(DATA / "stanford_cars_a" / "train")
keep = np.concatenate([np.flatnonzero(y == c)[:8] for c in np.unique(y)[:5]])
X, y = X[keep], y[keep]
Xt, yt = load_image_folder(DATA / "stanford_cars_a" / "test")
kt = np.concatenate([np.flatnonzero(yt == c)[:4] for c in np.unique(yt)[:5]])
Xt = Xt[kt]
out = {}


def h(a):
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]



ext = dict(image_size=96, cache=False)
extra = {"engine": "eager"} if "engine" in CNNFeatureExtractor().get_params() else {}
for name, clf in [
    ("softmax", SoftmaxClassifier(extractor=CNNFeatureExtractor(**ext, **extra), trainable_blocks=2, max_epochs=2, head_epochs=1, random_state=0)),
    ("impostor", ImpostorClassifier(extractor=CNNFeatureExtractor(**ext, **extra), trainable_blocks=1, embedding_dim=16, max_epochs=2, random_state=0)),
    ("imprinted", ImprintedClassifier(extractor=CNNFeatureExtractor(**ext, **extra), trainable_blocks=1, max_epochs=2, random_state=0)),
    ("early_exit", EarlyExitClassifier(extractor=CNNFeatureExtractor(layers=["stage4", "stage5", "head"], **ext, **extra), alpha=0.3, random_state=0)),
]:
    clf.fit(X, y)
    p = clf.predict_proba(Xt) if hasattr(clf, "predict_proba") and name != "early_exit" else clf.decision_function(Xt)
    out[name] = {"proba": h(p), "losses": [round(e["loss"], 10) for e in getattr(clf, "history_", [])]}
    if name == "early_exit":
        out[name]["exits"] = clf.predict(Xt, return_exit=True)[1].tolist()
        out[name]["thresholds"] = clf.thresholds_.tolist()
f = CNNFeatureExtractor(layers=["stage4", "head"], pooling="kmax", **ext, **extra).fit().transform(Xt)
out["features"] = h(f)
print(json.dumps(out))
