"""ELoPE in SoftmaxClassifier: the class-mean embedding loss and weighted k-max pooling.

Runs in about a minute on a 2-core CPU on synthetic fine-grained images.
"""

import time

import numpy as np
import torch

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained

X_train, y_train = make_fine_grained(n_classes=6, n_per_class=20, image_size=96, random_state=0)
X_test, y_test = make_fine_grained(n_classes=6, n_per_class=10, image_size=96, random_state=1)

# 1. On frozen global k-max pooled features (ELoPE eq. 3, K=4): a 64-d embedding layer
#    trained with cross-entropy alone, or with L = L_CE + 2 (L_w + L_b) (eq. 1, 5-10).
ext = CNNFeatureExtractor(image_size=96, pooling="kmax", k=4).fit()
F_train, F_test = ext.transform(X_train), ext.transform(X_test)
for loss in (None, "center", "class_means"):
    clf = SoftmaxClassifier(embedding_dim=64, embedding_loss=loss, random_state=0).fit(F_train, y_train)
    print(f"embedding_loss={loss!s:12} test accuracy {clf.score(F_test, y_test):.3f}")
print("class means (first class, first 4 dims):", np.round(clf.class_means_[0, :4], 3))

# 2. End to end with weighted k-max pooling (eq. 4) and the two-step schedule: 4 epochs
#    of plain k-max, then 2 epochs that also learn the K=4 pooling weights.
t = time.perf_counter()
tuned = SoftmaxClassifier(
    embedding_dim=64,
    embedding_loss="class_means",
    extractor=CNNFeatureExtractor(image_size=96, pooling="kmax_weighted", k=4),
    trainable_blocks=1,
    augment=False,  # frozen-prefix cache: the frozen stages run once per image
    max_epochs=4,
    kmax_weight_epochs=2,
    random_state=0,
).fit(X_train, y_train)
(weights,) = tuned.module_.pool_parameters()
print(f"fine-tuned last stage + weighted k-max: test accuracy {tuned.score(X_test, y_test):.3f} "
      f"in {time.perf_counter() - t:.0f} s; {tuned.n_iter_} epochs")
with torch.no_grad():
    print("learned pooling weights w_1..w_4:", np.round(weights.numpy(), 3))
