"""Losses of the deep hashing models: OSDH ranking, DSH pairwise, HashNet pairwise.

Codes ``h`` are ``(B, k)`` relaxed bits in [-1, 1] (tanh outputs; DSH uses
unbounded real outputs). The relaxed Hamming distance of two codes is
``(k - <h_i, h_j>) / 2``, exact for codes in {-1, 1}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relaxed_hamming(h: torch.Tensor) -> torch.Tensor:
    """``(B, k)`` codes -> ``(B, B)`` relaxed Hamming distances ``(k - h h^T) / 2``."""
    return (h.shape[1] - h @ h.t()) / 2


def shared_label_counts(labels: torch.Tensor) -> torch.Tensor:
    """Multi-hot ``(B, L)`` -> ``(B, B)`` number of shared labels r."""
    y = labels.to(torch.float32)
    return y @ y.t()


def order_sensitive_ranking_loss(h: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """OSDH triplet ranking loss over in-batch ranking lists (Chen et al. 2018).

    Every image q of the batch is a query; the others form its ranking list.
    For each pair (i, j) of the list with ``r_i > r_j`` (r = labels shared
    with q) the hinge ``max(0, margin + d(q, i) - d(q, j))`` on relaxed
    Hamming distances is weighted by ``(2^r_i - 2^r_j) / Z``: swapping two
    items far apart in relevance costs more, as in NDCG. Z is the sum of the
    weights, so the loss is a weighted mean hinge in bits. Zero when no
    triplet exists (e.g. a batch where no image has a label).

    h: ``(B, k)``; labels: ``(B, L)`` multi-hot; margin in bits.
    """
    b = h.shape[0]
    r = shared_label_counts(labels)
    d = relaxed_hamming(h)
    gain = torch.pow(2.0, r)
    w = (gain[:, :, None] - gain[:, None, :]).clamp(min=0)  # (q, i, j)
    not_q = 1.0 - torch.eye(b, dtype=h.dtype, device=h.device)
    w = w * not_q[:, :, None] * not_q[:, None, :]  # the query is not in its own list
    z = w.sum()
    if z <= 0:
        return h.sum() * 0.0
    hinge = F.relu(margin + d[:, :, None] - d[:, None, :])
    return (w * hinge).sum() / z


def multilabel_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label binary cross-entropy, mean over images and labels. logits, labels: ``(B, L)``."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def similar_pairs(labels: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` 1 where two images share at least one label (the pairwise methods' similarity)."""
    return (shared_label_counts(labels) > 0).to(torch.float32)


def _off_diagonal(b: int, device=None) -> torch.Tensor:
    return ~torch.eye(b, dtype=torch.bool, device=device)


def dsh_loss(u: torch.Tensor, labels: torch.Tensor, margin: float | None = None,
             regulariser: float = 0.01) -> torch.Tensor:
    """DSH (Liu et al. 2016): ``s ||u_i - u_j||^2 / 2 + (1 - s) max(0, m - ||u_i - u_j||^2) / 2``,
    plus ``regulariser * || |u| - 1 ||_1`` pulling outputs to +-1. Default margin ``m = 2k``.

    u: ``(B, k)`` real outputs; labels: ``(B, L)``; mean over the B(B-1) ordered pairs.
    """
    b, k = u.shape
    m = 2.0 * k if margin is None else margin
    s = similar_pairs(labels)
    sq = ((u[:, None, :] - u[None, :, :]) ** 2).sum(2)
    pair = s * sq / 2 + (1 - s) * F.relu(m - sq) / 2
    mask = _off_diagonal(b, u.device)
    binary = (u.abs() - 1).abs().sum(1).mean()
    return pair[mask].mean() + regulariser * binary


def hashnet_loss(h: torch.Tensor, labels: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """HashNet-style weighted pairwise likelihood: ``w_ij (log(1 + exp(a <h_i, h_j>)) - s_ij a <h_i, h_j>)``.

    Weights balance similar and dissimilar pairs (each class of pair weighs
    half of the total), ``a`` defaults to ``10 / k`` so the logits stay in
    [-10, 10] whatever k. h: ``(B, k)`` in [-1, 1]; labels: ``(B, L)``.
    """
    b, k = h.shape
    a = 10.0 / k if scale is None else scale
    s = similar_pairs(labels)
    mask = _off_diagonal(b, h.device).to(h.dtype)
    n_sim, n_dis = (s * mask).sum(), ((1 - s) * mask).sum()
    w = mask * (s / n_sim.clamp(min=1) + (1 - s) / n_dis.clamp(min=1)) / 2
    ip = a * (h @ h.t())
    return (w * (F.softplus(ip) - s * ip)).sum()
