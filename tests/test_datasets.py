import numpy as np
import pytest
from PIL import Image

from skfg.datasets import MAX_SYNTHETIC_CLASSES, load_image_folder, make_fine_grained


def test_load_image_folder_sorted_and_reproducible(tmp_path):
    for cls, names in {"b_class": ["2.jpg", "10.png"], "a_class": ["z.jpeg", "x.JPG", "notes.txt"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            if n.endswith(".txt"):
                (tmp_path / cls / n).write_text("ignored")
            else:
                Image.new("RGB", (4, 4)).save(tmp_path / cls / n, format="PNG")
    (tmp_path / ".hidden").mkdir()
    X, y = load_image_folder(tmp_path)
    assert [p.split("/")[-1] for p in X] == ["x.JPG", "z.jpeg", "10.png", "2.jpg"]
    assert y.tolist() == ["a_class", "a_class", "b_class", "b_class"]
    X2, y2 = load_image_folder(str(tmp_path))
    assert X.tolist() == X2.tolist() and y.tolist() == y2.tolist()


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
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
    # the object is drawn on a uniform background: outside its box the image is background
    X, y, boxes = make_fine_grained(2, 2, image_size=64, random_state=3, return_boxes=True)
    for img, (x0, y0, x1, y1) in zip(X, boxes):
        inside = np.zeros(img.shape[:2], bool)
        inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        assert inside.mean() < 0.7  # a box, not the whole image


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
