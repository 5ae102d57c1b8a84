"""Retrieval quality: MAP/MRR (Chung & Weng 2017) and NDCG/ACG/weighted mAP (Chen et al. 2018).

Every metric works on a *ranked relevance matrix* ``(Q, N)``: row q holds the
relevance of the N database items in the order they were retrieved for query
q. :func:`ranked_relevance` builds it from distances and labels.

* Single-label (Chung & Weng): relevance is 1 when the item has the query's
  class. AP of a query is the mean, over its relevant items, of the precision
  at their rank; MRR is the mean of 1 / (rank of the first relevant item).
* Multi-label (Chen et al., after Zhao et al. 2015): relevance r is the number
  of labels an item shares with the query.
  ``ACG@p = (1/p) sum_{i<=p} r_i``;
  ``NDCG@p = DCG@p / ideal DCG@p`` with ``DCG@p = sum_{i<=p} (2^r_i - 1) / log(1 + i)``
  (the log's base cancels in the ratio); weighted mAP
  ``= mean_q (1 / N_rel) sum_{n<=N} [r_n > 0] ACG@n`` with ``N_rel`` the
  number of items with ``r > 0`` in the N ranked.

A query with no relevant item in the database has no defined AP, MRR, NDCG
or weighted mAP (nor a meaningful ACG): it is left out of every mean here,
and the number of queries used is returned. With 'No Finding' as no label,
this leaves out the normal chest X-rays as queries.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Packed codes ``(Q, B)``, ``(N, B)`` uint8 -> ``(Q, N)`` int Hamming distances."""
    q, d = np.asarray(query_codes, np.uint8), np.asarray(db_codes, np.uint8)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise InputError("codes", f"need packed codes (Q, B) and (N, B) with equal B, got {q.shape}, {d.shape}")
    x = np.bitwise_xor(q[:, None, :], d[None, :, :])
    return np.unpackbits(x, axis=2).sum(axis=2, dtype=np.int64)


def euclidean_distances(query: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Embeddings ``(Q, D)``, ``(N, D)`` -> ``(Q, N)`` float64 Euclidean distances."""
    q, d = np.asarray(query, np.float64), np.asarray(db, np.float64)
    sq = (q * q).sum(1)[:, None] + (d * d).sum(1)[None, :] - 2.0 * q @ d.T
    return np.sqrt(np.clip(sq, 0.0, None))


def shared_labels(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Multi-hot ``(Q, L)``, ``(N, L)`` -> ``(Q, N)`` number of shared labels."""
    return np.asarray(query_labels, np.int64) @ np.asarray(db_labels, np.int64).T


def same_class(query_classes: np.ndarray, db_classes: np.ndarray) -> np.ndarray:
    """Class ids ``(Q,)``, ``(N,)`` -> ``(Q, N)`` 1 where equal."""
    return (np.asarray(query_classes)[:, None] == np.asarray(db_classes)[None, :]).astype(np.int64)


def ranked_relevance(distances: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Sort each query's relevance ``(Q, N)`` by increasing distance ``(Q, N)``.

    Ties (frequent with Hamming distances) keep database order (stable sort),
    so results are deterministic; no tie gets the benefit of the doubt.
    """
    distances, relevance = np.asarray(distances), np.asarray(relevance)
    if distances.shape != relevance.shape or distances.ndim != 2:
        raise InputError("distances", f"shape {distances.shape} does not match relevance {relevance.shape}")
    order = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(relevance, order, axis=1)


def _check(ranked) -> np.ndarray:
    r = np.asarray(ranked)
    if r.ndim != 2 or r.shape[1] == 0:
        raise InputError("ranked", f"need a (Q, N) relevance matrix with N >= 1, got shape {r.shape}")
    if (r < 0).any():
        raise InputError("ranked", "relevance must be >= 0")
    return r.astype(np.float64)


def _mean_over(values: np.ndarray, used: np.ndarray) -> float:
    return float(values[used].mean()) if used.any() else float("nan")


def average_precisions(ranked) -> np.ndarray:
    """``(Q,)`` AP per query (relevant = relevance > 0); NaN where none is relevant."""
    rel = _check(ranked) > 0
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, (precision * rel).sum(1) / n_rel, np.nan)


def reciprocal_ranks(ranked) -> np.ndarray:
    """``(Q,)`` 1 / rank of the first relevant item; NaN where none is relevant."""
    rel = _check(ranked) > 0
    first = rel.argmax(1)
    return np.where(rel.any(1), 1.0 / (first + 1), np.nan)


def map_mrr(ranked) -> dict:
    """``{"map", "mrr", "queries"}`` over the queries with at least one relevant item."""
    ap, rr = average_precisions(ranked), reciprocal_ranks(ranked)
    used = ~np.isnan(ap)
    return {"map": _mean_over(ap, used), "mrr": _mean_over(rr, used), "queries": int(used.sum())}


def _top(ranked, p: int) -> np.ndarray:
    r = _check(ranked)
    if int(p) < 1:
        raise InputError("p", f"must be >= 1, got {p}")
    return r[:, : int(p)]


def acg_at(ranked, p: int) -> np.ndarray:
    """``(Q,)`` ACG@p = mean relevance of the top p (p larger than N counts only the N)."""
    top = _top(ranked, p)
    return top.sum(1) / int(p)


def dcg_at(ranked, p: int) -> np.ndarray:
    top = _top(ranked, p)
    discount = np.log(1.0 + np.arange(1, top.shape[1] + 1))
    return ((2.0 ** top - 1.0) / discount).sum(1)


def ndcg_at(ranked, p: int) -> np.ndarray:
    """``(Q,)`` NDCG@p; the ideal DCG sorts the query's whole relevance row. NaN where it is 0."""
    r = _check(ranked)
    ideal = dcg_at(-np.sort(-r, axis=1), p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg_at(r, p) / ideal, np.nan)


def weighted_aps(ranked, top: int | None = None) -> np.ndarray:
    """``(Q,)`` weighted AP over the first ``top`` items (all if None); NaN without a relevant item."""
    r = _check(ranked) if top is None else _top(ranked, top)
    acg = np.cumsum(r, axis=1) / np.arange(1, r.shape[1] + 1)
    rel = r > 0
    n_rel = rel.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, (acg * rel).sum(1) / n_rel, np.nan)


def multilabel_scores(ranked, p: int = 100, top: int | None = None) -> dict:
    """``{"ndcg", "acg", "wmap", "queries"}``: means over queries with a relevant item in the database."""
    r = _check(ranked)
    used = (r > 0).any(1)
    return {"ndcg": _mean_over(ndcg_at(r, p), used), "acg": _mean_over(acg_at(r, p), used),
            "wmap": _mean_over(weighted_aps(r, top), used), "queries": int(used.sum()), "p": int(p)}


__all__ = ["acg_at", "average_precisions", "dcg_at", "euclidean_distances", "hamming_distances", "map_mrr",
           "multilabel_scores", "ndcg_at", "ranked_relevance", "reciprocal_ranks", "same_class", "shared_labels",
           "weighted_aps"]
