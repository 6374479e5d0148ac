"""Loading image folders, checking images, and a synthetic fine-grained data set."""

from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from sklearn.utils import check_random_state

from ._decode import IMAGE_EXTENSIONS
from .images import ImageDecodeError, ImageSource, ResizeGuard

__all__ = ["BadImage", "IMAGE_EXTENSIONS", "SPLITS", "composite_backgrounds", "load_image_folder", "make_composite",
           "make_fine_grained", "make_flower_scenes", "split_names", "verify_images"]


BadImage = namedtuple("BadImage", ["index", "name", "error"])


SPLITS = ("train", "val", "test")


def _folder(root):
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No such folder: {root}")
    return root


def split_names(root):
    """The split folders (``train``, ``val``, ``test``) of an image folder root, in that
    order; empty for a folder of class folders.

    A sub-folder counts as a split when it is named so and holds folders (the classes): a
    class that happens to be called ``test`` holds images instead.

    Parameters
    ----------
    root : str or path

    Returns
    -------
    splits : list of str

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    """
    root = _folder(root)
    return [s for s in SPLITS if (root / s).is_dir()
            and any(p.is_dir() and not p.name.startswith(".") for p in (root / s).iterdir())]


def load_image_folder(root, extensions=IMAGE_EXTENSIONS, *, split=None):
    """Image paths and labels of a folder laid out as ``root/<class>/<image>``, or of one
    split of ``root/<split>/<class>/<image>``.

    Parameters
    ----------
    root : str or path
        The folder; each sub-folder is one class. A folder of splits (``train/``,
        ``val/``, ``test/``) needs ``split``.
    extensions : tuple of str
        File endings (case-insensitive) that count as images; others are ignored.
    split : str, optional
        Load ``root/<split>`` (e.g. ``"train"``), as ``skfg fit DATA`` does.

    Returns
    -------
    X : ndarray of shape (n_images,), dtype object
        Image paths, sorted by class folder then file name (reproducible).
    y : ndarray of shape (n_images,), dtype object
        The class folder name of each image.

    Raises
    ------
    FileNotFoundError
        If ``root`` (or ``root/<split>``) does not exist or holds no images.
    ValueError
        If ``root`` holds split folders and no ``split`` is given: its "classes" would be
        the split names.

    Examples
    --------
    >>> from skfg.datasets import load_image_folder
    >>> X, y = load_image_folder("cars", split="train")  # doctest: +SKIP
    """
    root = _folder(root)
    if split is not None:
        if not (root / split).is_dir():
            present = split_names(root)
            raise FileNotFoundError(f"No such folder: {root / split}"
                                    + (f" ({root} has {', '.join(s + '/' for s in present)})" if present else ""))
        root = root / split
    else:
        present = split_names(root)
        if present:
            raise ValueError(
                f"{root} holds the split folders {', '.join(s + '/' for s in present)}, not class folders: load "
                f"one split, e.g. load_image_folder({str(root)!r}, split={present[0]!r}) for {root / present[0]}."
            )
    exts = tuple(e.lower() for e in extensions)
    paths, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(class_dir).parts)
            broken_link = path.is_symlink() and not path.exists()  # kept: decoding reports it by name
            if (path.is_file() or broken_link) and not hidden and path.suffix.lower() in exts:
                paths.append(str(path))
                labels.append(class_dir.name)
    if not paths:
        raise FileNotFoundError(
            f"No images found under {root}: expected {root}/<class>/<image> with endings {exts}."
        )
    return np.asarray(paths, dtype=object), np.asarray(labels, dtype=object)


def verify_images(X, n_jobs=2, image_size=224):
    """Decode every image of X and report all that fail, in one pass.

    Besides unreadable files (missing, broken links, truncated, not an image), it reports
    images over :data:`skfg.images.MAX_PIXELS` when decoded or when resized to
    ``image_size`` on their shorter side (checked before anything is allocated).

    Parameters
    ----------
    X : array-like
        Images in any form the extractors accept (usually a list of paths).
    n_jobs : int, default=2
        Decoding threads.
    image_size : int or None, default=224
        The extractor's ``image_size`` (with ``resize="crop"``); None skips the resize check.

    Returns
    -------
    bad : list of BadImage
        ``(index, name, error)`` for each image that cannot be decoded; empty when all
        are fine.

    Examples
    --------
    >>> from skfg.datasets import verify_images
    >>> verify_images(["does/not/exist.jpg"])[0].error
    'does/not/exist.jpg: file not found'
    """
    source = ImageSource(X)

    guard = ResizeGuard(image_size) if image_size else (lambda image: image)

    def check(i):
        try:
            source.transformed(i, guard)
        except ImageDecodeError as exc:
            return BadImage(i, source.name(i), str(exc))
        return None

    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        results = list(pool.map(check, range(len(source))))
    return [r for r in results if r is not None]


