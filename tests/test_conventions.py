"""scikit-learn conventions beyond the estimator checks: decision_function, feature names
and set_output on the transformers, and the ``skfg`` logger."""

import logging

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skfg import ImpostorClassifier, ImprintedClassifier, SoftmaxClassifier
from skfg import CNNFeatureExtractor
from skfg import EarlyExitClassifier


def _data(n_classes, n=60, d=6, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % n_classes
    X = (rng.randn(n, d) + 3 * np.eye(d)[y]).astype(np.float32)
    return X, np.asarray(["abcd"[c] for c in y])


ESTIMATORS = [
    SoftmaxClassifier(max_epochs=15, random_state=0),
    ImpostorClassifier(embedding_dim=4, max_epochs=10, random_state=0),
    ImpostorClassifier(impostors="fixed", embedding_dim=None, n_neighbors=3, random_state=0),
    ImprintedClassifier(embedding_dim=4, max_epochs=15, random_state=0),
]


@pytest.mark.parametrize("clf", ESTIMATORS, ids=lambda c: repr(c)[:60])
def test_decision_function_ranks_the_classes_as_predict_does(clf):
    X, y = _data(3)
    clf.fit(X, y)
    scores = clf.decision_function(X)
    assert scores.shape == (len(X), 3) and np.isfinite(scores).all()
    np.testing.assert_array_equal(clf.classes_[scores.argmax(1)], clf.predict(X))
    # a monotone map of the probabilities: the same order within every row
    np.testing.assert_array_equal(np.argsort(scores, 1), np.argsort(clf.predict_proba(X), 1))


@pytest.mark.parametrize("clf", ESTIMATORS, ids=lambda c: repr(c)[:60])
def test_binary_decision_function_is_positive_for_the_second_class(clf):
    X, y = _data(2)
    clf.fit(X, y)
    scores = clf.decision_function(X)
    assert scores.shape == (len(X),)
    np.testing.assert_array_equal(np.where(scores > 0, clf.classes_[1], clf.classes_[0]), clf.predict(X))
    # scikit-learn's scorers take the scores: roc_auc from decision_function
    from sklearn.metrics import get_scorer, roc_auc_score

    assert get_scorer("roc_auc")(clf, X, y) == pytest.approx(roc_auc_score(y == clf.classes_[1], scores))


@pytest.mark.parametrize("clf", [ESTIMATORS[1], ESTIMATORS[2], ESTIMATORS[3]], ids=lambda c: repr(c)[:60])
def test_transformers_name_their_columns_and_set_output(clf):
    pd = pytest.importorskip("pandas")
    X, y = _data(3)
    clf.fit(X, y)
    names = clf.get_feature_names_out()
    emb = clf.transform(X)
    prefix = type(clf).__name__.lower()
    assert list(names) == [f"{prefix}{i}" for i in range(emb.shape[1])]
    pipe = make_pipeline(StandardScaler(), clf).set_output(transform="pandas").fit(X, y)
    frame = pipe.transform(X)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(names)
    np.testing.assert_allclose(frame.to_numpy(), pipe[-1].set_output(transform="default").transform(
        pipe[0].transform(X)), rtol=1e-6)


def test_get_feature_names_out_needs_a_fitted_model():
    from sklearn.exceptions import NotFittedError

    for clf in (ImpostorClassifier(), ImprintedClassifier()):
        with pytest.raises(NotFittedError):
            clf.get_feature_names_out()


def test_training_logs_each_epoch_to_the_skfg_logger(caplog):
    X, y = _data(3)
    with caplog.at_level(logging.INFO, logger="skfg"):
        SoftmaxClassifier(max_epochs=3, random_state=0).fit(X, y)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("skfg")]
    epochs = [m for m in lines if m.startswith("epoch ")]
    assert len(epochs) == 3 and epochs[0].startswith("epoch 1/3: loss ")
    assert lines[-1].startswith("training done: 3 epochs, keeping epoch")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skfg"):  # quiet at the default level
        SoftmaxClassifier(max_epochs=2, random_state=0).fit(X, y)
    assert not [r for r in caplog.records if r.name.startswith("skfg")]


def test_clear_messages_for_bad_arguments(easy_blobs, pngs):
    X, y = easy_blobs
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        EarlyExitClassifier().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match=r"y mixes labels of different types \(int, str\)"):
        SoftmaxClassifier().fit(X[:4], np.array([1, "a", 1, "a"], dtype=object))
    paths, labels = pngs
    for est in (SoftmaxClassifier(), EarlyExitClassifier()):
        with pytest.raises(ValueError, match="got images .* extractor=CNNFeatureExtractor"):
            est.fit(paths, labels)
    with pytest.warns(UserWarning, match="holds out 59 of 60 samples, leaving fewer training samples than the 3"):
        SoftmaxClassifier(validation_fraction=0.99, max_epochs=1).fit(X, y)
    with pytest.warns(UserWarning, match="holds out 40 of 40 .* without a validation split"):
        SoftmaxClassifier(validation_fraction=0.99, max_epochs=1).fit(X[:40], y[:40])
    with pytest.warns(UserWarning, match="trainable_blocks=50, but the extractor's layers use only 9 stages"):
        SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=40), trainable_blocks=50, max_epochs=1,
                          augment=False).fit(paths, labels)
