"""The feature store does not trust its files: every damaged chunk is named or recomputed,
and rows are never returned misaligned (issue 42)."""

import json
import logging

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from skfg.index import NearestNeighborIndex, RefinedIndex
from skfg.parallel import extract_features
from skfg.store import FeatureStore


@pytest.fixture
def data():
    return np.random.RandomState(0).randn(40, 6).astype(np.float32)


@pytest.fixture
def store(tmp_path, data):
    scaler = StandardScaler().fit(data)
    return extract_features(scaler, data, tmp_path / "s", chunk_size=4), scaler


def _chunk(store, i):
    return store.directory / f"chunk-{i:08d}.npy"


@pytest.mark.parametrize("damage, problem", [
    (lambda path: path.write_bytes(b""), "not a readable .npy file"),  # a crash without fsync
    (lambda path: path.write_bytes(path.read_bytes()[:-7]), r"217 bytes, expected 224 \(truncated\?\)"),
    (lambda path: np.save(path, np.ones((3, 6), np.float32)), r"shape \(3, 6\), expected \(4, 6\)"),
    (lambda path: np.save(path, np.ones((4, 6), np.float64)), "dtype float64, expected float32"),
])
def test_a_damaged_chunk_is_named_on_read_and_recomputed_on_the_next_extraction(store, data, damage, problem, caplog):
    store, scaler = store
    expected = store.to_numpy()
    damage(_chunk(store, 3))
    with pytest.raises(ValueError, match=rf"chunk-00000003\.npy \(chunk 3 of .*\) is damaged: {problem}"):
        store.to_numpy()
    with pytest.raises(ValueError, match="chunk-00000003.npy"):
        store.read_rows([1, 13])  # the rows of a damaged chunk are never read
    with caplog.at_level(logging.WARNING, logger="skfg"):
        assert store.missing_chunks() == [3]
    assert "chunk-00000003.npy is damaged" in caplog.text
    again = extract_features(scaler, data, store.directory, chunk_size=4)  # the rerun recomputes it
    np.testing.assert_array_equal(again.to_numpy(), expected)
    assert again.to_numpy().shape == (40, 6)


def test_changed_bytes_fail_the_checksum(store):
    store, _ = store
    raw = bytearray(_chunk(store, 5).read_bytes())
    raw[-1] ^= 0xFF
    _chunk(store, 5).write_bytes(bytes(raw))
    assert store.verify() == {5: "its content does not match its checksum"}
    with pytest.raises(ValueError, match="chunk-00000005.npy .*does not match its checksum"):
        store.to_numpy()
    with pytest.raises(ValueError, match="checksum"):
        list(store.iter_chunks())


def test_a_chunk_without_its_checksum_counts_as_missing(store):
    store, _ = store
    (store.directory / "chunk-00000002.sum").unlink()
    assert store.missing_chunks() == [2]


def test_a_folder_of_chunks_without_a_manifest_is_refused_unless_adopted(store, data):
    store, scaler = store
    expected = store.to_numpy()
    (store.directory / "manifest.json").unlink()
    with pytest.raises(ValueError, match="holds 10 chunk files but no manifest.json.*adopt=True"):
        extract_features(scaler, data, store.directory, chunk_size=4)
    other = StandardScaler().fit(data * 2)  # another extractor: its rows would be adopted silently before
    with pytest.raises(ValueError, match="no manifest.json"):
        extract_features(other, data, store.directory, chunk_size=4)
    adopted = extract_features(scaler, data, store.directory, chunk_size=4, adopt=True)
    np.testing.assert_array_equal(adopted.to_numpy(), expected)
    assert adopted.verify() == {}


def test_a_float64_chunk_is_not_read_as_float32_by_the_refined_index(store, data):
    store, _ = store
    index = RefinedIndex(NearestNeighborIndex("exact").fit(store.to_numpy()), store, k_factor=4)
    _, exact = index.search(data[:3], 1)
    assert (exact[:, 0] == [0, 1, 2]).all()
    np.save(_chunk(store, 0), np.asarray(store.read_chunk(0), dtype=np.float64))
    fresh = FeatureStore(store.directory)
    with pytest.raises(ValueError, match="chunk-00000000.npy .*dtype float64, expected float32"):
        RefinedIndex(NearestNeighborIndex("exact").fit(data), fresh, k_factor=4).search(data[:3], 1)


def test_a_store_of_the_first_format_is_read_without_checksums(store):
    store, _ = store
    manifest = store.directory / "manifest.json"
    meta = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(meta, format="skfg-features/1")))
    for path in store.directory.glob("*.sum"):
        path.unlink()
    old = FeatureStore(store.directory)
    assert old.missing_chunks() == [] and old.to_numpy().shape == (40, 6)
