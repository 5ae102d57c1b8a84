"""In-memory nearest-neighbour indices over the codes of a case database.

:class:`HammingIndex` holds packed binary codes ``(N, n_bits // 8)`` uint8 and
answers top-k Hamming queries with faiss: an exact scan (``IndexBinaryFlat``)
up to ``approximate_above`` codes, an inverted-file index (``IndexBinaryIVF``)
above. Exact top-k over many codes is a range search: the radius that should
hold about ``4k`` codes is read off the distances to a random sample of the
codes, faiss returns every code within it (a plain compare per code: 1.7x
faster than its counting top-k over 1M codes), and those few hundred are
sorted; a ball that holds fewer than k codes is redone at the exact k-th
distance. HNSW was measured too slow to build on one core (about 60 s per million
64-bit codes against 5 s for the IVF). The approximate index over-fetches
``rerank * k`` candidates and re-ranks them by their exact distance with ties
broken by id, so results are deterministic whichever index answered.

:class:`DenseIndex` does the same for float embeddings by Euclidean distance
(``IndexFlatL2``). :func:`popcount_scan` is the plain numpy reference that the
tests and the benchmark compare faiss against.

Both indices keep their own copy of ``ids`` and codes, so removal and the
lazy (re)build of the faiss structure never need the database.
"""

from __future__ import annotations

import numpy as np

try:
    import faiss
except ImportError:  # pragma: no cover - faiss-cpu is a dependency; a clear message if it is missing
    faiss = None


def _require_faiss():
    if faiss is None:
        raise ImportError("faiss is not installed: pip install faiss-cpu (see pyproject.toml)")
    return faiss


def hamming_distances(codes: np.ndarray, query: np.ndarray, dtype=np.int32) -> np.ndarray:
    """Hamming distance of one packed query ``(B,)`` to every packed code ``(N, B)`` -> ``(N,)`` of ``dtype``
    (which must hold ``8 * B``)."""
    codes, query = np.ascontiguousarray(codes, np.uint8), np.ascontiguousarray(query, np.uint8)
    if codes.shape[1] % 8 == 0:  # whole 64-bit words: one xor and popcount per word
        words = codes.view(np.uint64)
        return np.bitwise_count(words ^ query.view(np.uint64)).sum(axis=1, dtype=dtype)
    return np.bitwise_count(codes ^ query).sum(axis=1, dtype=dtype)


