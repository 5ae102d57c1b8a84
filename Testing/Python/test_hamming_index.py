"""The in-memory indices: faiss exact and approximate Hamming search against the numpy reference, dense search."""

import numpy as np
import pytest

from DeepSimilarityLib.retrieval.encoder import pack_bits, unpack_bits
from DeepSimilarityLib.retrieval.hamming_index import (DenseIndex, HammingIndex, hamming_distances, make_index,
                                                       popcount_scan, top_k)

faiss = pytest.importorskip("faiss")


def random_codes(n, n_bits, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, n_bits // 8), dtype=np.uint8)


def test_hamming_distances_hand_computed():
    codes = np.array([[0x00], [0xFF], [0x0F], [0x01]], np.uint8)
    assert hamming_distances(codes, np.array([0x01], np.uint8)).tolist() == [1, 7, 3, 0]
    # 64-bit words take the uint64 path: 0xFF.. vs 0 is 64, one differing byte 0x81 is 2
    wide = np.zeros((2, 8), np.uint8)
    wide[0] = 0xFF
    wide[1, 3] = 0x81
    assert hamming_distances(wide, np.zeros(8, np.uint8)).tolist() == [64, 2]


def test_top_k_sorts_by_distance_then_id_and_keeps_tied_codes():
    d = np.array([3, 1, 2, 1, 1, 5])
    ids = np.array([10, 40, 20, 30, 5, 0])
    got_ids, got_d = top_k(d, ids, 2)
    assert got_ids.tolist() == [5, 30] and got_d.tolist() == [1, 1]  # the tie at the cut goes to the smaller ids
    assert top_k(d, ids, 10)[0].tolist() == [5, 30, 40, 20, 10, 0]


@pytest.mark.parametrize("n_bits", [16, 64, 72])
def test_exact_index_agrees_with_numpy_scan(n_bits):
    codes, queries = random_codes(3000, n_bits, 0), random_codes(20, n_bits, 1)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    index = HammingIndex(n_bits)
    index.add(ids[:1000], codes[:1000])
    index.add(ids[1000:], codes[1000:])
    got_ids, got_d = index.search(queries, 50)
    ref_ids, ref_d = popcount_scan(codes, ids, queries, 50)
    assert not index.approximate
    np.testing.assert_array_equal(got_d, ref_d)
    # ids agree wherever the distance is below the k-th (at the k-th, any tied code is a correct answer)
    below = got_d < got_d[:, -1:]
    np.testing.assert_array_equal(got_ids[below], ref_ids[below])
    # brute force over unpacked bits, independently of both
    bits = unpack_bits(codes, n_bits).astype(int)
    brute = np.abs(bits[None] - unpack_bits(queries, n_bits)[:, None].astype(int)).sum(-1)
    np.testing.assert_array_equal(np.sort(brute, axis=1)[:, :50], ref_d)


@pytest.mark.parametrize("n_bits", [16, 64, 72])
def test_range_bounded_exact_search_equals_numpy_scan_ids_and_ties_included(n_bits):
    rng = np.random.default_rng(6)
    # random codes plus a clustered block with exact duplicates: many ties at every distance
    centres = rng.integers(0, 2, (5, n_bits))
    clustered = pack_bits(centres[rng.integers(0, 5, 2000)] ^ (rng.random((2000, n_bits)) < 0.04))
    codes = np.concatenate([random_codes(3000, n_bits, 7), clustered, clustered[:500]])
    queries = np.concatenate([random_codes(10, n_bits, 8), clustered[:5], pack_bits(centres)])
    ids = rng.permutation(len(codes)).astype(np.int64) * 3
    index = HammingIndex(n_bits, range_above=0, sample_size=1000)
    index.add(ids, codes)
    for k in (1, 50, len(codes) // 32):
        got = index.search(queries, k)
        ref = popcount_scan(codes, ids, queries, k)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])  # ties at the k-th go to the smaller ids, as numpy's
    assert index.radii(queries, 50).max() < n_bits  # a real bound, not a scan of everything


def test_range_search_falls_back_when_the_estimated_ball_holds_too_few_codes(monkeypatch):
    codes, queries = random_codes(4000, 64, 9), random_codes(6, 64, 10)
    ids = np.random.default_rng(9).permutation(4000).astype(np.int64)
    index = HammingIndex(64, range_above=0)
    index.add(ids, codes)
    radii = HammingIndex.radii
    # a bad estimate for half the queries: a ball of radius 0 holds (almost surely) none of 4000 random codes
    monkeypatch.setattr(HammingIndex, "radii", lambda self, q, k: radii(self, q, k) * (np.arange(len(q)) % 2))
    got = index.search(queries, 30)
    ref = popcount_scan(codes, ids, queries, 30)
    np.testing.assert_array_equal(got[0], ref[0])  # the same tie-break as the range path
    np.testing.assert_array_equal(got[1], ref[1])


