"""Checks of how well two registered images agree, usable on any modality pair.

The paired CT/MR slices are registered in 2D, but a CT slice and an MR slice
of the "same level" may cut the head at different heights or angles (worst at
the skull base), which no in-plane transform can fix. The body outline is the
one boundary both modalities show sharply, so the distance between the two
outlines after registration tells which pairs are trustworthy ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def body_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The largest connected region above ``threshold`` of a [0, 1] image, holes filled."""
    mask = ndimage.binary_opening(ndimage.gaussian_filter(np.asarray(image, np.float32), 2) > threshold, iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    largest = int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1)))) + 1
    return ndimage.binary_fill_holes(labels == largest)


def outline_distance(fixed: np.ndarray, moving: np.ndarray, threshold: float = 0.1) -> float:
    """Median distance in voxels from the fixed image's body outline to the moving image's.

    Both images in [0, 1] on the same grid; ``inf`` when either holds no body.
    """
    a, b = body_mask(fixed, threshold), body_mask(moving, threshold)
    if not a.any() or not b.any():
        return float("inf")
    edge_a = a ^ ndimage.binary_erosion(a)
    edge_b = b ^ ndimage.binary_erosion(b)
    return float(np.median(ndimage.distance_transform_edt(~edge_b)[edge_a]))
