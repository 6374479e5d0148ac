"""ObjectCropper, ELoPE's localization module (elope.txt section 5, Tables 2-4)."""

import copy
import io

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.backbones import build_backbone, state_fingerprint
from skfg.datasets import make_fine_grained, make_flower_scenes
from skfg.images import ImageDecodeError, eval_transform, normalize_batch
from skfg.localization import ObjectCropper, _build_student, box_iou, heatmap_to_box


# ----------------------------------------------------------- heatmap_to_box
def test_hot_block_gives_its_cells_scaled_to_the_image():
    m = np.zeros((4, 4))
    m[1:3, 2] = 1.0  # rows 1-2, column 2
    # 40 rows x 80 columns: a cell is 10 px high and 20 px wide
    np.testing.assert_array_equal(heatmap_to_box(m, (40, 80), upsample=False), [40, 10, 60, 30])
    # a non-square map on a non-square image: 7 x 5 cells over 70 x 100 pixels
    m = np.zeros((7, 5))
    m[0, 4] = 3.0
    m[2, 1] = 2.0
    np.testing.assert_array_equal(heatmap_to_box(m, (70, 100, 3), upsample=False), [20, 0, 100, 30])


def test_threshold_is_strict_and_applied_after_min_max_normalisation():
    m = np.array([[10.0, 12.0, 14.0, 20.0]])  # normalised: 0, 0.2, 0.4, 1
    box = lambda tau: heatmap_to_box(m, (1, 4), tau=tau, upsample=False).tolist()  # noqa: E731
    assert box(0.0) == [1, 0, 4, 1]  # the minimum is not > 0
    assert box(0.2) == [2, 0, 4, 1]  # 0.2 is not > 0.2
    assert box(0.19) == [1, 0, 4, 1]
    assert box(0.99) == [3, 0, 4, 1]  # the maximum always stays: never an empty box
    # the scale and offset of the map do not matter
    assert heatmap_to_box(5 * m - 7, (1, 4), tau=0.3, upsample=False).tolist() == box(0.3)


def test_upsampled_box_lies_between_the_cells_and_is_finer():
    m = np.zeros((4, 4))
    m[1:3, 2] = 1.0
    coarse = heatmap_to_box(m, (40, 80), upsample=False)
    fine = heatmap_to_box(m, (40, 80), upsample=True)
    # bilinear: the hot cells' centres are inside, the cold cells' centres outside
    assert fine[0] < 50 and fine[2] > 50 and fine[1] < 15 and fine[3] > 25
    assert fine[0] > 30 and fine[2] < 70 and fine[1] > 5 and fine[3] < 35
    assert (fine != coarse).any() and fine.tolist() == [float(int(v)) for v in fine]  # whole pixels
    # the box grows as tau falls
    low = heatmap_to_box(m, (40, 80), tau=0.1)
    assert low[0] <= fine[0] and low[2] >= fine[2] and (low != fine).any()


@pytest.mark.parametrize("value", [0.0, 1.0, -3.5, 1e6])
@pytest.mark.parametrize("upsample", [True, False])
def test_constant_map_gives_the_whole_image(value, upsample):
    box = heatmap_to_box(np.full((7, 7), value), (30, 50), tau=0.3, upsample=upsample)
    assert box.tolist() == [0.0, 0.0, 50.0, 30.0]


def test_boxes_always_inside_the_image_and_not_empty():
    rng = np.random.RandomState(0)
    for _ in range(200):
        m = rng.randn(*rng.randint(1, 9, 2)) ** rng.choice([1, 2, 3])
        shape = tuple(rng.randint(1, 700, 2))  # also images smaller than the map, and > 512 px
        x0, y0, x1, y1 = heatmap_to_box(m, shape, tau=rng.uniform(0, 0.999), upsample=rng.rand() < 0.5)
        assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"heatmap": np.zeros(4)}, "2-D"),
        ({"heatmap": np.array([[0.0, np.nan]])}, "NaN"),
        ({"tau": 1.0}, r"tau must be a number in \[0, 1\)"),
        ({"tau": -0.1}, r"tau must be a number in \[0, 1\)"),
        ({"image_shape": (0, 5)}, "at least 1 pixel"),
    ],
)
def test_heatmap_to_box_errors(kwargs, match):
    args = {"heatmap": np.eye(3), "image_shape": (10, 10), **kwargs}
    with pytest.raises(ValueError, match=match):
        heatmap_to_box(**args)


