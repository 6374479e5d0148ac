"""Knowledge distillation into SoftmaxClassifier (``teacher=``; issue 46's quality setting)."""

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.losses import distillation_loss, soften

SHIFT = {"cat": "dog", "dog": "owl", "owl": "cat"}


class LookupTeacher(ClassifierMixin, BaseEstimator):
    """A teacher that predicts, with certainty, the label ``mapping`` gives each training
    label (rows looked up by their first feature), with its columns in ``order``."""

    def __init__(self, mapping=None, order=None):
        self.mapping = mapping
        self.order = order

    def fit(self, X, y, sample_weight=None):
        self.classes_ = np.array(self.order if self.order is not None else sorted(set(y)))
        self.labels_ = {float(x0): (self.mapping or {}).get(v, v) for x0, v in zip(np.asarray(X)[:, 0], y)}
        self.sample_weight_ = sample_weight
        return self

    def predict_proba(self, X):
        labels = [self.labels_[float(x0)] for x0 in np.asarray(X)[:, 0]]
        return (np.array(labels)[:, None] == self.classes_[None]).astype(float)


def student(**kw):
    return SoftmaxClassifier(**{"max_epochs": 40, "random_state": 0, "validation_fraction": 0.0, **kw})


def test_soften_is_the_tempered_softmax_of_the_logits():
    z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    for t in (1.0, 2.0, 4.0):
        np.testing.assert_allclose(soften(torch.softmax(z, 1), t).exp(), torch.softmax(z / t, 1), atol=1e-6)
    assert torch.isfinite(soften(torch.tensor([[1.0, 0.0]]), 2.0)).all()  # a zero probability: 1e-12


def test_distillation_loss_by_hand():
    z = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    w = torch.tensor([1.0, 3.0])
    t = 2.0
    q_t = torch.softmax(torch.log(q.double()) / t, 1)
    s_t = torch.softmax(z.double() / t, 1)
    kl = (q_t * (q_t.log() - s_t.log())).sum(1)
    expected = t * t * float((kl * w.double()).sum() / w.sum())  # Hinton et al.: T^2 KL(q_T || s_T)
    assert float(distillation_loss(z, soften(q, t), w, t)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(torch.log(q), soften(q), w)) == pytest.approx(0, abs=1e-6)  # student = teacher
    assert float(distillation_loss(z, soften(q, t), torch.zeros(2), t)) == 0


def test_the_student_follows_its_teacher_with_columns_in_the_teachers_order(features):
    X, y = features
    # the teacher says every cat is a dog (and so on), its columns not in sorted order
    teacher = LookupTeacher(SHIFT, order=["owl", "cat", "dog"]).fit(X, y)
    shifted = np.array([SHIFT[v] for v in y])
    pure = student(teacher=teacher, distillation_weight=1.0).fit(X, y)  # the labels unused
    assert (pure.predict(X) == shifted).mean() > 0.9
    plain = student(teacher=teacher, distillation_weight=0.0).fit(X, y)
    assert (plain.predict(X) == y).mean() > 0.9
    half = student(teacher=teacher, distillation_weight=0.5).fit(X, y)
    p = half.predict_proba(X)
    own, taught = p[np.arange(len(y)), np.searchsorted(half.classes_, y)], p[np.arange(len(y)), np.searchsorted(half.classes_, shifted)]
    assert 0.2 < np.median(own) < 0.8 and 0.2 < np.median(taught) < 0.8  # torn between the two


def test_distillation_weight_0_never_asks_the_teacher_and_fits_as_without_one(features):
    class Refusing(LookupTeacher):
        def predict_proba(self, X):
            raise AssertionError("asked")

    X, y = features
    a = student(teacher=Refusing().fit(X, y), distillation_weight=0.0, max_epochs=5).fit(X, y)
    b = student(max_epochs=5).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_an_unfitted_teacher_is_fitted_on_a_clone_with_the_sample_weights(features, monkeypatch):
    X, y = features
    seen = {}
    fit = LookupTeacher.fit

    def spy(self, X, y, sample_weight=None):
        seen["weights"] = sample_weight
        return fit(self, X, y, sample_weight)

    monkeypatch.setattr(LookupTeacher, "fit", spy)
    teacher = LookupTeacher(SHIFT)
    w = np.linspace(1, 2, len(y))
    clf = student(teacher=teacher, distillation_weight=1.0).fit(X, y, sample_weight=w)
    assert not hasattr(teacher, "classes_")  # the parameter stays as given
    np.testing.assert_array_equal(seen["weights"], w)
    assert (clf.predict(X) == np.array([SHIFT[v] for v in y])).mean() > 0.9


