"""Retrieval metrics on tiny cases computed by hand."""

import math

import numpy as np
import pytest

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.retrieval import retrieval_metrics as m
from DeepSimilarityLib.retrieval.encoder import pack_bits


def test_map_mrr_by_hand():
    # Query 0: relevant at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2 = 0.5, RR = 1/2.
    # Query 1: relevant at rank 1 only -> AP = 1, RR = 1.
    # Query 2: nothing relevant -> left out.
    ranked = np.array([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    out = m.map_mrr(ranked)
    assert out["queries"] == 2
    assert out["map"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert np.isnan(m.average_precisions(ranked)[2])


def test_ranked_relevance_sorts_stably_by_distance():
    distances = np.array([[3.0, 1.0, 1.0, 0.5]])
    relevance = np.array([[1, 0, 1, 0]])
    # order: item 3 (0.5), item 1 (1.0, first of the tie), item 2, item 0
    assert m.ranked_relevance(distances, relevance).tolist() == [[0, 0, 1, 1]]


def test_ndcg_acg_wmap_by_hand():
    ranked = np.array([[2, 0, 1]])
    # ACG@2 = (2 + 0) / 2 = 1
    assert m.acg_at(ranked, 2)[0] == pytest.approx(1.0)
    # DCG@2 = (2^2-1)/log 2 + 0 ; ideal order (2, 1, 0): 3/log 2 + 1/log 3
    dcg = 3 / math.log(2)
    ideal = 3 / math.log(2) + 1 / math.log(3)
    assert m.ndcg_at(ranked, 2)[0] == pytest.approx(dcg / ideal)
    assert m.ndcg_at(ranked, 3)[0] == pytest.approx((dcg + 1 / math.log(4)) / ideal)
    # weighted AP: relevant at n = 1 (ACG@1 = 2) and n = 3 (ACG@3 = 1) -> (2 + 1) / 2
    assert m.weighted_aps(ranked)[0] == pytest.approx(1.5)
    # over the top 2 only item 1 is relevant: ACG@1 = 2
    assert m.weighted_aps(ranked, top=2)[0] == pytest.approx(2.0)
    perfect = m.multilabel_scores(np.array([[2, 1, 0], [0, 0, 0]]), p=2)
    assert perfect["ndcg"] == pytest.approx(1.0) and perfect["queries"] == 1
    assert perfect["acg"] == pytest.approx(1.5)


def test_shared_labels_and_hamming():
    q = np.array([[1, 1, 0], [0, 0, 0]])
    d = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 1]])
    assert m.shared_labels(q, d).tolist() == [[2, 1, 0], [0, 0, 0]]
    a = pack_bits(np.array([[1] * 8 + [0] * 8]))
    b = pack_bits(np.array([[1] * 8 + [0] * 8, [0] * 16, [1, 0] * 8]))
    assert m.hamming_distances(a, b).tolist() == [[0, 8, 8]]
    e = m.euclidean_distances(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]))
    assert e.tolist() == [[5.0, 1.0]]


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError):
        m.ranked_relevance(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(InputError):
        m.acg_at(np.zeros((1, 3)), 0)
    with pytest.raises(InputError):
        m.map_mrr(np.array([[-1, 0]]))
