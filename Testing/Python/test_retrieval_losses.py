"""Losses of the Siamese and hashing models: hand values and gradients."""

import pytest
import torch

from DeepSimilarityLib.retrieval.hashing_losses import (dsh_loss, hashnet_loss, multilabel_bce,
                                                        order_sensitive_ranking_loss, relaxed_hamming)
from DeepSimilarityLib.retrieval.siamese import batch_contrastive_loss, contrastive_loss

LABELS = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float64)


def test_contrastive_loss_by_hand():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    # same pair at D = 5: 25 / 2; different pair at D = 0.5 with m = 1: 0.25 / 2
    loss = contrastive_loss(a, b, torch.tensor([True, False]), margin=1.0)
    assert loss.item() == pytest.approx((12.5 + 0.125) / 2, rel=1e-5)
    far = contrastive_loss(a[1:], b[:1], torch.tensor([False]), margin=1.0)
    assert far.item() == pytest.approx(0.0)


def test_batch_contrastive_loss_by_hand():
    e = torch.tensor([[0.0, 0.0], [0.3, 0.4], [0.0, 0.8]])
    # same pair (0, 1) at D = 0.5: 0.125; different pairs (0, 2) at D = 0.8 and (1, 2) at D = 0.5 with m = 1:
    # 0.02 and 0.125. Each kind weighs half: (0.125 + 0.0725) / 2, not the plain mean 0.09 of the three.
    loss = batch_contrastive_loss(e, torch.tensor([0, 0, 1]), margin=1.0)
    assert loss.item() == pytest.approx((0.125 + (0.02 + 0.125) / 2) / 2, rel=1e-5)
    # one class only: the mean over the same-class pairs (D^2 / 2 = 0.125, 0.32, 0.125)
    one = batch_contrastive_loss(e, torch.tensor([2, 2, 2]), margin=1.0)
    assert one.item() == pytest.approx((0.125 + 0.32 + 0.125) / 3, rel=1e-5)


def test_ranking_loss_by_hand():
    # Query 0 (labels {0}), list: item 1 shares 1 label, item 2 shares 0.
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    h = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]])
    # d(0,1) = 2, d(0,2) = 0. The only triplets: q0 (i=1, j=2): weight 2^1 - 2^0 = 1, hinge max(0, 1 + 2 - 0) = 3;
    # q2 (i=1, j=0): same weight, d(2,1) = 2, d(2,0) = 0 -> 3; q1 has r = 1 for both -> none.
    assert order_sensitive_ranking_loss(h, labels, margin=1.0).item() == pytest.approx(3.0)
    assert relaxed_hamming(h)[0].tolist() == [0.0, 2.0, 0.0]
    # no labels at all: no triplet, zero loss with a gradient path
    empty = order_sensitive_ranking_loss(h.requires_grad_(), torch.zeros(3, 2), margin=1.0)
    assert empty.item() == 0.0
    empty.backward()


def test_ranking_loss_weights_follow_relevance_gaps():
    # Swapping items of relevance 2 and 0 must cost more than swapping relevance 1 and 0.
    h = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]])
    lab2 = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    loss_gap2 = order_sensitive_ranking_loss(h, lab2, 1.0) * 3  # weight (4 - 1) / Z with Z = 3
    lab1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    loss_gap1 = order_sensitive_ranking_loss(h, lab1, 1.0) * 1
    assert loss_gap2.item() > loss_gap1.item()


@pytest.mark.parametrize("name", ["contrastive", "batch-contrastive", "ranking", "bce", "dsh", "hashnet"])
def test_loss_gradients(name):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    if name == "contrastive":
        fn = lambda x: contrastive_loss(x[:2], x[2:4], torch.tensor([True, False]), margin=3.0)  # noqa: E731
    elif name == "batch-contrastive":
        fn = lambda x: batch_contrastive_loss(x, torch.tensor([0, 1, 0, 2, 1]), margin=3.0)  # noqa: E731
    elif name == "ranking":
        fn = lambda x: order_sensitive_ranking_loss(torch.tanh(x), LABELS, margin=2.0)  # noqa: E731
    elif name == "bce":
        fn = lambda x: multilabel_bce(x[:, :3], LABELS)  # noqa: E731
    elif name == "dsh":
        fn = lambda x: dsh_loss(x, LABELS)  # noqa: E731
    else:
        fn = lambda x: hashnet_loss(torch.tanh(x), LABELS)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-5)


def test_ranking_gradient_pulls_relevant_items_closer():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 16, generator=g, dtype=torch.float64)
    d0 = relaxed_hamming(torch.tanh(h))
    h.requires_grad_()
    order_sensitive_ranking_loss(torch.tanh(h), LABELS, margin=4.0).backward()
    stepped = torch.tanh(h.detach() - 0.5 * h.grad)
    d1 = relaxed_hamming(stepped)
    # images 0 and 1 share two labels: a descent step brings them closer, 0 and 4 (nothing shared) apart
    assert d1[0, 1] < d0[0, 1]
    assert d1[0, 4] > d0[0, 4]
