"""``ObjectCropper()`` from its defaults on the cartoon birds: it fine-tunes its teacher
(the paper's setting, elope.txt section 5) and its boxes beat the pretrained teacher's.

The comparison needs a teacher fine-tuned on 600 images (on 100-240 the order of the two
flips by draw): about 19 minutes on one core, more than the rest of a test file's worth
of CI. So it is checked in two parts that run on every test run, and once whole on demand:

- ``ObjectCropper().fit(X, y)`` fits exactly the teacher of
  ``benchmarks/cropper_default.py`` (a small case, bit-identical students);
- that benchmark's committed result (3 seeds, re-run by ``python benchmarks/ledger sweep`` when the
  code it ran changes) shows the default ahead on every seed;
- the benchmark's seed-0 computation itself, ``pytest -m slow tests/test_cropper_default.py``
  (marked ``slow``: the README's test command leaves it out).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.frozen import FrozenEstimator

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.localization import ObjectCropper, box_iou


def _auto_teacher(X, y):
    """What ``ObjectCropper().fit(X, y)`` fits on a small set (``_teacher_to_fit``)."""
    return SoftmaxClassifier(extractor=CNNFeatureExtractor(), validation_fraction=0.1, random_state=0).fit(X, y)


def test_default_cropper_fits_its_teacher_from_x_and_y():
    """``ObjectCropper().fit(X, y)`` without a teacher (a small, fast case) fine-tunes
    ``SoftmaxClassifier(extractor=CNNFeatureExtractor(), validation_fraction=0.1)`` on the
    labelled images and joins the pretrained network's map: its student is bit-identical to
    one learned from that classifier fitted first and passed frozen (how
    ``benchmarks/cropper_default.py`` and the fixture below fit it)."""
    X, y = make_fine_grained(n_classes=3, n_per_class=6, image_size=64, random_state=0)
    crop = ObjectCropper(max_epochs=2, random_state=0).fit(X, y)
    assert crop.teacher_fitted_ and crop.imagenet_map_ and crop.teacher_size_ == 448
    assert crop.heatmap_shape_ == (14, 14)
    given = ObjectCropper(FrozenEstimator(_auto_teacher(X, y)), max_epochs=2, random_state=0).fit(X)
    assert not given.teacher_fitted_ and given.imagenet_map_
    for a, b in zip(crop.student_.state_dict().values(), given.student_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cropper_default.json"


def test_the_benchmark_measured_the_default_ahead_on_every_seed():
    """``benchmarks/results/cropper_default.json`` (600 training birds a seed, the default
    teacher of the test above): on every seed, val and test, the default's student boxes
    beat the pretrained teacher's student by 8 points or more, and its own teacher's joined
    map by 10 or more (Table 4's order). A re-run that no longer shows it fails here."""
    result = json.loads(RESULT.read_text())
    assert (result["n_classes"], result["n_train_per_class"], result["image_size"]) == (20, 30, 128)
    assert sorted(run["seed"] for run in result["runs"]) == [0, 1, 2]
    for run in result["runs"]:
        assert run["teacher_image_size"] == CNNFeatureExtractor().image_size  # the default's teacher
        student, teacher = run["default"]["student"], run["default"]["teacher"]
        pretrained = run["pretrained_teacher"]["student"]
        for split in ("val", "test"):
            assert student[split] >= pretrained[split] + 0.08, (run["seed"], split, student, pretrained)
            assert student[split] >= teacher[split] + 0.1, (run["seed"], split, student, teacher)


@pytest.fixture(scope="module")
def birds_default_and_pretrained():
    """The setting of ``benchmarks/cropper_default.py``'s seed 0: 600 cartoon birds of 20
    classes at 128 px, the default cropper (its auto teacher, test above) and the pretrained
    teacher's (``ObjectCropper(None).fit(X)``); the IoU >= 0.5 rates of their boxes on the
    benchmark's val draw (200 images) at the default ``tau``. On sets of 100-240 images the
    order of the two flips by draw (a teacher fine-tuned on so few is weak), hence this size."""
    X, y = make_fine_grained(n_classes=20, n_per_class=30, image_size=128, random_state=0)
    X_val, _, truth = make_fine_grained(n_classes=20, n_per_class=10, image_size=128, random_state=1000,
                                        return_boxes=True)
    croppers = {"default": ObjectCropper(FrozenEstimator(_auto_teacher(X, y)), random_state=0).fit(X),
                "pretrained": ObjectCropper(None, random_state=0).fit(X)}
    hits = {(name, source): np.mean(box_iou(croppers[name].predict_boxes(X_val, source=source), truth) >= 0.5)
            for name, source in (("default", "student"), ("default", "teacher"), ("pretrained", "student"))}
    return croppers, hits


@pytest.mark.slow
def test_default_cropper_beats_the_pretrained_teacher(birds_default_and_pretrained):
    """Measured (benchmarks/cropper_default.py, val, seeds 0/1/2): 89.0 / 91.0 / 78.5 % of the
    boxes at IoU >= 0.5 against 69.5 / 72.5 / 68.0 % for the pretrained teacher's student."""
    croppers, hits = birds_default_and_pretrained
    assert not croppers["pretrained"].teacher_fitted_ and not croppers["pretrained"].imagenet_map_
    assert hits["default", "student"] > 0.7, hits
    assert hits["default", "student"] >= hits["pretrained", "student"] + 0.08, hits


@pytest.mark.slow
def test_student_beats_its_teacher_on_the_synthetic_bird(birds_default_and_pretrained):
    """Table 4: the student's boxes beat its teacher's own (joined) maps'. Measured (val,
    seeds 0/1/2): 89.0 / 91.0 / 78.5 % against 73.0 / 72.0 / 63.5 % (the paper: 68.9 vs
    58.6 % on CUB; for the paper's map alone see benchmarks/results/cropper_default.md)."""
    _, hits = birds_default_and_pretrained
    assert hits["default", "student"] >= hits["default", "teacher"] + 0.1, hits
