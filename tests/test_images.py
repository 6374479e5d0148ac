import io

import numpy as np
import pytest
import torch
from PIL import Image

from skfg import CNNFeatureExtractor
from skfg.datasets import verify_images
from skfg.images import ImageDecodeError, ImageSource, eval_transform, iter_batches, to_rgb
from skfg.images import ImageTooLargeError
import skfg.images
import subprocess
import sys
import textwrap


@pytest.fixture(scope="module")
def extractor():
    return CNNFeatureExtractor(image_size=32, cache=False).fit()


def _save(img, path, **kw):
    img.save(path, **kw)
    return str(path)


def test_paths_arrays_and_pil_give_identical_features(tmp_path, rgb_images, extractor):
    paths = [_save(Image.fromarray(a), tmp_path / f"{i}.png") for i, a in enumerate(rgb_images)]
    pils = [Image.fromarray(a) for a in rgb_images]
    f_arr = extractor.transform(rgb_images)
    f_path = extractor.transform(np.asarray(paths))
    f_pil = extractor.transform(pils)
    f_list = extractor.transform([a for a in rgb_images])
    np.testing.assert_array_equal(f_arr, f_path)
    np.testing.assert_array_equal(f_arr, f_pil)
    np.testing.assert_array_equal(f_arr, f_list)


def test_grayscale_array_equals_rgb_replicated(rgb_images, extractor):
    gray = rgb_images[..., 0]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(extractor.transform(gray), extractor.transform(rgb))


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA"])
def test_modes_convert_to_rgb(tmp_path, rgb_images, mode, extractor):
    img = Image.fromarray(rgb_images[0]).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = _save(img, tmp_path / f"img.{fmt.lower()}", format=fmt)
    out = ImageSource([path]).load(0)
    assert out.mode == "RGB" and out.size == (56, 40)
    assert extractor.transform([path]).shape == (1, extractor.n_features_out_)


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    arr[:4] = 32896  # 128 * 257
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(ImageSource([str(path)]).load(0))
    assert rgb[0, 0].tolist() == [128, 128, 128] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert np.asarray(ImageSource([arr]).load(0))[0, 0].tolist() == [128, 128, 128]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert ImageSource([str(path)]).load(0).size == (10, 30)


def test_truncated_jpeg_raises_naming_the_file(tmp_path, rgb_images, extractor):
    buf = io.BytesIO()
    Image.fromarray(rgb_images[0]).save(buf, format="JPEG")
    bad = tmp_path / "broken_car.jpg"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    good = _save(Image.fromarray(rgb_images[1]), tmp_path / "good.png")
    with pytest.raises(ImageDecodeError, match="broken_car.jpg"):
        extractor.transform([good, str(bad)])
    # a failed transform leaves the extractor usable
    assert extractor.transform([good]).shape == (1, extractor.n_features_out_)


def test_verify_images_reports_every_bad_file(tmp_path, rgb_images):
    paths = [_save(Image.fromarray(a), tmp_path / f"ok{i}.png") for i, a in enumerate(rgb_images)]
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    paths[1:1] = [str(tmp_path / "junk.jpg")]
    paths.append(str(tmp_path / "empty.png"))
    paths.append(str(tmp_path / "missing.png"))
    bad = verify_images(paths)
    assert [b.index for b in bad] == [1, 5, 6]
    assert "junk.jpg" in bad[0].error and "missing.png: file not found" in bad[2].error
    assert verify_images(paths[2:5]) == []


@pytest.mark.parametrize(
    "X, err",
    [
        ("one.jpg", "single str"),
        (np.zeros((3, 5)), "shape"),
        ([], "empty"),
        ([1, 2], "X\\[0\\] is a int"),
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((2, 8, 8, 5), dtype=np.uint8), "shape"),
        (np.zeros((20, 30, 3), dtype=np.uint8), "one color image"),
    ],
)
def test_bad_inputs_raise_clear_errors(X, err, extractor):
    with pytest.raises((TypeError, ValueError), match=err):
        extractor.transform(X)


def test_iter_batches_covers_indices_in_order(rgb_images):
    source = ImageSource(rgb_images)
    for n_jobs in (0, 2):
        got = list(iter_batches(source, eval_transform(16), 3, indices=[3, 0, 2], n_jobs=n_jobs))
        assert [list(i) for i, _ in got] == [[3, 0, 2]]
        assert got[0][1].dtype == torch.uint8 and got[0][1].shape == (3, 3, 16, 16)


def test_image_dataset_with_torch_dataloader(rgb_images):
    from skfg.images import ImageDataset, train_transform

    ds = ImageDataset(rgb_images, y=[0, 1, 0, 1], transform=train_transform(24))
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    x, t = next(iter(loader))
    assert x.shape == (2, 3, 24, 24) and x.dtype == torch.uint8 and t.tolist() == [0, 1]
    assert ImageDataset(rgb_images)[0][1] == -1