def test_a_seeded_distilled_fit_is_reproducible(features):
    X, y = features
    teacher = LogisticRegression(max_iter=500).fit(X, y)
    a, b = (student(teacher=teacher, max_epochs=5).fit(X, y) for _ in range(2))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_a_teacher_of_other_classes_is_refused_and_the_student_stays_unfitted(features):
    X, y = features
    teacher = LogisticRegression().fit(X[y != "owl"], y[y != "owl"])
    clf = student(teacher=teacher)
    with pytest.raises(ValueError, match="teacher=LogisticRegression predicts 2 classes and y has 3.*'owl'"):
        clf.fit(X, y)
    assert not hasattr(clf, "classes_")
    floats = LogisticRegression().fit(X, (y == "owl").astype(float))  # 0.0 / 1.0 against y's 0 / 1
    with pytest.raises(ValueError, match="labels of the same type \\(e.g. 0 is in one only"):
        student(teacher=floats).fit(X, (y == "owl").astype(int))


def test_malformed_teacher_probabilities_are_refused(features):
    class Short(LookupTeacher):
        def predict_proba(self, X):
            return super().predict_proba(X)[:-1]

    class Negative(LookupTeacher):
        def predict_proba(self, X):
            return super().predict_proba(X) - 0.5

    X, y = features
    with pytest.raises(ValueError, match=r"returned shape \(89, 3\), expected \(90, 3\)"):
        student(teacher=Short().fit(X, y)).fit(X, y)
    with pytest.raises(ValueError, match="negative or non-finite"):
        student(teacher=Negative().fit(X, y)).fit(X, y)


def test_grid_search_fits_a_teacher_per_split_or_keeps_a_frozen_one(features):
    X, y = features
    search = GridSearchCV(student(teacher=LogisticRegression(max_iter=500), max_epochs=5),
                          {"distillation_weight": [0.0, 0.5]}, cv=2).fit(X, y)
    assert not hasattr(search.best_estimator_.teacher, "coef_")
    teacher = LookupTeacher(SHIFT).fit(X, y)
    search = GridSearchCV(student(teacher=FrozenEstimator(teacher), distillation_weight=1.0),
                          {"distillation_temperature": [1.0, 2.0]}, cv=2).fit(X, y)
    assert (search.predict(X) == np.array([SHIFT[v] for v in y])).mean() > 0.9


def test_a_checkpoint_of_another_teacher_is_refused_not_resumed(features, tmp_path):
    X, y = features
    # the same parameters (and repr), other fitted teachers: the first fit's checkpoint is not the second's
    first = student(teacher=LookupTeacher(SHIFT).fit(X, y), distillation_weight=1.0, checkpoint_dir=str(tmp_path))
    first.fit(X, y)
    first.fit(X, y)  # the same teacher: resumes (nothing left to train)
    other = student(teacher=LookupTeacher(SHIFT).fit(X, np.array([SHIFT[v] for v in y])), distillation_weight=1.0,
                    checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="belongs to a different model or data"):
        other.fit(X, y)


def test_distillation_into_a_fine_tuned_cnn_from_a_pipeline_teacher():
    X, y = make_fine_grained(n_classes=3, n_per_class=8, image_size=40, random_state=0)
    teacher = Pipeline([("cnn", CNNFeatureExtractor(image_size=40)), ("lr", LogisticRegression(max_iter=500))])
    params = dict(extractor=CNNFeatureExtractor(image_size=40), max_epochs=2, head_epochs=2, random_state=0)
    clf = SoftmaxClassifier(teacher=teacher, **params).fit(X, y)
    plain = SoftmaxClassifier(**params).fit(X, y)
    assert not hasattr(teacher, "classes_")
    taught, own = [h["loss"] for h in clf.history_], [h["loss"] for h in plain.history_]
    assert len(taught) == len(own) and np.isfinite(taught).all()
    assert all(a != b for a, b in zip(taught, own))  # the teacher's term in the probe's and the CNN's epochs
    np.testing.assert_allclose(clf.predict_proba(X).sum(1), 1, rtol=1e-5)