def top_k(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest distances, sorted by (distance, id): ``(ids (k,), distances (k,))``."""
    k = min(k, len(distances))
    if k < len(distances):
        # argpartition may cut a tie at the k-th distance anywhere; keep every tied code, then sort by id.
        kth = np.partition(distances, k - 1)[k - 1]
        keep = np.flatnonzero(distances <= kth)
    else:
        keep = np.arange(len(distances))
    order = np.lexsort((ids[keep], distances[keep]))[:k]
    return ids[keep[order]], distances[keep[order]]


def popcount_scan(codes: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    """Exact top-k by a numpy popcount scan (the reference). Returns ``(ids (Q, k), distances (Q, k))``."""
    k = min(k, len(codes))
    out_ids, out_d = np.empty((len(queries), k), np.int64), np.empty((len(queries), k), np.int32)
    for q, query in enumerate(queries):
        out_ids[q], out_d[q] = top_k(hamming_distances(codes, query), ids, k)
    return out_ids, out_d


class _Index:
    """Ids and codes with lazy faiss construction; subclasses say how to build and search."""

    dtype = np.uint8

    def __init__(self, width: int):
        self.width = int(width)  # bytes per code (binary) or dimensions (dense)
        self._ids = np.empty(0, np.int64)
        self._codes = np.empty((0, self.width), self.dtype)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._faiss = None
        self._generation = 0  # bumped whenever the stored codes change

    def __len__(self) -> int:
        return len(self._ids) + sum(len(i) for i, _ in self._pending)

    def _check(self, codes) -> np.ndarray:
        codes = np.ascontiguousarray(codes, dtype=self.dtype)
        if codes.ndim != 2 or codes.shape[1] != self.width:
            raise ValueError(f"codes must be (N, {self.width}) {np.dtype(self.dtype).name}, got {codes.shape}")
        return codes

    def add(self, ids, codes) -> None:
        """Append codes ``(N, width)`` under int64 ``ids`` (N,); the faiss index is extended when built."""
        ids, codes = np.asarray(ids, np.int64).ravel(), self._check(codes)
        if len(ids) != len(codes):
            raise ValueError(f"{len(ids)} ids for {len(codes)} codes")
        self._pending.append((ids, codes))  # concatenated once, at the next search: adds stay O(batch)

    def _flush(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate([self._ids] + [i for i, _ in self._pending])
        codes = np.concatenate([self._codes] + [c for _, c in self._pending])
        if self._faiss is not None and self._extendable(len(ids)):
            for _, c in self._pending:
                self._faiss.add(c)
        else:
            self._faiss = None
        self._ids, self._codes, self._pending = ids, codes, []
        self._generation += 1

    def remove(self, ids) -> int:
        """Drop the given ids; returns how many were present. The faiss index is rebuilt at the next search."""
        self._flush()
        keep = ~np.isin(self._ids, np.asarray(ids, np.int64))
        removed = int(np.count_nonzero(~keep))
        if removed:
            self._ids, self._codes, self._faiss = self._ids[keep], self._codes[keep], None
            self._generation += 1
        return removed

    def codes_of(self, ids) -> np.ndarray:
        """The stored codes of ``ids`` (all must be present), in that order."""
        self._flush()
        order = np.argsort(self._ids)
        pos = order[np.searchsorted(self._ids, np.asarray(ids, np.int64), sorter=order)]
        return self._codes[pos]

    def build(self):
        """Build the faiss structure now (it is otherwise built at the first search)."""
        self._flush()
        if self._faiss is None:
            self._faiss = self._build()
        return self._faiss

    def search(self, queries, k: int):
        """Top-k of each query ``(Q, width)``: ``(ids (Q, k'), distances (Q, k'))``, k' = min(k, len)."""
        queries = self._check(queries)
        index = self.build()
        k = min(int(k), len(self._ids))
        if k <= 0:
            return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), self._dist_dtype)
        return self._search(index, queries, k)

    def _extendable(self, n: int) -> bool:
        return True

    def _build(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _search(self, index, queries, k):  # pragma: no cover - abstract
        raise NotImplementedError


class HammingIndex(_Index):
    """Top-k Hamming search over packed codes of ``n_bits`` bits.

    ``approximate_above``: from this many codes on, an ``IndexBinaryIVF`` with
    about sqrt(N) lists and ``nprobe`` of them visited (default: an eighth);
    ``rerank``: candidates fetched per result for the exact re-ranking;
    ``range_above``: from this many codes on, exact queries go through a
    range search bounded by a radius estimated on ``sample_size`` codes
    (below it the fixed cost of the estimate outweighs the saving: the two
    break even near 250,000 64-bit codes, measured for k = 100).
    """

    _dist_dtype = np.int32
    BALL = 4  # codes in the estimated ball per result wanted: fewer makes a too-small ball (and a redo) likelier

    def __init__(self, n_bits: int, approximate_above: int = 2_000_000, nprobe: int | None = None, rerank: int = 4,
                 range_above: int = 300_000, sample_size: int = 16_384):
        if n_bits <= 0 or n_bits % 8:
            raise ValueError(f"n_bits must be a positive multiple of 8, got {n_bits}")
        super().__init__(n_bits // 8)
        self.n_bits, self.approximate_above, self.nprobe, self.rerank = n_bits, approximate_above, nprobe, rerank
        self.range_above, self.sample_size = range_above, sample_size
        self._sample = None

    @property
    def approximate(self) -> bool:
        return len(self) >= self.approximate_above

    def _extendable(self, n: int) -> bool:
        # a flat index that has grown past the threshold is rebuilt as IVF (and an IVF that shrank, as flat)
        return isinstance(self._faiss, faiss.IndexBinaryIVF) == (n >= self.approximate_above)

    def _build(self):
        _require_faiss()
        n = len(self._ids)
        if n < self.approximate_above:
            index = faiss.IndexBinaryFlat(self.n_bits)
            # counting top-k instead of a heap: 1.4x faster for k = 100 over 1M 64-bit codes (measured)
            index.use_heap = False
        else:
            nlist = int(np.clip(np.sqrt(n), 64, 8192))
            quantizer = faiss.IndexBinaryFlat(self.n_bits)
            index = faiss.IndexBinaryIVF(quantizer, self.n_bits, nlist)
            index.quantizer_ref = quantizer  # the Python wrapper must outlive the IVF that points to it
            # k-means on a fixed-seed sample of 64 codes per list: enough for stable lists, fast to train
            sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
            index.train(self._codes[np.sort(sample)])
            index.nprobe = self.nprobe or max(1, nlist // 8)
        index.add(self._codes)
        return index

    def _search(self, index, queries, k):
        if not isinstance(index, faiss.IndexBinaryIVF):
            if len(self._ids) >= self.range_above and 32 * k <= len(self._ids):
                return self._range_top_k(index, queries, k)
            d, pos = index.search(queries, k)
            return self._sorted(pos, d, k)
        _, pos = index.search(queries, min(len(self._ids), self.rerank * k))
        out_ids, out_d = np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), -1, np.int32)
        for q, found in enumerate(pos):
            found = found[found >= 0]  # an IVF may return fewer than asked (-1 padding)
            ids, d = top_k(hamming_distances(self._codes[found], queries[q]), self._ids[found], k)
            out_ids[q, :len(ids)], out_d[q, :len(d)] = ids, d
        return out_ids, out_d

    def radii(self, queries, k: int) -> np.ndarray:
        """Per query, the radius whose ball should hold about ``BALL * k`` codes ``(Q,)``: the matching
        order statistic of the distances to a random sample of the codes (redrawn when the codes
        changed). Only an estimate: the exact search checks that each ball holds at least k codes."""
        n = len(self._ids)
        if self._sample is None or self._sample[0] != self._generation:
            rows = np.random.default_rng(n).integers(0, n, min(n, self.sample_size))
            self._sample = (self._generation, self._codes[rows], self.n_bits // 4)
        _, sample, radius = self._sample
        hits = min(max(-(-self.BALL * k * len(sample) // n), 1), len(sample))  # sample codes in the ball
        out = np.empty(len(queries), np.int64)
        for q, query in enumerate(queries):
            d = hamming_distances(sample, query, np.uint8 if self.n_bits < 256 else np.int32)  # fast compares
            # walk from the last query's radius: neighbouring radii need two or three counts, cheaper than a
            # histogram or a partition of the sample
            while np.count_nonzero(d <= radius) < hits:
                radius += 1
            while radius > 0 and np.count_nonzero(d < radius) >= hits:
                radius -= 1
            out[q] = radius
        self._sample = (self._generation, sample, radius)
        return out

    def _range_top_k(self, index, queries, k, radii=None):
        # every code within the radius (faiss keeps d < radius), then exact (distance, id) order. A ball
        # holding fewer than k codes (a poor estimate) is redone at the k-th distance from the counting
        # top-k, so that ties at the k-th distance go to the smaller ids on every path.
        radii = self.radii(queries, k) if radii is None else radii
        out_ids, out_d = np.empty((len(queries), k), np.int64), np.empty((len(queries), k), np.int32)
        short = []
        for radius in np.unique(radii) if len(radii) > 1 else radii:
            rows = np.flatnonzero(radii == radius) if len(radii) > 1 else [0]
            lims, d, pos = index.range_search(queries[rows], int(radius) + 1)
            for row, start, stop in zip(rows, lims[:-1], lims[1:]):
                if stop - start < k:
                    short.append(row)
                    continue
                out_ids[row], out_d[row] = top_k(d[start:stop], self._ids[pos[start:stop]], k)
        if short:
            kth = index.search(queries[short], k)[0][:, -1]
            out_ids[short], out_d[short] = self._range_top_k(index, queries[short], k, kth)
        return out_ids, out_d

    def _sorted(self, pos, d, k):
        # faiss orders ties arbitrarily: sort each row by (distance, id) for reproducible results
        ids = self._ids[pos]
        order = np.lexsort((ids, d), axis=-1)
        rows = np.arange(len(ids))[:, None]
        return ids[rows, order], d[rows, order].astype(np.int32)


class DenseIndex(_Index):
    """Top-k Euclidean search over float32 embeddings ``(N, dim)`` (exact, ``IndexFlatL2``)."""

    dtype = np.float32
    _dist_dtype = np.float32

    def _build(self):
        _require_faiss()
        index = faiss.IndexFlatL2(self.width)
        index.add(self._codes)
        return index

    def _search(self, index, queries, k):
        d2, pos = index.search(queries, k)
        return self._ids[pos], np.sqrt(np.maximum(d2, 0)).astype(np.float32)


def make_index(kind: str, size: int, **options) -> _Index:
    """The index for a database of ``kind`` ("binary": ``size`` bits; "dense": ``size`` dimensions)."""
    if kind == "binary":
        return HammingIndex(size, **options)
    if kind == "dense":
        return DenseIndex(size)
    raise ValueError(f"kind must be 'binary' or 'dense', got {kind!r}")
