"""ImpostorClassifier: sigma by grid search, open-set scores, retrieval, compression.

Runs in about a minute on a 2-core CPU on synthetic fine-grained images.
"""

import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, ImpostorClassifier
from skfg.datasets import make_fine_grained
from skfg.metrics import ks_distance, recall_at_k

X, y = make_fine_grained(n_classes=8, n_per_class=40, image_size=96, random_state=0)
X_test, y_test = make_fine_grained(n_classes=8, n_per_class=10, image_size=96, random_state=1)
seen = np.isin(y, np.unique(y)[:6])
seen_test = np.isin(y_test, np.unique(y)[:6])

# 1. sigma chosen by cross-validation; the CNN runs once per image thanks to the feature cache.
pipe = Pipeline([
    ("cnn", CNNFeatureExtractor(image_size=96)),
    ("clf", ImpostorClassifier(impostors="loose", embedding_dim=128, max_epochs=30, random_state=0)),
])
search = GridSearchCV(pipe, {"clf__sigma": [0.3, 0.6, 1.0]}, cv=3).fit(X[seen], y[seen])
print(f"best sigma {search.best_params_['clf__sigma']}, "
      f"test accuracy on the 6 seen classes {search.score(X_test[seen_test], y_test[seen_test]):.3f}")

# 2. Open set: images of the 2 classes never seen in training get more uncertain predictions.
model = search.best_estimator_
cnn, clf = model.named_steps["cnn"], model.named_steps["clf"]
score_seen = clf.open_set_score(cnn.transform(X_test[seen_test]))
score_unseen = clf.open_set_score(cnn.transform(X_test[~seen_test]))
print(f"prediction entropy: seen {score_seen.mean():.2f}, unseen {score_unseen.mean():.2f}, "
      f"KS distance {ks_distance(score_seen, score_unseen):.2f}")

# 3. Retrieval on the unseen classes with the learned embedding.
emb = clf.transform(cnn.transform(X_test[~seen_test]))
print(f"Recall@1 on unseen classes: {recall_at_k(emb, y_test[~seen_test], ks=1):.2f}")

# 4. Impostors compressed to 16 bytes each by product quantisation (PQ).
#    a) Loose impostors, compressed after training; their codebooks are then tuned on the
#       training embeddings (codebook_epochs), the codes staying as they are.
F, F_test = cnn.transform(X), cnn.transform(X_test)
kw = dict(impostors="loose", embedding_dim=128, max_epochs=20, random_state=0)
plain = ImpostorClassifier(**kw).fit(F, y)
print(f"loose, uncompressed: test accuracy {plain.score(F_test, y_test):.3f}")
pq = ImpostorClassifier(index="pq", code_size=16, **kw).fit(F, y)
print(f"loose, PQ codes of {pq.index_.code_bytes_per_vector} bytes (uncompressed {4 * 128}), codebooks tuned "
      f"(kept epoch {pq.codebook_best_epoch_}): test accuracy {pq.score(F_test, y_test):.3f}")
#    b) The paper's recipe: from the trained loose model (warm_start), compress its
#       embeddings and train the fixed scheme against their codes, so the network adapts.
plain.set_params(impostors="fixed", index="pq", code_size=16, sigma=0.3, warm_start=True).fit(F, y)
print(f"fixed, PQ codes from the loose model: test accuracy {plain.score(F_test, y_test):.3f}")
