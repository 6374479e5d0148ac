"""ObjectCropper: ELoPE's lightweight localization module, crops images to the object.

A CNN (the teacher) sees each training image; the mean over the channels of its last
stage (by default joined by the stage before's, ``teacher_map``) is a heat map of the
object. A tiny network (the teacher's first stages, 64 x 64
input) learns to predict it; its map, thresholded at ``tau``, gives the box. By default
``fit(X, y)`` first fine-tunes the teacher on the labelled images (the paper's setting)
and joins the pretrained ImageNet network's map to the teacher's (``imagenet_map``);
``teacher=None`` is the pretrained ImageNet network alone, no labels needed.

Runs in a few minutes on a 2-core CPU.
"""

import time

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.localization import ObjectCropper, box_iou

# 1. A real object on cluttered synthetic backgrounds: the dahlia of scikit-learn's
#    flower.jpg pasted at a random place and size into make_fine_grained images
#    stretched to 144 x 96 (each image's box is known).
FLOWER = Image.fromarray(load_sample_image("flower.jpg")).crop((172, 85, 448, 362))


def scenes(n, seed):
    backgrounds, _ = make_fine_grained(10, -(-n // 10), image_size=96, random_state=seed)
    rng = np.random.RandomState(seed)
    X, boxes = [], []
    for background in backgrounds[:n]:
        canvas = Image.fromarray(background).resize((144, 96))
        side = rng.randint(48, 73)
        x0, y0 = rng.randint(0, 144 - side + 1), rng.randint(0, 96 - side + 1)
        canvas.paste(FLOWER.resize((side, side)), (x0, y0))
        X.append(np.asarray(canvas))
        boxes.append((x0, y0, x0 + side, y0 + side))
    return np.stack(X), np.asarray(boxes, dtype=float)


X, _ = scenes(150, seed=0)
X_test, truth = scenes(60, seed=1)
t = time.perf_counter()
crop = ObjectCropper(None, teacher_size=224, tau=0.5, max_epochs=15, random_state=0).fit(X)  # no labels needed
print(f"fit in {time.perf_counter() - t:.1f} s; student: {crop.n_parameters_:,} parameters, "
      f"{crop.flops_ / 1e6:.1f} M multiply-adds per 64 x 64 image, {crop.heatmap_shape_} maps")
for source in ("student", "teacher"):
    iou = box_iou(crop.predict_boxes(X_test, source=source), truth)
    print(f"  {source:<7}: mean IoU {iou.mean():.2f}, IoU >= 0.5 on {np.mean(iou >= 0.5):.0%} of the test images")
boxes = crop.predict_boxes(X_test[:3])
for b, g in zip(boxes, truth[:3]):
    print(f"  predicted box {np.round(b).astype(int).tolist()}  true box {g.astype(int).tolist()}")
print(f"  crop sizes: {[c.size for c in crop.transform(X_test[:3])]}")

# 2. The cartoon birds of make_fine_grained. The default teacher is a classifier
#    fine-tuned on the birds with their class labels (the paper's setting), its map
#    joined by the pretrained network's: fit(X, y) trains it first, then the student.
#    On 600 training images (benchmarks/cropper_default.py) the default's boxes beat the
#    pretrained teacher's on every seed; on a set as small as this one a teacher
#    fine-tuned on about a hundred images is weak and the two are close.
X, y = make_fine_grained(n_classes=8, n_per_class=15, image_size=96, random_state=0)
X_test, y_test, truth = make_fine_grained(n_classes=8, n_per_class=6, image_size=96, random_state=1, return_boxes=True)
t = time.perf_counter()
bird_crop = ObjectCropper(random_state=0).fit(X, y)
print(f"birds: teacher fine-tuned and student trained in {time.perf_counter() - t:.0f} s")
for name, cropper in (("fine-tuned teacher (default)", bird_crop),
                      ("pretrained teacher", ObjectCropper(None, random_state=0).fit(X))):
    iou = box_iou(cropper.predict_boxes(X_test), truth)
    print(f"  {name:<28}: mean IoU {iou.mean():.2f}, IoU >= 0.5 on {np.mean(iou >= 0.5):.0%}")
print(f"  whole image: mean IoU {box_iou([0, 0, 96, 96], truth).mean():.2f}")

# 3. In a Pipeline, before the feature extractor: crops of any size go straight in. The
#    Pipeline passes y to the cropper's fit, which would fine-tune a teacher again; the
#    cropper fitted above is passed frozen instead (sklearn.frozen.FrozenEstimator: fit does
#    nothing, clone keeps it fitted). A classifier you fitted yourself is passed the same way
#    as the teacher: ObjectCropper(FrozenEstimator(classifier)).
pipe = Pipeline([
    ("crop", FrozenEstimator(bird_crop)),
    ("cnn", CNNFeatureExtractor(image_size=96)),
    ("clf", SoftmaxClassifier(max_epochs=40, random_state=0)),
]).fit(X, y)
plain = Pipeline([("cnn", CNNFeatureExtractor(image_size=96)),
                  ("clf", SoftmaxClassifier(max_epochs=40, random_state=0))]).fit(X, y)
print(f"pipeline accuracy with the cropper {pipe.score(X_test, y_test):.2f}, without {plain.score(X_test, y_test):.2f}")
