import pickle
import warnings

import faiss
import numpy as np
import pytest

import torch

from skfg.index import NearestNeighborIndex, ShardedIndex, decode_pq


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    faiss.omp_set_num_threads(1)  # 2 threads were often slower than 1 on small searches


def embeddings(n, d, seed=0, n_clusters=50, intrinsic=16):
    """Random embedding-like data: clustered, low intrinsic dimension, plus noise.

    (Isotropic Gaussian data of full dimension is no model of CNN embeddings: every
    approximate index degrades on it, as its nearest neighbours are barely nearer.)
    """
    rng = np.random.RandomState(seed)
    centres = rng.randn(n_clusters, intrinsic) * 3
    z = centres[rng.randint(n_clusters, size=n)] + rng.randn(n, intrinsic)
    return (z @ rng.randn(intrinsic, d) / np.sqrt(intrinsic) + 0.05 * rng.randn(n, d)).astype(np.float32)


def recall_at_10(index, X, Q):
    _, truth = NearestNeighborIndex("brute").fit(X).search(Q, 10)
    _, found = index.search(Q, 10)
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])


def test_exact_search_equals_brute_force():
    rng = np.random.RandomState(0)
    X, Q = rng.randn(500, 24).astype(np.float32), rng.randn(40, 24).astype(np.float32)
    d_exact, i_exact = NearestNeighborIndex("exact").fit(X).search(Q, 7)
    d_brute, i_brute = NearestNeighborIndex("brute").fit(X).search(Q, 7)
    full = ((Q[:, None, :] - X[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(i_exact, i_brute)
    np.testing.assert_array_equal(i_exact, np.argsort(full, axis=1)[:, :7])
    np.testing.assert_allclose(d_exact, np.sort(full, axis=1)[:, :7], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d_brute, d_exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_recall_at_defaults(method):
    data = embeddings(20200, 64)
    X, Q = data[:20000], data[20000:]  # queries from the same distribution, not indexed
    assert recall_at_10(NearestNeighborIndex(method).fit(X), X, Q) >= 0.95


def test_pq_stores_code_size_bytes_per_vector_and_decodes():
    X = embeddings(2000, 64)
    index = NearestNeighborIndex("pq", code_size=16).fit(X)
    assert index.code_bytes_per_vector == 16
    assert index.memory_bytes == 2000 * 16 + 16 * 256 * 4 * 4  # codes + codebooks
    decoded = index.reconstruct()
    assert decoded.shape == X.shape
    rel = np.linalg.norm(decoded - X) / np.linalg.norm(X)
    assert rel < 0.5
    # ADC: distances are exact distances to the decoded vectors
    d, i = index.search(X[:5], 3)
    np.testing.assert_allclose(d, ((X[:5, None] - decoded[i]) ** 2).sum(-1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["brute", "exact", "hnsw", "ivf", "pq", "ivfpq"])
def test_pickle_round_trip_gives_identical_results(method):
    X = embeddings(3000, 32)
    index = NearestNeighborIndex(method, code_size=8).fit(X)
    clone = pickle.loads(pickle.dumps(index))
    for a, b in zip(index.search(X[:50], 5), clone.search(X[:50], 5)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(index.reconstruct(), clone.reconstruct())


def test_add_appends_and_keeps_codebooks():
    X = embeddings(1000, 32)
    index = NearestNeighborIndex("pq", code_size=8).fit(X[:800])
    before = index.reconstruct()
    index.add(X[800:])
    assert index.n_vectors_ == 1000
    np.testing.assert_array_equal(index.reconstruct()[:800], before)
    brute = NearestNeighborIndex("brute").fit(X[:10]).add(X[10:20])
    assert brute.search(X[15:16], 1)[1][0, 0] == 15


@pytest.mark.parametrize("method", ["pq", "opq"])
def test_pq_codebooks_decode_in_torch_and_tuned_centroids_are_searched(method):
    X = embeddings(3000, 32)
    index = NearestNeighborIndex(method, code_size=8).fit(X)
    centroids, codes, rotation = index.pq_codebooks()
    assert centroids.shape == (8, 256, 4) and codes.shape == (3000, 8) and codes.max() < 256
    assert (rotation is None) == (method == "pq")

    def decode(c):
        return decode_pq(torch.from_numpy(c), torch.from_numpy(codes),
                         None if rotation is None else torch.from_numpy(rotation)).numpy()

    np.testing.assert_allclose(decode(centroids), index.reconstruct(), atol=1e-4)
    moved = centroids * 1.5 + 0.2
    index.set_pq_centroids(moved)
    assert np.array_equal(index.pq_codebooks()[1], codes)  # codes kept
    np.testing.assert_allclose(index.reconstruct(), decode(moved), atol=1e-4)
    Q = X[:20] + 0.1
    d, i = index.search(Q, 5)  # searched with the new centroids: brute force over the new decoding
    bd, bi = NearestNeighborIndex("brute").fit(decode(moved)).search(Q, 5)
    np.testing.assert_allclose(d, bd, rtol=1e-3, atol=1e-3)
    clone = pickle.loads(pickle.dumps(index))
    np.testing.assert_array_equal(clone.reconstruct(), index.reconstruct())
    with pytest.raises(ValueError, match=r"centroids must have shape \(8, 256, 4\)"):
        index.set_pq_centroids(moved[:4])
    with pytest.raises(ValueError, match="'pq' or 'opq'; this index is 'exact'"):
        NearestNeighborIndex("exact").fit(X).pq_codebooks()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="Unknown index method 'annoy'"):
        NearestNeighborIndex("annoy")
    with pytest.raises(ValueError, match="code_size=7 must divide the dimension 32"):
        NearestNeighborIndex("pq", code_size=7).fit(embeddings(300, 32))
    with pytest.raises(ValueError, match="at least as many vectors as dimensions"):
        NearestNeighborIndex("opq", code_size=8).fit(embeddings(300, 512))  # would crash inside faiss
    with pytest.raises(ValueError, match="at least 256 vectors"):
        NearestNeighborIndex("pq", code_size=8).fit(embeddings(100, 32))
    index = NearestNeighborIndex("exact").fit(embeddings(10, 8))
    with pytest.raises(ValueError, match="queries have 9 dimensions"):
        index.search(np.zeros((1, 9)), 1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 8), np.nan), 1)
    with pytest.raises(RuntimeError, match="not fitted"):
        NearestNeighborIndex().search(np.zeros((1, 8)), 1)


@pytest.mark.parametrize("method", ["pq", "opq", "ivfpq"])
def test_small_training_set_warns_once_and_opq_is_seeded(method, capfd):
    X = np.random.RandomState(0).randn(600, 32).astype(np.float32)
    with pytest.warns(UserWarning, match=r"256 centroids on 600 vectors \(faiss recommends at least 9984\)") as record:
        a = NearestNeighborIndex(method, code_size=8).fit(X)
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    assert "WARNING clustering" not in capfd.readouterr().err  # faiss's one line per k-means is silenced
    with pytest.warns(UserWarning):
        b = NearestNeighborIndex(method, code_size=8).fit(X)
    np.testing.assert_array_equal(a.reconstruct(), b.reconstruct())  # same random_state, same codes


def test_ivf_with_more_cells_than_the_data_supports_warns():
    X = np.random.RandomState(0).randn(600, 16).astype(np.float32)
    with pytest.warns(UserWarning, match=r"'ivf': k-means with 100 centroids on 600 vectors"):
        NearestNeighborIndex("ivf", n_lists=100).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NearestNeighborIndex("ivf").fit(X)  # the default cell count needs no warning


def test_save_and_load_round_trip_with_faiss_files(tmp_path):
    rng = np.random.RandomState(0)
    X = rng.randn(3000, 16).astype(np.float32)
    Q = rng.randn(20, 16).astype(np.float32)
    for method in ("exact", "hnsw", "ivfpq"):
        index = NearestNeighborIndex(method, code_size=4, n_probe=4).fit(X)
        path = index.save(tmp_path / f"{method}.faiss")
        for mmap in (False, True) if method == "ivfpq" else (False,):
            loaded = NearestNeighborIndex.load(path, mmap=mmap)
            assert (loaded.method, loaded.n_vectors_, loaded.dim_) == (method, 3000, 16)
            for a, b in zip(index.search(Q, 5), loaded.search(Q, 5)):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="brute"):
        NearestNeighborIndex("brute").fit(X).save(tmp_path / "b.faiss")
    with pytest.raises(FileNotFoundError, match="save"):
        NearestNeighborIndex.load(tmp_path / "missing.faiss")


def test_a_sharded_search_equals_an_unsharded_one():
    rng = np.random.RandomState(1)
    X = rng.randn(900, 8).astype(np.float32)
    Q = rng.randn(30, 8).astype(np.float32)
    whole = NearestNeighborIndex("exact").fit(X)
    sharded = ShardedIndex([NearestNeighborIndex("exact").fit(X[a:b]) for a, b in ((0, 250), (250, 600), (600, 900))])
    assert sharded.n_vectors_ == 900
    for k in (1, 10):
        d0, i0 = whole.search(Q, k)
        d1, i1 = sharded.search(Q, k)
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_allclose(d0, d1, rtol=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        ShardedIndex([whole, NearestNeighborIndex().fit(X[:, :4])])


def test_chunked_adds_give_the_codes_of_one_add():
    rng = np.random.RandomState(2)
    sample, rest = rng.randn(2000, 16).astype(np.float32), rng.randn(3000, 16).astype(np.float32)
    one = NearestNeighborIndex("ivfpq", code_size=4).fit(sample).add(rest)
    chunked = NearestNeighborIndex("ivfpq", code_size=4).fit(sample)
    for start in range(0, 3000, 700):
        chunked.add(rest[start : start + 700])
    np.testing.assert_array_equal(one.reconstruct(), chunked.reconstruct())


@pytest.mark.parametrize("method", ["brute", "exact", "ivf", "pq", "ivfpq"])
def test_training_on_a_sample_then_adding_chunks_equals_fit(method, tmp_path):
    from skfg.store import FeatureStore

    X = embeddings(3000, 16, seed=3)
    Q = embeddings(20, 16, seed=4)
    params = {"code_size": 4} if method in ("pq", "ivfpq") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small k-means sets
        whole = NearestNeighborIndex(method, **params).fit(X)
        trained = NearestNeighborIndex(method, **params).train(X)
    assert trained.n_vectors_ == 0
    store = FeatureStore.create(tmp_path / "store", 3000, 16, chunk_size=700, fingerprint="x")
    for i in range(store.n_chunks):
        store.write_chunk(i, X[store.chunk_slice(i)])
    chunked = trained.add_chunks(store)  # chunk by chunk from disk: the codes of one add
    assert chunked.n_vectors_ == 3000
    np.testing.assert_array_equal(chunked.reconstruct(), whole.reconstruct())
    for a, b in zip(chunked.search(Q, 10), whole.search(Q, 10)):
        np.testing.assert_array_equal(a, b)


def test_a_sample_trained_ivfpq_indexes_the_collection_it_never_held():
    X = embeddings(6000, 32, seed=5)
    index = NearestNeighborIndex("ivfpq", code_size=8, n_lists=16, n_probe=16).train(X[::6])
    index.add_chunks(np.array_split(X, 5))
    assert index.n_vectors_ == 6000 and recall_at_10(index, X, embeddings(50, 32, seed=6)) > 0.5


def test_adding_chunks_needs_a_complete_store(tmp_path):
    from skfg.store import FeatureStore

    store = FeatureStore.create(tmp_path / "s", 10, 4, chunk_size=5, fingerprint="x")
    store.write_chunk(0, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="lacks 1 of 2 chunks"):
        NearestNeighborIndex().train(np.zeros((3, 4))).add_chunks(store)


def test_a_refined_index_recovers_the_exact_neighbours_from_vectors_on_disk(tmp_path):
    from skfg.index import RefinedIndex
    from skfg.store import FeatureStore

    X = embeddings(4000, 32, seed=8)
    Q = embeddings(300, 32, seed=9)
    store = FeatureStore.create(tmp_path / "s", 4000, 32, chunk_size=1000, fingerprint="x")
    for i in range(store.n_chunks):
        store.write_chunk(i, X[store.chunk_slice(i)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pq = NearestNeighborIndex("ivfpq", code_size=4, n_lists=16, n_probe=16).fit(X)
    exact_d, exact_i = NearestNeighborIndex("exact").fit(X).search(Q, 10)
    refined = RefinedIndex(pq, store, k_factor=10)
    refined._block_floats = 10 * 10 * 10 * 32  # blocks of 10 queries
    d, i = refined.search(Q, 10)
    overlap = lambda found: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_i)])
    assert overlap(i) > overlap(pq.search(Q, 10)[1]) and overlap(i) > 0.95
    hit = i == exact_i
    np.testing.assert_allclose(d[hit], exact_d[hit], rtol=1e-4)  # exact distances, not the codes'
    np.testing.assert_array_equal(RefinedIndex(pq, X, k_factor=10).search(Q, 10)[1], i)  # an array alike
    with pytest.raises(ValueError, match="do not match the index"):
        RefinedIndex(pq, X[:10])


def test_rows_read_from_many_threads_are_the_rows_read_one_by_one(tmp_path):
    from skfg.index import RefinedIndex
    from skfg.store import FeatureStore

    X = embeddings(3000, 16, seed=3)
    store = FeatureStore.create(tmp_path / "s", 3000, 16, chunk_size=700, fingerprint="x")
    for c in range(store.n_chunks):
        store.write_chunk(c, X[store.chunk_slice(c)])
    rows = np.random.RandomState(0).permutation(3000)[:257]  # unsorted, every chunk
    for n_threads in (1, 2, 8, 300):
        np.testing.assert_array_equal(store.read_rows(rows, n_threads=n_threads), X[rows])
    assert store.read_rows([], n_threads=8).shape == (0, 16)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_threads"):
            store.read_rows(rows, n_threads=bad)
    with pytest.raises(ValueError, match="read_threads"):
        RefinedIndex(NearestNeighborIndex("exact").fit(X), store, read_threads=0)


def test_a_finer_index_in_memory_re_ranks_the_candidates_and_chains_with_the_disk(tmp_path):
    """The two-stage search of index_scale.py: 4-byte IVF-PQ candidates re-ranked by
    16-byte PQ codes in memory (faiss IndexRefine), then the best few by the exact rows."""
    import faiss

    from skfg.index import RefinedIndex
    from skfg.store import FeatureStore

    X = embeddings(4000, 32, seed=8)
    Q = embeddings(300, 32, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coarse = NearestNeighborIndex("ivfpq", code_size=4, n_lists=16, n_probe=16).fit(X)
        fine = NearestNeighborIndex("pq", code_size=16).fit(X)
    exact_i = NearestNeighborIndex("exact").fit(X).search(Q, 10)[1]
    overlap = lambda found: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_i)])
    two = RefinedIndex(coarse, fine, k_factor=8)
    d, i = two.search(Q, 10)
    assert overlap(i) > overlap(coarse.search(Q, 10)[1]) + 0.1
    ref = faiss.IndexRefine(coarse.faiss_index, fine.faiss_index)
    ref.k_factor = 8.0
    np.testing.assert_array_equal(i, ref.search(Q, 10)[1])  # faiss's own two-stage search
    assert np.all(np.diff(d, axis=1) >= 0)
    assert two.memory_bytes == coarse.memory_bytes + fine.memory_bytes

    store = FeatureStore.create(tmp_path / "s", 4000, 32, chunk_size=1000, fingerprint="x")
    for c in range(store.n_chunks):
        store.write_chunk(c, X[store.chunk_slice(c)])
    chained = RefinedIndex(two, store, k_factor=3)  # 30 candidates read from disk a query
    assert overlap(chained.search(Q, 10)[1]) > max(overlap(i), 0.9)

    with pytest.raises(ValueError, match="faiss-backed"):
        RefinedIndex(NearestNeighborIndex("brute").fit(X), fine)
    with pytest.raises(ValueError, match="do not match the index"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        RefinedIndex(coarse, NearestNeighborIndex("pq", code_size=16).fit(X[:2000]))
    coarse.add(X[:5])
    with pytest.raises(ValueError, match="add the same rows to both"):
        two.search(Q, 10)


def test_faiss_under_an_address_space_limit_fails_with_the_reason(tmp_path):
    # a limit low enough that libfaiss cannot be mapped after torch: the message says why
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import resource, numpy as np, torch
        import skfg.index
        resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[0], resource.RLIM_INFINITY))
        import psutil, os
        used = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (used + 50 * 2**20, resource.RLIM_INFINITY))
        try:
            skfg.index.NearestNeighborIndex("exact").fit(np.ones((10, 4), np.float32))
            print("LOADED")
        except ImportError as exc:
            print("ERROR", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "ERROR faiss is installed but cannot be loaded" in out.stdout, out.stdout + out.stderr
    assert "GiB of address space (ulimit -v)" in out.stdout and "method='brute'" in out.stdout


def test_set_n_probe_trades_recall_on_a_fitted_index():
    X = np.random.RandomState(0).randn(4000, 16).astype(np.float32)
    exact = NearestNeighborIndex("exact").fit(X).search(X[:50], 10)[1]
    index = NearestNeighborIndex("ivf", n_lists=64, random_state=0).fit(X)

    def recall():
        found = index.search(X[:50], 10)[1]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])

    low = recall() if index.set_n_probe(1) is index else None
    high = index.set_n_probe(64) and recall()
    assert low < high == 1.0 and index.n_probe == 64
    with pytest.raises(ValueError, match="n_probe must be a positive int"):
        index.set_n_probe(0)