def test_decode_error_mid_stream_names_file(tmp_path, rgb_images):
    paths = [_save(Image.fromarray(a), tmp_path / f"{i}.png") for i, a in enumerate(rgb_images)]
    paths[2] = str(tmp_path / "gone.png")
    with pytest.raises(ImageDecodeError, match="gone.png"):
        list(iter_batches(ImageSource(paths), eval_transform(16), 1, n_jobs=2))


def test_a_thin_png_is_refused_before_the_resize_allocates(tmp_path):
    # 1 x 150000 pixels: a few hundred bytes on disk, ~22 GB once its short side is resized
    # to 224. Run under a 4 GiB address-space limit: allocating would fail (or be killed).
    path = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 150000, 3), np.uint8)).save(path)
    assert path.stat().st_size < 2000
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from skfg import CNNFeatureExtractor
        from skfg.images import ImageTooLargeError
        try:
            CNNFeatureExtractor(image_size=224, resize="crop", cache=False).fit().transform([{str(path)!r}])
        except ImageTooLargeError as exc:
            print("REFUSED", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout and str(path) in out.stdout and "150000x1" in out.stdout
    bad = verify_images([str(path)])  # skfg verify lists it too (resize to 224 by default)
    assert len(bad) == 1 and str(path) in bad[0].error and "MAX_PIXELS" in bad[0].error

def test_the_decoded_pixel_limit_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(skfg.images, "MAX_PIXELS", 50_000)
    with pytest.raises(ImageTooLargeError, match=r"big\.png: decoded is 300x200 = 60,000 pixels"):
        skfg.images.ImageSource([str(path)]).load(0)
    assert verify_images([str(path)], image_size=None)[0].name == str(path)


def test_preprocessing_is_the_chain_it_replaces(rgb_images):
    from skfg.images import Preprocessing, to_input

    prep = Preprocessing(image_size=32, resize="crop", mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), batch_size=3)
    source = ImageSource(rgb_images)
    got = list(prep.batches(source, "cpu"))
    assert [idx.tolist() for idx, _ in got] == [[0, 1, 2], [3]]
    expected = [to_input(torch.stack([eval_transform(32, "crop")(source.load(i)) for i in idx]), prep.mean, prep.std,
                         "cpu") for idx, _ in got]
    for (_, x), e in zip(got, expected):
        assert torch.equal(x, e) and x.is_contiguous(memory_format=torch.channels_last)
    assert prep == Preprocessing(32, "crop", [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], 3) and hash(prep)  # plain, hashable data


def test_jpeg_draft_decodes_large_jpegs_smaller_and_nothing_else(tmp_path):
    from skfg import CNNFeatureExtractor

    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (480, 640, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(rng.randint(0, 256, (480, 640, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    source = ImageSource([str(tmp_path / "big.jpg"), str(tmp_path / "big.png")])
    assert source.load(0).size == (640, 480)
    assert source.load(0, draft=(160, 160)).size == (320, 240)  # DCT scaling by 1/2: both sides stay >= 160
    assert source.load(0, draft=(300, 300)).size == (640, 480)  # 1/2 would be 240 < 300: full size
    assert source.load(1, draft=(160, 160)).size == (640, 480)  # not a JPEG: decoded in full
    plain, draft = CNNFeatureExtractor(image_size=64).fit(), CNNFeatureExtractor(image_size=64, jpeg_draft=True).fit()
    assert plain._cache_key() != draft._cache_key()  # other pixels, other cache entries
    assert draft.preprocessing_.jpeg_draft and not plain.preprocessing_.jpeg_draft
    assert np.abs(draft.transform(source.items) - plain.transform(source.items)).max() > 0


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_the_torch_free_resize_equals_torchvisions(resize):
    """skfg._decode.eval_image (what a torch-free process serving an ONNX copy runs) is
    torchvision's Resize / CenterCrop on PIL images, pixel for pixel."""
    import torchvision.transforms as T

    from skfg._decode import eval_array

    rng = np.random.RandomState(0)
    size = 64
    reference = (T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()]) if resize == "crop"
                 else T.Compose([T.Resize((size, size)), T.PILToTensor()]))
    for w, h in [(64, 64), (64, 97), (97, 64), (65, 200), (301, 67), (33, 40), (128, 129), (1000, 999)]:
        img = Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
        np.testing.assert_array_equal(eval_array(img, size, resize), reference(img).numpy(), err_msg=f"{w}x{h}")
        np.testing.assert_array_equal(eval_transform(size, resize)(img).numpy(), reference(img).numpy())
