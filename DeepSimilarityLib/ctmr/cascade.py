"""Cascade of two learned CT/MR metrics for hard negatives (Cheng et al. 2016, discussion).

The paper found its network fooled where the MR is dark for several tissues
(the eyes, bone, air) and proposed a second classifier trained with negatives
drawn from low-intensity MR regions, cascaded with the first. A position
must convince both: the cascade score is the smaller of the two scores, so a
position the second classifier rejects (score < 0) can no longer outrank the
true match on the first classifier's say alone, and the map stays continuous.

:class:`RankSumPatchMetric` combines metrics whose scores live on different
scales (the learned ``v1 - v2`` and NMI) by their ranks within the map instead.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..patch_metrics import PatchMetric
from .patch_pairs import PatchPairs, dark_mask, pairs_from_slices


class CascadePatchMetric(PatchMetric):
    """``min(first, second)`` of two learned metrics' score maps."""

    name = "learned-cascade"

    def __init__(self, first: PatchMetric, second: PatchMetric):
        self.first = first
        self.second = second

    def score_map(self, ct_patch, mr_region):
        return np.minimum(self.first.score_map(ct_patch, mr_region), self.second.score_map(ct_patch, mr_region))


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every score in its map as a fraction in (0, 1], shape kept; ties share the highest rank.

    Only the order within a map matters for a heat map's peak and for the rank error, so
    ranks put metrics of any scale on one footing.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores)
    return (rankdata(scores, method="max").reshape(scores.shape) / scores.size).astype(np.float32)


class RankSumPatchMetric(PatchMetric):
    """Sum of the :func:`percentile_ranks` of several metrics' score maps (a Borda count).

    Why: the learned metric knows the CT/MR appearance of the training patients and fails
    on an MR whose tissue contrast none of them had (a contrast-enhanced T1 whose brain is
    as bright as its fat), where NMI, which only asks that the grey values predict each
    other, still peaks at the match; NMI alone is far worse elsewhere. A position wins by
    ranking high on both.
    """

    name = "rank-sum"

    def __init__(self, *metrics: PatchMetric):
        if len(metrics) < 2:
            raise InputError("metrics", f"a rank sum needs at least two metrics, got {len(metrics)}")
        self.metrics = metrics
        self.name = "+".join(getattr(m, "name", type(m).__name__) for m in metrics)

    def score_map(self, ct_patch, mr_region):
        return sum(percentile_ranks(m.score_map(ct_patch, mr_region)) for m in self.metrics)


def hard_negative_pairs(slices, n_positive: int = 2000, seed: int = 0, patch_size: int = 17,
                        dark_threshold: float = 0.15, **kwargs) -> PatchPairs:
    """Pairs for the second classifier: positives as usual, negatives centred on dark MR voxels.

    ``slices`` are registered ``(ct, mr)`` [0, 1] arrays; each slice's dark
    region is computed from its own MR.
    """
    parts = []
    per = max(1, n_positive // max(len(slices), 1))
    for i, (ct, mr) in enumerate(slices):
        parts.append(pairs_from_slices([(ct, mr)], per, seed=seed + i, patch_size=patch_size,
                                       negative_region=dark_mask(mr, dark_threshold), **kwargs))
    return PatchPairs.concatenate(parts)