def test_heatmap_upsampling_equals_torch_bilinear():
    # the numpy resize of heatmap_to_box reproduces F.interpolate(bilinear, align_corners=False)
    from skfg._boxes import _resize_bilinear

    rng = np.random.RandomState(0)
    for shape, size in [((7, 7), (224, 300)), ((4, 4), (40, 80)), ((7, 7), (5, 3)), ((3, 5), (17, 2)), ((2, 2), (2, 2))]:
        m = rng.rand(*shape)
        ref = F.interpolate(torch.from_numpy(m)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(_resize_bilinear(m, size), ref.numpy(), rtol=0, atol=1e-12)


def test_box_iou():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges only
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    np.testing.assert_allclose(box_iou([[0, 0, 4, 4], [0, 0, 2, 2]], [0, 0, 2, 4]), [0.5, 0.5])


# ------------------------------------------------------------ the estimator
@pytest.fixture(scope="module")
def small():
    """Tiny images: teacher at 96 px (3 x 3 maps), a 2-epoch student."""
    X, _ = make_fine_grained(n_classes=3, n_per_class=4, image_size=64, random_state=0)
    crop = ObjectCropper(None, teacher_size=96, max_epochs=2, batch_size=8, random_state=0).fit(X)
    return X, crop


def test_fitted_attributes_and_cost(small):
    X, crop = small
    assert crop.heatmap_shape_ == (3, 3) and crop.teacher_size_ == 96
    assert crop.teacher_backbone_ == "efficientnet_lite0" and crop.teacher_layer_ == "head"
    # stem + stage1-3 of EfficientNet-Lite0 (published widths) and a 40 -> 1 convolution
    assert crop.n_parameters_ == 928 + 896 + 13968 + 39712 + 41
    assert 1 <= crop.n_iter_ <= 2 and len(crop.history_) == crop.n_iter_
    assert crop.student_.training is False and crop.device_ == "cpu"


def test_flops_are_multiply_adds_counted_by_hand():
    X, _ = make_fine_grained(n_classes=2, n_per_class=2, image_size=48, random_state=0)
    crop = ObjectCropper(None, teacher_size=64, student_stages=1, max_epochs=1, random_state=0).fit(X)
    # stem: 3x3 conv 3 -> 32, stride 2, 64 px -> 32 x 32 outputs; then the 1x1 conv 32 -> 1
    assert crop.flops_ == 32 * 32 * 32 * (3 * 3 * 3) + 32 * 32 * 32
    assert crop.n_parameters_ == 3 * 3 * 3 * 32 + 2 * 32 + 32 + 1


def test_student_starts_from_a_copy_of_the_teachers_first_stages():
    net = build_backbone("efficientnet_lite0")
    student = _build_student(net, 2, 64, (2, 2))
    for name in ("stem", "stage1"):
        theirs = net.stages[name].state_dict()
        for key, value in getattr(student.stages, name).state_dict().items():
            assert torch.equal(value, theirs[key])
    before = state_fingerprint(net)
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert state_fingerprint(net) == before  # a copy, not shared
    assert student(torch.zeros(3, 3, 64, 64)).shape == (3, 2, 2)


def _by_hand_minmax(m):
    m = m.flatten(1)
    return (m - m.min(1, keepdim=True).values) / (m.max(1, keepdim=True).values - m.min(1, keepdim=True).values)


def test_teacher_heatmap_is_the_channel_mean_of_the_last_stage(small):
    """teacher_map="last", the paper's map (section 5)."""
    X, crop = small
    paper = copy.deepcopy(crop).set_params(teacher_map="last")  # a prediction-time setting too
    net = build_backbone("efficientnet_lite0")
    batch = torch.stack([eval_transform(96, "squash")(Image.fromarray(x)) for x in X[:3]])
    with torch.no_grad():
        *_, (name, out) = net.forward_stages(normalize_batch(batch, net.mean, net.std))
    expected = _by_hand_minmax(out.mean(1))
    np.testing.assert_allclose(paper.predict_heatmaps(X[:3], source="teacher"), expected.view(3, 3, 3).numpy(),
                               atol=1e-5)
    assert name == crop.teacher_layer_


def test_default_teacher_heatmap_joins_the_stage_before_with_every_channel_alike(small):
    """teacher_map="last+previous" (the default): the paper's map and the stage before's mean
    of channels each scaled to its own maximum, both min-max normalised, summed, normalised."""
    X, crop = small
    assert crop.teacher_map == "last+previous"
    net = build_backbone("efficientnet_lite0")
    batch = torch.stack([eval_transform(96, "squash")(Image.fromarray(x)) for x in X[:3]])
    with torch.no_grad():
        *_, (_, before), (_, last) = net.forward_stages(normalize_batch(batch, net.mean, net.std))
    positive = before.clamp_min(0)
    peak = positive.amax(dim=(2, 3), keepdim=True)
    scaled = torch.where(peak > 0, positive / peak, torch.zeros_like(positive))  # a silent channel counts 0
    expected = _by_hand_minmax(_by_hand_minmax(last.mean(1)) + _by_hand_minmax(scaled.mean(1)))
    got = crop.predict_heatmaps(X[:3], source="teacher")
    np.testing.assert_allclose(got, expected.view(3, 3, 3).numpy(), atol=1e-5)
    paper = copy.deepcopy(crop).set_params(teacher_map="last").predict_heatmaps(X[:3], source="teacher")
    assert not np.allclose(got, paper, atol=1e-2)  # the stage before changes the map


def test_boxes_in_pixels_of_each_original_image(small):
    _, crop = small
    rng = np.random.RandomState(0)
    sizes = [(50, 30), (31, 77), (64, 64), (200, 120)]
    images = [Image.fromarray(rng.randint(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    boxes = crop.predict_boxes(images)
    assert boxes.shape == (4, 4)
    for (w, h), (x0, y0, x1, y1) in zip(sizes, boxes):
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    crops = crop.transform(images)
    for c, (x0, y0, x1, y1) in zip(crops, boxes):
        assert c.mode == "RGB" and c.size == (int(np.ceil(x1) - np.floor(x0)), int(np.ceil(y1) - np.floor(y0)))
    # the same box from the map by hand: student map -> heatmap_to_box with the image's shape
    maps = crop.predict_heatmaps(images)
    np.testing.assert_array_equal(boxes[1], heatmap_to_box(maps[1], (77, 31), crop.tau, component=True))
    # box="all", the paper's rule, is read at prediction (no refit)
    paper = joblib.load(_dump(crop)).set_params(box="all").predict_boxes(images)
    for i, (w, h) in enumerate(sizes):
        np.testing.assert_array_equal(paper[i], heatmap_to_box(maps[i], (h, w), crop.tau, component=False))


def test_transform_feeds_a_feature_extractor_and_classifier_in_a_pipeline():
    X, y = make_fine_grained(n_classes=2, n_per_class=6, image_size=64, random_state=0)
    pipe = Pipeline([
        ("crop", ObjectCropper(None, teacher_size=64, max_epochs=1, random_state=0)),
        ("cnn", CNNFeatureExtractor(image_size=64, cache=False)),
        ("clf", SoftmaxClassifier(max_epochs=3, random_state=0)),
    ]).fit(X, y)
    assert set(pipe.predict(X)) <= {0, 1}
    crops = pipe.named_steps["crop"].fit_transform(X)
    assert len(crops) == len(X) and all(isinstance(c, Image.Image) for c in crops)


def test_joblib_round_trip_gives_identical_boxes(small):
    X, crop = small
    buf = io.BytesIO()
    joblib.dump(crop, buf)
    size = buf.tell()
    buf.seek(0)
    loaded = joblib.load(buf)
    np.testing.assert_array_equal(loaded.predict_boxes(X), crop.predict_boxes(X))
    np.testing.assert_array_equal(loaded.predict_heatmaps(X), crop.predict_heatmaps(X))
    assert size < 2_000_000  # the student only: the teacher's 4.7M parameters stay out
    # the teacher is found again (rebuilt from the parameter) for source="teacher"
    np.testing.assert_array_equal(loaded.predict_boxes(X, source="teacher"), crop.predict_boxes(X, source="teacher"))


def test_cropper_saved_before_teacher_map_existed_loads_with_the_papers_map(small):
    _, crop = small
    state = crop.__getstate__()
    del state["teacher_map"]  # as pickled before the parameter existed
    old = ObjectCropper.__new__(ObjectCropper)
    old.__setstate__(state)
    assert old.teacher_map == "last" and old.get_params()["teacher_map"] == "last"
    assert crop.teacher_map == "last+previous"


def test_unpickled_teacher_with_other_weights_is_refused(small):
    X, crop = small
    buf = io.BytesIO()
    joblib.dump(crop, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    loaded.set_params(teacher=CNNFeatureExtractor(weights=None))  # not the teacher it learned from
    with pytest.raises(ValueError, match="not pickled with the cropper"):
        loaded.predict_boxes(X, source="teacher")
    loaded.predict_boxes(X)  # the student is unaffected


def test_clone_and_get_params():
    crop = ObjectCropper(tau=0.2, teacher_size=160, student_stages=3, random_state=1)
    params = crop.get_params()
    assert params["tau"] == 0.2 and params["student_stages"] == 3
    twin = clone(crop)
    assert twin.get_params() == params and not hasattr(twin, "student_")


def test_errors_name_the_problem(small, tmp_path):
    X, crop = small
    with pytest.raises(ValueError, match="'tau' parameter of ObjectCropper"):
        ObjectCropper(tau=1.5).fit(X)
    with pytest.raises(NotFittedError):
        ObjectCropper().predict_boxes(X)
    with pytest.raises(ValueError, match="source must be 'student' or 'teacher'"):
        crop.predict_boxes(X, source="oracle")
    bad = joblib.load(_dump(crop)).set_params(tau=2.0)  # set after fit: checked at prediction
    with pytest.raises(ValueError, match=r"tau must be a number in \[0, 1\)"):
        bad.predict_boxes(X)
    with pytest.raises(ValueError, match=r"student_stages=9.*stem, stage1.*at most 8"):
        ObjectCropper(None, teacher_size=64, student_stages=9).fit(X)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        crop.predict_boxes([str(broken)])


def test_teacher_as_a_fitted_feature_extractor_is_used_and_not_modified():
    X, _ = make_fine_grained(n_classes=2, n_per_class=3, image_size=48, random_state=0)
    ext = CNNFeatureExtractor(image_size=128).fit()
    before = state_fingerprint(ext.network_)
    crop = ObjectCropper(ext, max_epochs=1, random_state=0).fit(X)
    assert crop.teacher_size_ == 256 and crop.heatmap_shape_ == (8, 8)  # "auto": twice its image_size
    assert state_fingerprint(ext.network_) == before and not ext.network_.training
    # an unfitted extractor is fitted on a clone: the same maps
    again = ObjectCropper(CNNFeatureExtractor(image_size=128), max_epochs=1, random_state=0).fit(X)
    own = ObjectCropper(ext, teacher_size=None, max_epochs=1, random_state=0).fit(X)
    assert own.teacher_size_ == 128 and own.heatmap_shape_ == (4, 4)  # None: its image_size
    np.testing.assert_array_equal(again.predict_heatmaps(X, source="teacher"), crop.predict_heatmaps(X, source="teacher"))


def test_fine_tuned_classifier_as_teacher_and_frozen_through_clone():
    X, y = make_fine_grained(n_classes=2, n_per_class=4, image_size=64, random_state=0)
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=64, resize="squash"), trainable_blocks=1,
                            augment=False, max_epochs=2, validation_fraction=0, random_state=0).fit(X, y)
    trunk = clf.module_.trunk
    before = state_fingerprint(trunk)
    # teacher_size=None: the trunk's own input size, so its maps can be checked by hand below
    crop = clone(ObjectCropper(FrozenEstimator(clf), teacher_size=None, teacher_map="last", imagenet_map=False,
                               max_epochs=1, random_state=0))  # stays fitted
    crop.fit(X)
    assert crop.teacher_size_ == 64 and crop.heatmap_shape_ == (2, 2)
    assert state_fingerprint(trunk) == before and not trunk.training
    # its maps come from the fine-tuned trunk (the trained head stage), not the ImageNet one
    batch = torch.stack([eval_transform(64, "squash")(Image.fromarray(x)) for x in X])
    with torch.no_grad():
        *_, (_, out) = trunk.forward_stages(normalize_batch(batch, trunk.mean, trunk.std))
    m = out.mean(1).flatten(1)
    m = (m - m.min(1, keepdim=True).values) / (m.max(1, keepdim=True).values - m.min(1, keepdim=True).values)
    np.testing.assert_allclose(crop.predict_heatmaps(X, source="teacher"), m.view(-1, 2, 2).numpy(), atol=1e-5)
    imagenet = ObjectCropper(None, teacher_size=64, teacher_map="last", max_epochs=1, random_state=0).fit(X)
    assert not np.allclose(imagenet.predict_heatmaps(X, source="teacher"), m.view(-1, 2, 2).numpy(), atol=1e-3)


def test_imagenet_map_joins_the_pretrained_backbones_map_to_a_trained_teachers():
    """imagenet_map=True (the default): the student learns the trained teacher's map plus the
    ImageNet EfficientNet-Lite0's map of the same kind, each min-max normalised; no partner
    for the pretrained teacher itself; the partner is rebuilt after loading."""
    X, y = make_fine_grained(n_classes=2, n_per_class=4, image_size=64, random_state=0)
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=64, resize="squash"), trainable_blocks=1,
                            augment=False, max_epochs=2, validation_fraction=0, random_state=0).fit(X, y)
    crop = ObjectCropper(FrozenEstimator(clf), teacher_size=None, teacher_map="last", max_epochs=1,
                         random_state=0).fit(X)
    assert crop.imagenet_map and crop.imagenet_map_
    batch = torch.stack([eval_transform(64, "squash")(Image.fromarray(x)) for x in X])
    trunk, net = clf.module_.trunk, build_backbone("efficientnet_lite0")
    with torch.no_grad():
        *_, (_, fine_tuned) = trunk.forward_stages(normalize_batch(batch, trunk.mean, trunk.std))
        *_, (_, pretrained) = net.forward_stages(normalize_batch(batch, net.mean, net.std))
    expected = _by_hand_minmax(_by_hand_minmax(fine_tuned.mean(1)) + _by_hand_minmax(pretrained.mean(1)))
    got = crop.predict_heatmaps(X, source="teacher")
    np.testing.assert_allclose(got, expected.view(-1, 2, 2).numpy(), atol=1e-5)
    alone = ObjectCropper(FrozenEstimator(clf), teacher_size=None, teacher_map="last", imagenet_map=False,
                          max_epochs=1, random_state=0).fit(X)
    assert not alone.imagenet_map_
    assert not np.allclose(alone.predict_heatmaps(X, source="teacher"), got, atol=1e-3)
    loaded = joblib.load(_dump(crop))  # the partner is not pickled: rebuilt
    assert "_partner" not in loaded.__getstate__()
    np.testing.assert_allclose(loaded.predict_heatmaps(X, source="teacher"), got, atol=1e-6)
    pretrained_only = ObjectCropper(None, teacher_size=64, max_epochs=1, random_state=0).fit(X)
    assert pretrained_only.imagenet_map and not pretrained_only.imagenet_map_  # nothing to join
    state = crop.__getstate__()
    del state["imagenet_map"], state["imagenet_map_"]  # as pickled before the parameter existed
    old = ObjectCropper.__new__(ObjectCropper)
    old.__setstate__(state)
    assert old.imagenet_map is False and old.imagenet_map_ is False


def test_teacher_classifier_must_be_fitted_on_images():
    X, y = make_fine_grained(n_classes=2, n_per_class=3, image_size=48, random_state=0)
    with pytest.raises(ValueError, match="is not fitted.*FrozenEstimator"):
        ObjectCropper(SoftmaxClassifier(extractor=CNNFeatureExtractor())).fit(X)
    on_features = SoftmaxClassifier(max_epochs=1).fit(np.random.RandomState(0).randn(6, 3), y)
    with pytest.raises(ValueError, match="fitted on features, not images"):
        ObjectCropper(on_features).fit(X)


def test_unfitted_classifier_teacher_is_fitted_on_a_clone_with_the_labels():
    X, y = make_fine_grained(n_classes=2, n_per_class=4, image_size=64, random_state=0)

    def classifier():
        return SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=64, resize="squash"), trainable_blocks=1,
                                 augment=False, max_epochs=2, validation_fraction=0, random_state=0)

    given = classifier()
    crop = ObjectCropper(given, teacher_size=None, max_epochs=1, random_state=0).fit(X, y)
    assert crop.teacher_fitted_ and not hasattr(given, "classes_")  # the parameter stays unfitted
    # exactly the teacher a user would fit and pass frozen
    frozen = ObjectCropper(FrozenEstimator(classifier().fit(X, y)), teacher_size=None, max_epochs=1,
                           random_state=0).fit(X)
    assert not frozen.teacher_fitted_
    np.testing.assert_array_equal(crop.predict_heatmaps(X, source="teacher"),
                                  frozen.predict_heatmaps(X, source="teacher"))
    np.testing.assert_array_equal(crop.predict_boxes(X), frozen.predict_boxes(X))
    # a teacher trained in fit is not pickled and cannot be found again from the parameter
    loaded = joblib.load(_dump(crop))
    np.testing.assert_array_equal(loaded.predict_boxes(X), crop.predict_boxes(X))
    with pytest.raises(ValueError, match="teacher that fit trained, which is not pickled"):
        loaded.predict_boxes(X, source="teacher")