def test_n_probe_is_a_property_that_survives_pickle_and_save(tmp_path):
    X = np.random.RandomState(0).randn(4000, 16).astype(np.float32)
    index = NearestNeighborIndex("ivf", n_lists=64, random_state=0).fit(X)
    assert index.faiss_index.nprobe == 8  # None: max(8, n_lists // 8)
    index.n_probe = 32
    assert index.faiss_index.nprobe == 32 and index.n_probe == 32
    assert pickle.loads(pickle.dumps(index)).faiss_index.nprobe == 32
    index.save(tmp_path / "ivf.faiss")
    loaded = NearestNeighborIndex.load(tmp_path / "ivf.faiss")
    assert loaded.n_probe == 32 and loaded.faiss_index.nprobe == 32
    with pytest.raises(ValueError, match="n_probe must be a positive int"):
        index.n_probe = True
    # an index pickled when n_probe was a plain attribute
    state = index.__getstate__()
    state["n_probe"] = state.pop("_n_probe")
    old = NearestNeighborIndex.__new__(NearestNeighborIndex)
    old.__setstate__(state)
    assert old.n_probe == 32 and old.faiss_index.nprobe == 32


@pytest.mark.parametrize("method", ["brute", "exact", "hnsw", "ivf", "pq", "opq", "ivfpq"])
def test_every_row_of_the_table_builds_searches_and_counts_its_memory(method):
    X = np.random.RandomState(1).randn(600, 16).astype(np.float32)
    index = NearestNeighborIndex(method, code_size=4, n_lists=8, random_state=0).fit(X)
    d, i = index.search(X[:5], 3)
    assert i.shape == (5, 3) and (i[:, 0] == np.arange(5)).mean() >= (0.6 if method in ("pq", "opq", "ivfpq") else 1)
    per_vector = index.code_bytes_per_vector
    assert per_vector == (4 if method in ("pq", "opq", "ivfpq") else 64)
    assert index.memory_bytes >= len(X) * per_vector
