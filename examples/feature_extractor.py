"""CNN features in a scikit-learn pipeline: pick the layer, tune the classifier, save it.

Runs in well under a minute on a 2-core CPU, on synthetic fine-grained images
(pass a folder as the first argument to use ``DIR/train`` and ``DIR/test`` instead).
"""

import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from skfg import CNNFeatureExtractor
from skfg.datasets import load_image_folder, make_fine_grained

if len(sys.argv) > 1:
    X_train, y_train = load_image_folder(sys.argv[1], split="train")
    X_test, y_test = load_image_folder(sys.argv[1], split="test")
else:
    X_train, y_train = make_fine_grained(n_classes=8, n_per_class=25, image_size=96, random_state=0)
    X_test, y_test = make_fine_grained(n_classes=8, n_per_class=10, image_size=96, random_state=1)

# 1. Which stage of the CNN separates the classes best? Extract three at once.
ext = CNNFeatureExtractor(layers=["stage4", "stage6", "head"], image_size=96).fit()
F_train, F_test = ext.transform(X_train), ext.transform(X_test)
for layer, cols in ext.feature_groups_.items():
    acc = LinearSVC().fit(F_train[:, cols], y_train).score(F_test[:, cols], y_test)
    print(f"{layer:>7s} ({cols.stop - cols.start:4d} features): test accuracy {acc:.3f}")

# 2. Tune the classifier on top of the CNN: the feature cache means each image
#    goes through the network once, however many folds and candidates.
pipe = Pipeline([("cnn", CNNFeatureExtractor(image_size=96)), ("clf", LinearSVC())])
search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=3).fit(X_train, y_train)
print("best C:", search.best_params_["clf__C"], " test accuracy:", round(search.score(X_test, y_test), 3))

# 3. Save and load the whole pipeline.
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "model.joblib"
    joblib.dump(search.best_estimator_, path)
    loaded = joblib.load(path)
    assert np.array_equal(loaded.predict(X_test), search.best_estimator_.predict(X_test))
    print(f"saved and reloaded ({path.stat().st_size / 1e6:.1f} MB): same predictions")

# 4. The inference engine: the default ("auto", i.e. "fused") folds every BatchNorm into
#    the convolution before it; "eager" runs the network as trained. Same features within
#    float32 rounding (docs/inference.rst has the timings on a 2-core CPU).
fused = CNNFeatureExtractor(image_size=96, cache=False).fit().transform(X_test)
eager = CNNFeatureExtractor(image_size=96, cache=False, engine="eager").fit().transform(X_test)
print(f"fused vs eager features: largest difference {np.abs(fused - eager).max():.1e}")