# ----------------------------------------------------------- synthetic data
# Each class is a combination of small details on one shared "bird" shape.
_SPOT_COLORS = [(220, 30, 30), (30, 90, 220), (250, 200, 20), (240, 240, 240)]
_DETAILS = (len(_SPOT_COLORS), 3, 3, 2, 2)  # spot colour, stripes, tail, beak, eye ring
MAX_SYNTHETIC_CLASSES = int(np.prod(_DETAILS))


def _class_details(c):
    """Mixed-radix decoding of a (fixed) permutation of class ids into detail values."""
    code = np.random.RandomState(12345).permutation(MAX_SYNTHETIC_CLASSES)[c]
    values = []
    for base in _DETAILS:
        values.append(int(code % base))
        code //= base
    return values


def _draw_clutter(draw, rng, size, n):
    for _ in range(n):
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.35, 2) * size
        color = tuple(int(v) for v in rng.randint(40, 220, 3))
        if rng.rand() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)


def _draw_object(draw, rng, size, details):
    """Draw one bird-like object; returns its box (x0, y0, x1, y1) in pixels."""
    spot, stripes, tail, beak, ring = details
    scale = rng.uniform(0.38, 0.48) * size
    bw, bh = scale, scale * 0.55
    # the tail reaches 0.9 bw behind the centre, head + long beak 1.0 bw ahead, the head
    # 0.41 bw above and the body 0.28 bw below: keep all of it inside the image
    cx = rng.uniform(1.0 * bw, size - 1.0 * bw)
    cy = rng.uniform(0.45 * bw, size - 0.3 * bw)
    facing = 1 if rng.rand() < 0.5 else -1
    body = tuple(int(v) for v in rng.randint(90, 170, 3))
    dark = tuple(max(0, v - 70) for v in body)
    pts = []

    def poly(points, fill):
        pts.extend(points)
        draw.polygon(points, fill=fill)

    # tail: 0 = short wedge, 1 = long fork, 2 = fan
    tx = cx - facing * bw * 0.5
    if tail == 0:
        poly([(tx, cy - bh * 0.1), (tx - facing * bw * 0.25, cy), (tx, cy + bh * 0.1)], dark)
    elif tail == 1:
        poly([(tx, cy), (tx - facing * bw * 0.4, cy - bh * 0.35), (tx - facing * bw * 0.25, cy)], dark)
        poly([(tx, cy), (tx - facing * bw * 0.4, cy + bh * 0.35), (tx - facing * bw * 0.25, cy)], dark)
    else:
        poly([(tx, cy), (tx - facing * bw * 0.3, cy - bh * 0.45), (tx - facing * bw * 0.3, cy + bh * 0.45)], dark)
    box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
    pts.extend([(box[0], box[1]), (box[2], box[3])])
    draw.ellipse(box, fill=body)
    # wing stripes: 1, 2 or 3
    for s in range(stripes + 1):
        x = cx - facing * bw * (0.05 + 0.1 * s)
        draw.line([(x, cy - bh * 0.25), (x - facing * bw * 0.05, cy + bh * 0.25)], fill=dark, width=max(1, int(size / 64)))
    # head with the coloured spot
    hr = bh * 0.38
    hx, hy = cx + facing * bw * 0.5, cy - bh * 0.35
    pts.extend([(hx - hr, hy - hr), (hx + hr, hy + hr)])
    draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=body)
    sr = hr * 0.45
    draw.ellipse([hx - sr, hy - hr * 0.9, hx + sr, hy - hr * 0.9 + 2 * sr], fill=_SPOT_COLORS[spot])
    er = hr * (0.35 if ring else 0.18)
    ex = hx + facing * hr * 0.35
    if ring:
        draw.ellipse([ex - er, hy - er, ex + er, hy + er], fill=(250, 250, 250))
    draw.ellipse([ex - hr * 0.15, hy - hr * 0.15, ex + hr * 0.15, hy + hr * 0.15], fill=(10, 10, 10))
    # beak: short or long
    bl = hr * (0.6 if beak == 0 else 1.5)
    bx = hx + facing * hr * 0.9
    poly([(bx, hy - hr * 0.2), (bx + facing * bl, hy + hr * 0.05), (bx, hy + hr * 0.25)], (230, 150, 30))
    xs, ys = zip(*pts)
    return (
        max(0.0, min(xs)),
        max(0.0, min(ys)),
        min(float(size), max(xs)),
        min(float(size), max(ys)),
    )


