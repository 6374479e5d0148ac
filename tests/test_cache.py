"""The feature cache (skfg/_cache.py): entries keyed by content and settings, damaged ones
recomputed, a cache that cannot be written never loses features."""
from PIL import Image
from skfg import CNNFeatureExtractor
from skfg import clear_feature_cache
from skfg.datasets import make_fine_grained
import logging
import numpy as np
import os
import skfg._cache


def test_corrupt_cache_entries_are_logged_and_recomputed(pngs, tmp_path, caplog):
    X, _ = pngs
    ext = CNNFeatureExtractor(image_size=40, cache=str(tmp_path / "cache")).fit()
    first = ext.transform(X)
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == len(X)
    files[0].write_bytes(b"")  # empty (EOFError)
    np.save(files[1], np.zeros(3, np.float32))  # the wrong shape
    nan = bytearray(files[2].read_bytes())
    nan[128:132] = np.float32(np.nan).tobytes()  # the first value, after the 128-byte header
    files[2].write_bytes(bytes(nan))
    files[3].write_bytes(files[4].read_bytes())  # another image's entry copied over it
    clear_feature_cache()
    with caplog.at_level(logging.WARNING, logger="skfg"):
        again = ext.transform(X)
    np.testing.assert_array_equal(again, first)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(str(f) in logged for f in files[:4]) and str(files[4]) not in logged
    assert "holds NaN" in logged and "written for another image" in logged
    clear_feature_cache()
    assert np.load(files[0]).shape == (ext.n_features_out_,)  # rewritten

def test_a_cache_that_cannot_be_written_still_returns_the_features(pngs, tmp_path, caplog, monkeypatch):
    X, _ = pngs
    expected = CNNFeatureExtractor(image_size=40, cache=False).fit().transform(X)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    clear_feature_cache()
    with caplog.at_level(logging.WARNING, logger="skfg"):
        out = CNNFeatureExtractor(image_size=40, cache=str(blocker / "cache")).fit().transform(X)
    np.testing.assert_array_equal(out, expected)
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1  # once, not per image

    def full_disk(fh, value):
        fh.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(skfg._cache.np, "save", full_disk)
    clear_feature_cache()
    out = CNNFeatureExtractor(image_size=40, cache=str(tmp_path / "full")).fit().transform(X)
    np.testing.assert_array_equal(out, expected)
    assert not list((tmp_path / "full").rglob("*.tmp")) and not list((tmp_path / "full").rglob("*.npy"))

def test_a_rewritten_file_with_the_same_size_and_mtime_is_not_a_cache_hit(tmp_path):
    a, b = make_fine_grained(n_classes=2, n_per_class=1, image_size=40, random_state=0)[0]
    path = tmp_path / "img.bmp"  # BMP: the size depends on the dimensions only
    Image.fromarray(a).save(path)
    stat = path.stat()
    ext = CNNFeatureExtractor(image_size=40, cache=str(tmp_path / "cache")).fit()
    old = ext.transform([str(path)])
    Image.fromarray(b).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    new = ext.transform([str(path)])
    np.testing.assert_array_equal(new, CNNFeatureExtractor(image_size=40, cache=False).fit().transform([str(path)]))
    assert not np.array_equal(new, old)