def test_auto_teacher_without_labels_warns_and_uses_the_pretrained_backbone():
    X, _ = make_fine_grained(n_classes=2, n_per_class=3, image_size=48, random_state=0)
    with pytest.warns(UserWarning, match=r"fit\(X\) without y: the teacher is the pretrained ImageNet"):
        auto = ObjectCropper(teacher_size=64, max_epochs=1, random_state=0).fit(X)
    pretrained = ObjectCropper(None, teacher_size=64, max_epochs=1, random_state=0).fit(X)
    assert not auto.teacher_fitted_
    np.testing.assert_array_equal(auto.predict_heatmaps(X, source="teacher"),
                                  pretrained.predict_heatmaps(X, source="teacher"))
    loaded = joblib.load(_dump(auto))  # found again from the parameter after loading
    np.testing.assert_array_equal(loaded.predict_heatmaps(X, source="teacher"),
                                  pretrained.predict_heatmaps(X, source="teacher"))


def test_auto_teacher_of_a_small_set_keeps_its_held_out_tenth():
    """Under SMALL_SET_IMAGES the auto teacher is fitted with the small set's hold-out and
    without the classifier's refit on every image (twice the time, no better maps:
    benchmarks/results/cropper_default.md); on a larger set it is the classifier's default."""
    from skfg._classifier import SMALL_SET_IMAGES
    from skfg.localization import _teacher_to_fit

    small = _teacher_to_fit("auto", 0, "cpu", False, SMALL_SET_IMAGES - 1)
    large = _teacher_to_fit("auto", 0, "cpu", False, SMALL_SET_IMAGES)
    assert isinstance(small, SoftmaxClassifier) and small.validation_fraction == 0.1
    assert large.validation_fraction == "auto" and large.get_params()["extractor"] is not None
    assert _teacher_to_fit(None, 0, "cpu", False, 10) is None


