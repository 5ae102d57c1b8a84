"""Similarity heat map of one CT patch over a neighbourhood of the MR.

The map is returned as a :class:`Volume` placed in the patient exactly where
the scored MR positions are (MR spacing and direction, origin at the first
scored position), so a viewer can overlay it on the MR with no extra
geometry. 2D maps are ``N x N``; 3D maps are ``N x N x K`` (K slices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .image_io import Volume, check_overlap, check_volume, normalise_intensity, resample_to
from .patch_metrics import PatchMetric, get_metric
from .patches import crop, search_region


@dataclass
class HeatMap:
    """Scores of every MR position around the CT point.

    Attributes:
        scores: score volume, array ``(N, N)`` or ``(K, N, N)``; higher = more similar.
        centre_index: the CT point's voxel index in array order.
        best_index: array-order voxel index (in the MR/CT grid) of the best score.
        best_point: LPS position (mm) of the best score.
        metric: name of the metric used.
    """

    scores: Volume
    centre_index: tuple
    best_index: tuple
    best_point: np.ndarray
    metric: str


def neighbourhood_shape(ndim: int, neighbourhood: int = 81, depth: int | None = None) -> tuple:
    """Array-order neighbourhood: ``(N, N)`` in 2D, ``(K, N, N)`` in 3D (K defaults to 9)."""
    if ndim == 2:
        return (neighbourhood, neighbourhood)
    return (depth or 9, neighbourhood, neighbourhood)


def prepare_pair(ct: Volume, mr: Volume, normalise: bool = True) -> tuple[Volume, Volume]:
    """Check a CT/MR pair, resample the MR onto the CT grid, normalise both to [0, 1]."""
    check_volume(ct, "ct")
    check_volume(mr, "mr")
    if ct.ndim != mr.ndim:
        raise InputError("mr", f"is {mr.ndim}D but the CT is {ct.ndim}D")
    if not mr.same_grid(ct):
        check_overlap(ct, mr, "ct", "mr")
        mr = resample_to(mr, ct)
    if normalise:
        ct = ct.with_array(normalise_intensity(ct.array))
        mr = mr.with_array(normalise_intensity(mr.array))
    return ct, mr


def similarity_heatmap(ct: Volume, mr: Volume, point=None, index=None, metric: PatchMetric | str = "nmi",
                       patch_size: int = 17, neighbourhood: int = 81, depth: int | None = None,
                       normalise: bool = True) -> HeatMap:
    """Score the CT patch at ``point`` against every MR patch in its neighbourhood.

    Args:
        ct, mr: 2D or 3D volumes of the same dimension; the MR is resampled
            onto the CT grid when the grids differ (error if they do not overlap).
        point: LPS position in mm of the CT patch centre, or ``index``: its
            voxel index in ``(x, y[, z])`` order.
        metric: a :class:`PatchMetric` or a hand-made metric name.
        patch_size: odd patch edge (17 as in Cheng et al.; 3D patches are cubes).
        neighbourhood: odd in-plane edge of the searched neighbourhood (81).
        depth: odd number of slices searched in 3D (default 9).
        normalise: map both images to [0, 1] by robust percentiles first.

    Patches that reach over the image border read zeros (normalised background).
    """
    if isinstance(metric, str):
        metric = get_metric(metric)
    ct, mr = prepare_pair(ct, mr, normalise)
    if (point is None) == (index is None):
        raise InputError("point", "give exactly one of point (mm) and index (voxels)")
    xyz = ct.physical_to_index(point) if point is not None else np.asarray(index, dtype=float)
    if len(xyz) != ct.ndim:
        raise InputError("point", f"needs {ct.ndim} coordinates, got {len(xyz)}")
    centre = tuple(int(round(c)) for c in xyz[::-1])
    if any(c < 0 or c >= n for c, n in zip(centre, ct.array.shape)):
        raise InputError("point", f"voxel {tuple(reversed(centre))} lies outside the CT of size {ct.size}")
    shape = neighbourhood_shape(ct.ndim, neighbourhood, depth)
    patch = crop(ct.array, centre, (patch_size,) * ct.ndim)
    region = search_region(mr.array, centre, patch_size, shape)
    scores = metric.score_map(patch, region)
    first = np.array(centre) - np.array(shape) // 2
    origin = ct.index_to_physical(first[::-1])
    score_volume = Volume(scores, ct.spacing, origin, ct.direction.copy())
    best = np.unravel_index(int(np.argmax(scores)), scores.shape)
    best_index = tuple(int(b + f) for b, f in zip(best, first))
    return HeatMap(score_volume, centre, best_index, ct.index_to_physical(best_index[::-1]), metric.name)
