"""Cascade of two learned CT/MR metrics for hard negatives (Cheng et al. 2016, discussion).

The paper found its network fooled where the MR is dark for several tissues
(the eyes, bone, air) and proposed a second classifier trained with negatives
drawn from low-intensity MR regions, cascaded with the first. A position
must convince both: the cascade score is the smaller of the two scores, so a
position the second classifier rejects (score < 0) can no longer outrank the
true match on the first classifier's say alone, and the map stays continuous.
"""

from __future__ import annotations

import numpy as np

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