def test_range_search_sample_follows_adds_and_removes():
    codes = random_codes(3000, 64, 11)
    index = HammingIndex(64, range_above=0, sample_size=500)
    index.add(np.arange(2000), codes[:2000])
    index.search(codes[:1], 10)
    first = index._sample[1]
    assert len(first) == 500 and any((codes[:2000] == first[0]).all(axis=1))
    index.add(np.arange(2000, 3000), codes[2000:])
    assert index.search(codes[2500:2501], 1)[0][0, 0] == 2500 and index._sample[1] is not first
    # a remove and an add of as many codes keep the size, yet the sample is redrawn from the new codes
    index.remove(np.arange(3000))
    fresh = random_codes(3000, 64, 12)
    index.add(np.arange(3000), fresh)
    index.search(fresh[:1], 5)
    assert all(any((fresh == c).all(axis=1)) for c in index._sample[1])


def test_adding_after_a_search_extends_the_index_and_remove_drops_codes():
    codes = random_codes(500, 64, 2)
    index = HammingIndex(64)
    index.add(np.arange(400), codes[:400])
    assert index.search(codes[450:451], 1)[1][0, 0] > 0
    index.add(np.arange(400, 500), codes[400:])
    ids, d = index.search(codes[450:452], 1)
    assert ids[:, 0].tolist() == [450, 451] and d.max() == 0
    assert index.remove([450, 999]) == 1 and len(index) == 499
    assert index.search(codes[450:451], 1)[0][0, 0] != 450
    np.testing.assert_array_equal(index.codes_of([451, 3]), codes[[451, 3]])


def test_approximate_index_above_threshold_reranks_exactly():
    rng = np.random.default_rng(3)
    # clustered codes like a trained hash's: 40 centres, each code a few bit flips away from one
    centres = rng.integers(0, 2, (40, 64))
    bits = centres[rng.integers(0, 40, 4000)] ^ (rng.random((4000, 64)) < 0.05)
    codes, queries = pack_bits(bits), pack_bits(centres[:10] ^ (rng.random((10, 64)) < 0.05))
    ids = np.arange(4000)
    index = HammingIndex(64, approximate_above=1000)
    index.add(ids, codes)
    got_ids, got_d = index.search(queries, 20)
    assert index.approximate and isinstance(index.build(), faiss.IndexBinaryIVF)
    ref_ids, ref_d = popcount_scan(codes, ids, queries, 20)
    assert np.mean(got_d == ref_d) > 0.9
    # re-ranking: every returned distance is the true one, rows sorted by (distance, id)
    for q in range(10):
        np.testing.assert_array_equal(got_d[q], hamming_distances(codes[got_ids[q]], queries[q]))
        assert all((a, b) <= (c, e) for a, b, c, e in zip(got_d[q], got_ids[q], got_d[q][1:], got_ids[q][1:]))
    # visiting every list makes it exact
    full = HammingIndex(64, approximate_above=1000, nprobe=10_000)
    full.add(ids, codes)
    np.testing.assert_array_equal(full.search(queries, 20)[1], ref_d)


def test_index_switches_to_ivf_when_it_grows_past_the_threshold():
    codes = random_codes(1500, 64, 4)
    index = HammingIndex(64, approximate_above=1000)
    index.add(np.arange(800), codes[:800])
    index.search(codes[:1], 5)
    assert isinstance(index.build(), faiss.IndexBinaryFlat)
    index.add(np.arange(800, 1500), codes[800:])
    index.search(codes[:1], 5)
    assert isinstance(index.build(), faiss.IndexBinaryIVF)


def test_dense_index_agrees_with_numpy():
    rng = np.random.default_rng(5)
    x, q = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32)
    index = make_index("dense", 16)
    assert isinstance(index, DenseIndex)
    index.add(np.arange(300) + 100, x)
    ids, d = index.search(q, 5)
    ref = np.linalg.norm(x[None] - q[:, None], axis=-1)
    np.testing.assert_array_equal(ids, np.argsort(ref, axis=1)[:, :5] + 100)
    np.testing.assert_allclose(d, np.sort(ref, axis=1)[:, :5], rtol=1e-4)


def test_bad_shapes_and_empty_index():
    index = HammingIndex(64)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        index.add([1], np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError, match="2 ids for 1 codes"):
        index.add([1, 2], np.zeros((1, 8), np.uint8))
    ids, d = index.search(np.zeros((2, 8), np.uint8), 5)
    assert ids.shape == (2, 0)
    with pytest.raises(ValueError):
        HammingIndex(12)
