import hashlib

import numpy as np
import pytest
from PIL import Image

from skfg.datasets import MAX_SYNTHETIC_CLASSES, load_image_folder, make_fine_grained
from skfg.datasets import verify_images


def test_load_image_folder_sorted_and_reproducible(tmp_path):
    for cls, names in {"b_class": ["2.jpg", "10.png"], "a_class": ["z.jpeg", "x.JPG", "notes.txt"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            if n.endswith(".txt"):
                (tmp_path / cls / n).write_text("ignored")
            else:
                Image.new("RGB", (4, 4)).save(tmp_path / cls / n, format="PNG")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden" / "h.png")
    (tmp_path / "a_class" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a_class" / ".ipynb_checkpoints" / "c.png")
    X, y = load_image_folder(tmp_path)
    assert [p.split("/")[-1] for p in X] == ["x.JPG", "z.jpeg", "10.png", "2.jpg"]
    assert y.tolist() == ["a_class", "a_class", "b_class", "b_class"]
    X2, y2 = load_image_folder(str(tmp_path))
    assert X.tolist() == X2.tolist() and y.tolist() == y2.tolist()


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such folder"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="No images"):
        load_image_folder(tmp_path)


def test_make_fine_grained_shapes_and_determinism():
    X, y, boxes = make_fine_grained(5, 3, image_size=40, random_state=1, return_boxes=True)
    assert X.shape == (15, 40, 40, 3) and X.dtype == np.uint8
    assert sorted(np.bincount(y)) == [3] * 5
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 40)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    X2, y2 = make_fine_grained(5, 3, image_size=40, random_state=1)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = make_fine_grained(5, 3, image_size=40, random_state=2)
    assert not np.array_equal(X, X3)


def test_box_encloses_the_object():
    # The beak's orange (230, 150, 30) is used by nothing else (clutter channels stay
    # below 220): every clearly-orange pixel must lie inside the returned box.
    X, y, boxes = make_fine_grained(6, 2, image_size=128, random_state=3, return_boxes=True)
    for img, (x0, y0, x1, y1) in zip(X.astype(int), boxes):
        orange = (np.abs(img - [230, 150, 30]) < 14).all(axis=-1)
        rows, cols = np.nonzero(orange)
        assert len(rows) > 0, "beak not found"
        assert cols.min() >= x0 - 2 and cols.max() <= x1 + 2
        assert rows.min() >= y0 - 2 and rows.max() <= y1 + 2
        assert (x1 - x0) * (y1 - y0) < 0.7 * 128 * 128  # a box, not the whole image


def test_classes_are_fixed_across_seeds_and_learnable():
    from sklearn.linear_model import LogisticRegression

    from skfg import CNNFeatureExtractor

    Xtr, ytr = make_fine_grained(4, 25, image_size=96, random_state=0)
    Xte, yte = make_fine_grained(4, 10, image_size=96, random_state=1)
    ext = CNNFeatureExtractor(image_size=96).fit()
    clf = LogisticRegression(C=10, max_iter=2000).fit(ext.transform(Xtr), ytr)
    assert clf.score(ext.transform(Xte), yte) > 0.5  # chance is 0.25


def test_make_fine_grained_validates():
    with pytest.raises(ValueError, match="n_classes"):
        make_fine_grained(MAX_SYNTHETIC_CLASSES + 1)


def test_make_composite_boxes_are_exact_for_the_pasted_objects():
    from skfg.datasets import make_composite

    red = np.zeros((7, 30, 50, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue = [np.zeros((80, 120, 3), dtype=np.uint8) + np.uint8([0, 0, 200]), np.full((90, 70, 3), 30, np.uint8)]
    X, boxes = make_composite(red, blue, image_size=64, object_scale=(0.2, 0.9), random_state=0)
    assert X.shape == (7, 64, 64, 3) and X.dtype == np.uint8 and boxes.shape == (7, 4)
    for img, (x0, y0, x1, y1) in zip(X, boxes):
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        is_red = (img == [255, 0, 0]).all(-1)
        inside = np.zeros_like(is_red)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(is_red, inside)  # the object is exactly the box
        w, h = x1 - x0, y1 - y0
        assert abs(w / h - 50 / 30) < 0.15 and 0.2 * 64 - 1 <= max(w, h) <= 0.9 * 64 + 1  # aspect and scale kept
    X2, boxes2 = make_composite(red, blue, image_size=64, object_scale=(0.2, 0.9), random_state=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(boxes, boxes2)
    assert not np.array_equal(boxes, make_composite(red, blue, image_size=64, random_state=1)[1])


def test_make_composite_on_real_photographs(shared_dataset):
    from skfg.datasets import make_composite

    X_obj, _ = load_image_folder(shared_dataset("stanford_cars_a") / "train")
    objects = X_obj[:4]
    X, boxes = make_composite(objects, image_size=128, random_state=0)  # scikit-learn's two photographs
    for path, img, (x0, y0, x1, y1) in zip(objects, X, boxes):
        pasted = np.asarray(Image.open(path).convert("RGB").resize((x1 - x0, y1 - y0), Image.BILINEAR))
        np.testing.assert_array_equal(img[y0:y1, x0:x1], pasted)
        outside = np.ones(img.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert img[outside].std() > 10  # a photograph around it, not a flat fill


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_composite_boxes_are_exact_on_every_background_and_scale_with_feathered_edges(split):
    # Two composites drawn with one seed (the same backgrounds, crops, scales and places),
    # one of white objects and one of black: outside the box they must agree to the pixel
    # (the background untouched), inside every pixel must differ (the feathered edge
    # included), so the box is exactly where the object is, for every background.
    from skfg.datasets import composite_backgrounds, make_composite

    backgrounds = composite_backgrounds(split, n_textures=4, texture_size=64)
    n = 3 * len(backgrounds)
    white, black = np.full((n, 30, 50, 3), 255, np.uint8), np.zeros((n, 30, 50, 3), np.uint8)
    kwargs = dict(image_size=96, object_scale=(0.1, 1.0), crop_scale=(0.05, 1.0), feather=0.3, random_state=0)
    Xw, boxes = make_composite(white, backgrounds, **kwargs)
    Xb, boxes_b = make_composite(black, backgrounds, **kwargs)
    np.testing.assert_array_equal(boxes, boxes_b)
    sides = []
    for a, b, (x0, y0, x1, y1) in zip(Xw, Xb, boxes):
        inside = np.zeros(a.shape[:2], bool)
        inside[y0:y1, x0:x1] = True
        differs = (a != b).any(-1)
        np.testing.assert_array_equal(differs, inside)
        sides.append(max(x1 - x0, y1 - y0))
        center = a[(y0 + y1) // 2, (x0 + x1) // 2]
        assert (center == 255).all()  # full weight inside the ramp
    assert min(sides) < 20 < 80 < max(sides)  # several scales were drawn


def test_composite_backgrounds_are_disjoint_between_splits_and_reproducible():
    from skfg.datasets import composite_backgrounds

    digests = {}
    for split in ("train", "val", "test"):
        images = composite_backgrounds(split)
        assert len(images) >= 14 and all(im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8 for im in images)
        digests[split] = {hashlib.sha1(np.ascontiguousarray(im)).hexdigest() for im in images}
        assert len(digests[split]) == len(images)  # no image twice within a split
        again = composite_backgrounds(split)
        assert all(np.array_equal(a, b) for a, b in zip(images, again))
    assert not digests["train"] & digests["val"] and not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]
    with pytest.raises(ValueError, match="split"):
        composite_backgrounds("holdout")


def test_make_composite_validates():
    from skfg.datasets import make_composite

    objects = np.zeros((2, 10, 10, 3), dtype=np.uint8)
    for kwargs, match in (({"object_scale": (0.5, 0.2)}, "object_scale"), ({"object_scale": (0, 1)}, "object_scale"),
                          ({"image_size": 4}, "image_size"), ({"backgrounds": []}, "background"),
                          ({"crop_scale": (0.5, 1.5)}, "crop_scale"), ({"feather": 0.6}, "feather")):
        with pytest.raises(ValueError, match=match):
            make_composite(objects, **kwargs)


def test_a_broken_symlink_is_listed_and_reported(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    X, _ = load_image_folder(tmp_path)
    assert any(p.endswith("gone.jpg") for p in X)
    bad = verify_images(X)
    assert len(bad) == 1 and bad[0].name.endswith("gone.jpg") and "not found" in bad[0].error


def test_a_split_root_is_refused_with_the_split_to_load_and_split_loads_it(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / cls / f"{split}.png")
    with pytest.raises(ValueError, match=r"holds the split folders train/, val/, test/.*split='train'"):
        load_image_folder(tmp_path)  # would be 3 "classes" named train / val / test
    X, y = load_image_folder(tmp_path, split="train")
    assert sorted(set(y)) == ["a", "b"] and all("/train/" in x for x in X)
    with pytest.raises(FileNotFoundError, match=r"No such folder: .*holdout \(.* has train/, val/, test/\)"):
        load_image_folder(tmp_path, split="holdout")


def test_a_class_named_like_a_split_is_still_a_class(tmp_path):
    for cls in ("test", "prod"):  # images right inside: classes, not splits
        (tmp_path / cls).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / cls / "x.png")
    X, y = load_image_folder(tmp_path)
    assert y.tolist() == ["prod", "test"]


def test_image_arrays_get_a_dtype_hint_that_fits_their_values_and_empty_images_are_refused():
    from skfg.exceptions import ImageDecodeError
    from skfg.images import ImageSource

    for arr, hint in [(np.full((1, 4, 4, 3), 0.5), r"\(x \* 255\)"),
                      (np.full((1, 4, 4, 3), 200.0), r"x.round\(\).astype\(np.uint8\)"),
                      (np.full((1, 4, 4, 3), 200, dtype=np.int64), r"x.astype\(np.uint8\)"),
                      (np.full((1, 4, 4, 3), 4000, dtype=np.int32), "reach 4000")]:
        with pytest.raises(ImageDecodeError, match=hint):
            ImageSource(arr).load(0)
    with pytest.raises(ValueError, match=r"\(2, 0, 0, 3\).*empty"):
        ImageSource(np.zeros((2, 0, 0, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="empty image"):
        ImageSource([np.zeros((0, 5, 3), dtype=np.uint8)]).load(0)
