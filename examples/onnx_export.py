"""Serve a fitted model with onnxruntime: export it to ONNX and predict from image files.

Needs the ``onnx`` extra (``pip install -e ".[onnx]"``). Runs in about a minute on a
2-core CPU on synthetic fine-grained images.
"""

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.export import export_onnx
from skfg.serving import OnnxModel  # torch-free: a serving process needs onnxruntime, numpy, Pillow

X_train, y_train = make_fine_grained(n_classes=5, n_per_class=16, image_size=96, random_state=0)
X_test, y_test = make_fine_grained(n_classes=5, n_per_class=6, image_size=96, random_state=1)

# 1. A classifier on the CNN's features: the Pipeline becomes one graph, images -> probabilities.
pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=96)), ("clf", SoftmaxClassifier(random_state=0))])
pipe.fit(X_train, y_train)

with tempfile.TemporaryDirectory() as tmp:
    # 2. Export: the graph is checked against the torch model before the file is kept.
    t = time.perf_counter()
    path = export_onnx(pipe, Path(tmp) / "birds.onnx")
    print(f"exported in {time.perf_counter() - t:.0f} s: {Path(path).stat().st_size / 2**20:.1f} MB")

    # 3. Serve: OnnxModel decodes and resizes the images as skfg does, then runs onnxruntime.
    files = []
    for i, image in enumerate(X_test):
        files.append(str(Path(tmp) / f"bird_{i}.png"))
        Image.fromarray(image).save(files[-1])
    served = OnnxModel(path)
    print(f"inputs uint8 (n, 3, {served.image_size}, {served.image_size}); outputs {served.output_names}")
    gap = np.abs(served.predict_proba(files) - pipe.predict_proba(files)).max()
    agree = np.mean(served.predict(files) == pipe.predict(files))
    print(f"onnxruntime vs torch: largest probability difference {gap:.1e}, same label for {agree:.0%} of images")
    print(f"test accuracy {np.mean(served.predict(files) == y_test):.3f}")