def make_fine_grained(n_classes=10, n_per_class=20, image_size=64, random_state=None, return_boxes=False):
    """Synthetic fine-grained images: one bird-like object on a cluttered background.

    Every class has the same body shape and random body colour; classes differ only in
    small details (colour of a head spot, number of wing stripes, tail shape, beak
    length, eye ring), and each class's details are fixed, so two calls with different
    ``random_state`` draw new images of the same classes (train/test splits).

    Parameters
    ----------
    n_classes : int, default=10
        Number of classes, at most ``MAX_SYNTHETIC_CLASSES`` (144).
    n_per_class : int, default=20
        Images per class.
    image_size : int, default=64
        Side of the square images.
    random_state : int, RandomState or None
        Seed for positions, sizes, colours and clutter.
    return_boxes : bool, default=False
        Also return each object's bounding box.

    Returns
    -------
    X : ndarray of shape (n_classes * n_per_class, image_size, image_size, 3), uint8
    y : ndarray of shape (n_classes * n_per_class,), int
        Class ids in ``0 .. n_classes - 1``, shuffled.
    boxes : ndarray of shape (n, 4), float, only if ``return_boxes``
        ``(x0, y0, x1, y1)`` in pixels of the returned images.

    Examples
    --------
    >>> from skfg.datasets import make_fine_grained
    >>> X, y, boxes = make_fine_grained(4, 3, image_size=48, random_state=0, return_boxes=True)
    >>> X.shape, X.dtype, y.shape, boxes.shape
    ((12, 48, 48, 3), dtype('uint8'), (12,), (12, 4))
    """
    if not 1 <= n_classes <= MAX_SYNTHETIC_CLASSES:
        raise ValueError(f"n_classes must be in [1, {MAX_SYNTHETIC_CLASSES}], got {n_classes}")
    if n_per_class < 1 or image_size < 16:
        raise ValueError(f"need n_per_class >= 1 and image_size >= 16, got {n_per_class}, {image_size}")
    rng = check_random_state(random_state)
    draw_size = max(image_size, 128)  # draw large, then downsample (antialiasing)
    y = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(y)
    X = np.empty((len(y), image_size, image_size, 3), dtype=np.uint8)
    boxes = np.empty((len(y), 4))
    for i, c in enumerate(y):
        base = tuple(int(v) for v in rng.randint(60, 200, 3))
        img = Image.new("RGB", (draw_size, draw_size), base)
        draw = ImageDraw.Draw(img)
        _draw_clutter(draw, rng, draw_size, rng.randint(4, 10))
        box = _draw_object(draw, rng, draw_size, _class_details(int(c)))
        img = img.filter(ImageFilter.GaussianBlur(radius=draw_size / 256))
        if draw_size != image_size:
            img = img.resize((image_size, image_size), Image.LANCZOS)
        noise = rng.normal(0, 6, (image_size, image_size, 3))
        X[i] = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        boxes[i] = np.asarray(box) * (image_size / draw_size)
    if return_boxes:
        return X, y, boxes
    return X, y


def _sample_backgrounds():
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


# The dahlia of scikit-learn's flower.jpg (shipped with scikit-learn, so offline), cropped to
# its petals (276 x 277 px)
_DAHLIA = (172, 85, 448, 362)


