"""The learned CT/MR patch similarity (:mod:`~DeepSimilarityLib.ctmr.similarity_net`) as a dense,
differentiable 2D registration loss: ``-mean score(CT patch, warped MR patch)`` over a grid of positions.

The patch net is an MLP on a pair of 17x17 patches (``v1 - v2``, higher = same position). Here every
``stride``-th position of the fixed CT is cut with ``F.unfold`` together with the same window of the
warped MR, and the frozen net scores all of them in one batch, so the gradient reaches the moving
image through the unfolded MR patches (and the warp). Roles are fixed: ``fixed`` = CT, ``warped``
= MR, both in [0, 1] at the resolution the net was trained at (the shipped net: the CT/MR slices
2x downsampled, 256x256). A per-patch-normalised net (``patch_norm = "patch"``) gets its
normalisation inside :meth:`PatchSimilarityNet.forward`, which is differentiable (min/max pass
the gradient to the extreme pixels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ctmr.similarity_net import PatchSimilarityNet
from ..errors import InputError


class LearnedCTMRLoss(nn.Module):
    """``loss(warped_mr, fixed_ct)`` for ``(B, 1, H, W)`` images; the net stays frozen.

    Args:
        net: a trained :class:`PatchSimilarityNet` (square 2D patches, ``patch_voxels = p*p``).
        stride: spacing of the scored positions (4: about 1/16 of the positions, enough overlap
            for a 17-pixel patch; 1 scores every position).
        min_std: positions whose CT patch has a standard deviation below this are left out (flat
            background, where the score says nothing about alignment); computed from the fixed image
            only, so it does not change during the optimisation.
    """

    def __init__(self, net: PatchSimilarityNet, stride: int = 4, min_std: float = 0.01):
        super().__init__()
        side = math.isqrt(int(net.config["patch_voxels"]))
        if side * side != net.config["patch_voxels"]:
            raise InputError("ctmr-learned",
                             f"needs square 2D patches, the net has {net.config['patch_voxels']} voxels")
        self.net = net.eval().requires_grad_(False)
        self.side, self.stride, self.min_std = side, int(stride), float(min_std)

    def train(self, mode: bool = True):  # the patch net stays in eval mode
        super().train(mode)
        self.net.eval()
        return self

    def scores(self, warped: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores (B, L), mask (B, L))`` at the ``L`` strided positions; mask marks CT patches with structure."""
        if warped.ndim != 4 or warped.shape != fixed.shape or warped.shape[1] != 1:
            raise InputError("ctmr-learned", f"needs two (B, 1, H, W) 2D images, got {tuple(warped.shape)} and "
                                             f"{tuple(fixed.shape)}")
        if min(fixed.shape[2:]) < self.side:
            raise InputError("ctmr-learned",
                             f"images {tuple(fixed.shape[2:])} are smaller than the {self.side}-pixel patch")
        ct = F.unfold(fixed, self.side, stride=self.stride)  # (B, V, L), V in row-major patch order
        mr = F.unfold(warped, self.side, stride=self.stride)
        b, v, n = ct.shape
        score = self.net.score(ct.transpose(1, 2).reshape(-1, v), mr.transpose(1, 2).reshape(-1, v)).view(b, n)
        mask = ct.std(1) >= self.min_std
        return score, mask

    def forward(self, warped, fixed, warped_labels=None, fixed_labels=None):
        score, mask = self.scores(warped, fixed)
        if not bool(mask.any()):  # an all-flat CT: score every position rather than none
            mask = torch.ones_like(mask)
        return -(score * mask).sum() / mask.sum()