def test_failed_fit_leaves_no_half_fitted_model(small, tmp_path):
    X, crop = small
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    paths = []
    for i, x in enumerate(X[:3]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(x).save(paths[-1])
    fresh = ObjectCropper(None, teacher_size=64, max_epochs=1)
    with pytest.raises(ImageDecodeError, match="broken.png"):
        fresh.fit(paths + [str(broken)])
    assert [k for k in vars(fresh) if k.endswith("_") or k.startswith("_t")] == []
    fitted = joblib.load(_dump(crop))
    boxes = fitted.predict_boxes(X)
    with pytest.raises(ImageDecodeError):
        fitted.set_params(max_epochs=1).fit(paths + [str(broken)])
    np.testing.assert_array_equal(fitted.predict_boxes(X), boxes)  # the previous model, intact


def _dump(obj):
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    buf.seek(0)
    return buf


# --------------------------------------------------- localisation accuracy
def dahlia_scenes(n, random_state, height=96, width=144):
    return make_flower_scenes(n, random_state, height, width)


def test_default_teacher_and_student_find_a_real_object():
    """Table 4's measure (IoU >= 0.5) on held-out scenes, with the pretrained teacher and
    the paper's map (``teacher_map="last"``; the default map passes too).

    Measured (seeds below): student 71 %, teacher 64 %, student and teacher boxes agree
    (IoU >= 0.5) on 99 %; the whole image never reaches IoU 0.5 (the dahlia covers at
    most 0.37 of it). With tau=0.3 both stay under 25 %: their boxes are too large.
    """
    X, _ = dahlia_scenes(200, random_state=0)
    X_test, truth = dahlia_scenes(80, random_state=1)
    crop = ObjectCropper(None, teacher_size=224, teacher_map="last", tau=0.5, max_epochs=20, random_state=0).fit(X)
    assert crop.heatmap_shape_ == (7, 7)
    student, teacher = crop.predict_boxes(X_test), crop.predict_boxes(X_test, source="teacher")
    hit_student = np.mean(box_iou(student, truth) >= 0.5)
    hit_teacher = np.mean(box_iou(teacher, truth) >= 0.5)
    assert np.all(box_iou([0, 0, 144, 96], truth) < 0.5)
    assert hit_student > 0.5, (hit_student, hit_teacher)
    assert hit_student >= hit_teacher - 0.1, (hit_student, hit_teacher)
    assert np.mean(box_iou(student, teacher) >= 0.5) > 0.85
    assert all(0 <= b[0] < b[2] <= 144 and 0 <= b[1] < b[3] <= 96 for b in student)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured (2026-12-07): at teacher_size=224 the ImageNet teacher's channel mean does "
    "not find the cartoon bird of make_fine_grained (IoU >= 0.5 on 0-2.5 % of the boxes of "
    "student and teacher at tau 0.3-0.5, mean IoU 0.23-0.28: boxes cover most of the image). "
    "At the default teacher_size=448 its student reaches about 70 % "
    "(benchmarks/results/cropper_default.md); a teacher fine-tuned on the birds, "
    "tests/test_cropper_default.py.",
)
def test_pretrained_teacher_localises_the_synthetic_bird():
    X, _ = make_fine_grained(n_classes=10, n_per_class=10, image_size=128, random_state=0)
    X_test, _, truth = make_fine_grained(n_classes=10, n_per_class=4, image_size=128, random_state=1, return_boxes=True)
    crop = ObjectCropper(None, teacher_size=224, max_epochs=10, random_state=0).fit(X)
    hit_student = np.mean(box_iou(crop.predict_boxes(X_test), truth) >= 0.5)
    hit_teacher = np.mean(box_iou(crop.predict_boxes(X_test, source="teacher"), truth) >= 0.5)
    assert hit_student > 0.5 and hit_teacher > 0.5, (hit_student, hit_teacher)