def make_flower_scenes(n, random_state=None, height=96, width=144):
    """A real object to localise: scenes with a photographed dahlia at a known box.

    Each scene is a :func:`make_fine_grained` image (a cartoon bird and clutter) stretched
    to ``width x height``, with the dahlia of scikit-learn's ``flower.jpg`` pasted at a
    random place and size (48-72 px a side, mirrored half the time). The pretrained
    ImageNet teacher of :class:`skfg.ObjectCropper` finds such a photographed object
    more easily than the cartoon birds.

    Parameters
    ----------
    n : int
    random_state : int, RandomState or None
    height, width : int, default=96, 144

    Returns
    -------
    X : ndarray of shape (n, height, width, 3), uint8
    boxes : ndarray of shape (n, 4)
        The dahlia's box in each scene, ``(x0, y0, x1, y1)`` in pixels.
    """
    from sklearn.datasets import load_sample_image

    flower = Image.fromarray(load_sample_image("flower.jpg")).crop(_DAHLIA)
    seed = check_random_state(random_state).randint(2**31 - 1) if not isinstance(random_state, int) else random_state
    backgrounds, _ = make_fine_grained(10, -(-n // 10), image_size=96, random_state=seed)
    rng = np.random.RandomState(seed)
    X, boxes = [], []
    for background in backgrounds[:n]:
        canvas = Image.fromarray(background).resize((width, height))
        side = rng.randint(48, 73)
        x0, y0 = rng.randint(0, width - side + 1), rng.randint(0, height - side + 1)
        patch = flower.resize((side, side))
        if rng.rand() < 0.5:
            patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
        canvas.paste(patch, (x0, y0))
        X.append(np.asarray(canvas))
        boxes.append((x0, y0, x0 + side, y0 + side))
    return np.stack(X), np.asarray(boxes, dtype=np.float64)


# Background photographs of the composite sets, disjoint between the splits: files shipped
# with scikit-image (skimage/data) and scikit-learn's two sample images. Both motorcycle
# views stay in one split (they show the same scene).
_BACKGROUND_PHOTOS = {
    "train": ("astronaut.png", "camera.png", "coffee.png", "coins.png", "grass.png", "moon.png",
              "motorcycle_left.png", "motorcycle_right.png", "page.png"),
    "val": ("chelsea.png", "brick.png", "hubble_deep_field.jpg", "clock_motion.png", "text.png", "sklearn:china.jpg"),
    "test": ("rocket.jpg", "gravel.png", "ihc.png", "cell.png", "retina.jpg", "color.png", "sklearn:flower.jpg"),
}
_TEXTURE_SEEDS = {"train": 0, "val": 1, "test": 2}
_TEXTURES = ("clouds", "grating", "patches", "checker")


def _texture(kind, rng, size):
    """A ``size x size`` RGB texture of ``kind`` (uint8), its colours and frequencies from ``rng``."""
    colours = rng.randint(0, 256, size=(2, 3)).astype(float)
    if kind == "clouds":  # 1/f^a noise: cloud- or foliage-like, a colour ramp between two colours
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
        f[0, 0] = 1.0
        spectrum = (rng.randn(size, size) + 1j * rng.randn(size, size)) / f ** rng.uniform(1.0, 2.0)
        t = np.real(np.fft.ifft2(spectrum))
    elif kind == "grating":  # stripes at a random angle and period
        yy, xx = np.mgrid[:size, :size]
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, size / 4)
        t = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == "checker":
        yy, xx = np.mgrid[:size, :size] // int(rng.randint(8, size // 6))
        t = ((yy + xx) % 2).astype(float)
    else:  # "patches": clutter of overlapping rectangles and ellipses in random colours
        image = Image.new("RGB", (size, size), tuple(int(v) for v in colours[0]))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.randint(20, 60))):
            x0, y0 = rng.randint(0, size, size=2)
            w, h = rng.randint(size // 16, size // 3, size=2)
            shape = draw.ellipse if rng.rand() < 0.5 else draw.rectangle
            shape((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=tuple(int(v) for v in rng.randint(0, 256, 3)))
        return np.asarray(image)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-12)
    return np.round(colours[0] + t[..., None] * (colours[1] - colours[0])).astype(np.uint8)


def composite_backgrounds(split, n_textures=8, texture_size=384):
    """Backgrounds for :func:`make_composite`, disjoint between ``train``, ``val`` and ``test``.

    Each split has its own photographs (6 to 9: scenes, objects, people, animals, text,
    microscopy, astronomy, surfaces, shipped with scikit-image and scikit-learn, so
    offline) and ``n_textures`` procedural textures of four kinds (1/f noise clouds,
    gratings, checkerboards, clutter of coloured shapes) from the split's own seed. No
    image occurs in two splits, so localization defaults chosen on ``val`` composites can
    be reported on ``test`` composites built from other backgrounds.

    Parameters
    ----------
    split : {"train", "val", "test"}
    n_textures : int, default=8
        Procedural textures added to the split's photographs.
    texture_size : int, default=384
        Side of each texture in pixels.

    Returns
    -------
    backgrounds : list of ndarray of shape (H, W, 3), uint8
        The photographs (grey ones as RGB) and then the textures.

    Raises
    ------
    ImportError
        If scikit-image is not installed (``pip install "skfg[datasets]"``).

    Examples
    --------
    >>> from skfg.datasets import composite_backgrounds
    >>> len(composite_backgrounds("val", n_textures=2))  # 6 photographs and 2 textures
    8
    """
    if split not in _BACKGROUND_PHOTOS:
        raise ValueError(f"split must be one of {sorted(_BACKGROUND_PHOTOS)}, got {split!r}")
    if int(n_textures) < 0 or int(texture_size) < 32:
        raise ValueError(f"n_textures must be >= 0 and texture_size >= 32, got {n_textures!r}, {texture_size!r}")
    try:
        import skimage
    except ImportError as exc:
        raise ImportError("composite_backgrounds needs scikit-image for its photographs: "
                          'pip install "skfg[datasets]" (or scikit-image)') from exc
    from sklearn.datasets import load_sample_image

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in _BACKGROUND_PHOTOS[split]:
        if name.startswith("sklearn:"):
            out.append(np.asarray(load_sample_image(name.split(":", 1)[1])))
            continue
        with Image.open(folder / name) as image:
            out.append(np.asarray(image.convert("RGB")))
    rng = np.random.RandomState(_TEXTURE_SEEDS[split])
    out.extend(_texture(_TEXTURES[i % len(_TEXTURES)], rng, int(texture_size)) for i in range(int(n_textures)))
    return out


def make_composite(objects, backgrounds="sklearn", image_size=224, object_scale=(0.3, 0.7), random_state=None, *,
                   crop_scale=(0.5, 1.0), feather=0.0):
    """Real objects pasted onto real photographs, with their exact boxes.

    For localization where the object does not fill the frame (ELoPE section 3.3): each
    object image (for example a bounding-box crop of a car) is resized so that its longer
    side is a fraction of ``image_size`` drawn from ``object_scale``, keeping its aspect
    ratio, and pasted at a uniformly random position onto a random square crop (a fraction
    of the shorter side drawn from ``crop_scale``, flipped at random) of a random
    background photograph, resized to ``image_size``. The pasted rectangle is the box.
    With ``feather > 0`` the object's edges fade into the background (a linear alpha ramp
    inside the rectangle), so no hard rectangle edge gives the box away; the box stays the
    whole pasted rectangle, its outermost pixels included.

    Parameters
    ----------
    objects : array-like of images
        The objects, in any form the estimators take (paths, uint8 arrays, PIL images).
    backgrounds : array-like of images or "sklearn", default="sklearn"
        The photographs to paste onto; ``"sklearn"``: the two that scikit-learn ships
        (:func:`sklearn.datasets.load_sample_images`).
    image_size : int, default=224
        Side of the square output images.
    object_scale : (float, float), default=(0.3, 0.7)
        Range of the object's longer side as a fraction of ``image_size``, within (0, 1].
    random_state : int, RandomState or None
        Seed for the backgrounds, crops, flips, scales and positions.
    crop_scale : (float, float), default=(0.5, 1.0)
        Range of the background crop's side as a fraction of the background's shorter
        side, within (0, 1]: small values zoom into a background's texture.
    feather : float, default=0.0
        Width of the softened edge as a fraction of the pasted object's shorter side, in
        [0, 0.5]: the object's weight rises linearly from ``1 / (k + 1)`` at the
        rectangle's border to 1 at ``k = round(feather * shorter side)`` pixels inside.
        0 pastes the object as it is.

    Returns
    -------
    X : ndarray of shape (n_objects, image_size, image_size, 3), uint8
    boxes : ndarray of shape (n_objects, 4), int
        ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive: image ``i``'s object
        is exactly ``X[i, y0:y1, x0:x1]``.

    Examples
    --------
    >>> import numpy as np
    >>> from skfg.datasets import make_composite
    >>> objects = np.full((3, 40, 60, 3), 255, dtype=np.uint8)
    >>> X, boxes = make_composite(objects, image_size=96, random_state=0)
    >>> X.shape, boxes.shape
    ((3, 96, 96, 3), (3, 4))
    """
    lo, hi = _fraction_range("object_scale", object_scale)
    crop_lo, crop_hi = _fraction_range("crop_scale", crop_scale)
    if not 0 <= float(feather) <= 0.5:
        raise ValueError(f"feather must be in [0, 0.5], got {feather!r}")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size!r}")
    image_size = int(image_size)
    if isinstance(backgrounds, str) and backgrounds == "sklearn":
        backgrounds = _sample_backgrounds()
    sources = {}
    for name, images in (("objects", objects), ("backgrounds", backgrounds)):
        try:
            sources[name] = ImageSource(images)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}: {err}") from err
    objects, backgrounds = sources["objects"], sources["backgrounds"]
    rng = check_random_state(random_state)
    X = np.empty((len(objects), image_size, image_size, 3), dtype=np.uint8)
    boxes = np.empty((len(objects), 4), dtype=int)
    loaded = {}
    for i in range(len(objects)):
        b = int(rng.randint(len(backgrounds)))
        if b not in loaded:
            loaded[b] = backgrounds.load(b)
        bg = loaded[b]
        side = max(1, int(rng.uniform(crop_lo, crop_hi) * min(bg.size)))
        left, top = rng.randint(bg.width - side + 1), rng.randint(bg.height - side + 1)
        canvas = bg.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.BILINEAR)
        if rng.rand() < 0.5:
            canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
        obj = objects.load(i)
        longer = rng.uniform(lo, hi) * image_size
        w = min(image_size, max(1, round(obj.width * longer / max(obj.size))))
        h = min(image_size, max(1, round(obj.height * longer / max(obj.size))))
        x0, y0 = rng.randint(image_size - w + 1), rng.randint(image_size - h + 1)
        obj = obj.resize((w, h), Image.BILINEAR)
        if feather > 0:
            canvas.paste(obj, (int(x0), int(y0)), _feather_mask(w, h, feather))
        else:
            canvas.paste(obj, (int(x0), int(y0)))
        X[i] = np.asarray(canvas)
        boxes[i] = (x0, y0, x0 + w, y0 + h)
    return X, boxes


def _fraction_range(name, value):
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= 1, got {value!r}")
    return lo, hi


def _feather_mask(width, height, feather):
    """An ``L`` mask: ``(d + 1) / (k + 1)`` at ``d`` pixels from the nearest border, 1 from ``k`` in."""
    k = max(1, round(feather * min(width, height)))
    d = np.minimum.outer(np.minimum(np.arange(height), np.arange(height)[::-1]),
                         np.minimum(np.arange(width), np.arange(width)[::-1]))
    alpha = np.minimum(1.0, (d + 1) / (k + 1))
    return Image.fromarray(np.clip(np.round(255 * alpha), 1, 255).astype(np.uint8), mode="L")


def low_shot_split(y, n_base_classes, n_shots, random_state=None):
    """Base / novel split of the low-shot protocol (imprinted-weights section 6.1.1).

    The first ``n_base_classes`` classes (in sorted order) are *base* classes and keep
    every training sample; each remaining *novel* class keeps ``n_shots`` random samples
    (all of them when it has fewer).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Training labels.
    n_base_classes : int
        Number of base classes, ``1 <= n_base_classes < n_classes``.
    n_shots : int
        Exemplars per novel class, ``>= 1``.
    random_state : int, RandomState or None
        Seeds the choice of the novel exemplars.

    Returns
    -------
    base_idx : ndarray of int
        Indices (into ``y``) of every sample of the base classes, ascending.
    novel_idx : ndarray of int
        Indices of the chosen novel exemplars, ascending.

    Examples
    --------
    >>> from skfg.datasets import low_shot_split
    >>> y = ["a", "a", "a", "b", "b", "b", "c", "c"]
    >>> base, novel = low_shot_split(y, n_base_classes=1, n_shots=1, random_state=0)
    >>> base.tolist(), [y[i] for i in novel]
    ([0, 1, 2], ['b', 'c'])
    """
    from sklearn.utils.validation import column_or_1d

    y = column_or_1d(np.asarray(y))
    classes = np.unique(y)
    if not 1 <= int(n_base_classes) < len(classes):
        raise ValueError(f"n_base_classes must be in [1, {len(classes) - 1}] for {len(classes)} classes; got {n_base_classes}")
    if int(n_shots) < 1:
        raise ValueError(f"n_shots must be >= 1; got {n_shots}")
    rng = check_random_state(random_state)
    base_idx = np.flatnonzero(np.isin(y, classes[: int(n_base_classes)]))
    novel = []
    for c in classes[int(n_base_classes):]:
        members = np.flatnonzero(y == c)
        novel.append(rng.choice(members, size=min(int(n_shots), len(members)), replace=False))
    return base_idx, np.sort(np.concatenate(novel))
