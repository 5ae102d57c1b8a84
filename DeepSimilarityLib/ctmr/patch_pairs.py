"""Training pairs of CT/MR patches around the skull (Cheng et al. 2016, section 3.1).

Positives are a CT patch and the MR patch at the same position of a
registered slice pair, centred on or near the bone edge; each negative pairs
the same CT patch with an MR patch from another random position. Negatives
are drawn inside the search neighbourhood used at test time but outside its
tolerance window, so the network learns exactly the decision the heat map and
the rank-error evaluation ask of it. Works on 2D and 3D arrays alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..patches import crop


def skull_edge_mask(ct: np.ndarray, threshold: float = 0.95, near: int = 2) -> np.ndarray:
    """Voxels on or within ``near`` voxels of a bone edge of a [0, 1] CT.

    Bone is ``ct >= threshold`` (the CT slices are windowed for soft tissue, so
    bone saturates near 1); tiny specks are ignored. At low resolution the skull
    can be one or two voxels thin and the opening that drops specks would drop
    it too: then only connected pieces smaller than 8 voxels are dropped.
    """
    raw = np.asarray(ct) >= threshold
    bone = ndimage.binary_opening(raw)
    if not bone.any() and raw.any():
        pieces, _ = ndimage.label(raw, np.ones((3,) * raw.ndim))
        sizes = np.bincount(pieces.ravel())
        bone = (sizes >= 8)[pieces] & raw
    if not bone.any():
        return bone
    edge = bone ^ ndimage.binary_erosion(bone)
    return ndimage.binary_dilation(edge, iterations=near) if near > 0 else edge


def dark_mask(mr: np.ndarray, threshold: float = 0.15) -> np.ndarray:
    """Low-intensity MR voxels inside the head: where the hard negatives of the cascade come from."""
    head = ndimage.binary_fill_holes(ndimage.binary_closing(np.asarray(mr) > 0.05, iterations=3))
    return head & (np.asarray(mr) < threshold)


@dataclass
class PatchPairs:
    """Flattened patch pairs: ``ct`` and ``mr`` of shape ``(N, voxels)``, ``labels`` (N,) 1 = same position."""

    ct: np.ndarray
    mr: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    @staticmethod
    def concatenate(parts: list["PatchPairs"]) -> "PatchPairs":
        return PatchPairs(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ct", "mr", "labels")))


def sample_centres(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` voxel indices ``(count, ndim)`` drawn uniformly from ``mask`` (with replacement if needed)."""
    candidates = np.argwhere(mask)
    if len(candidates) == 0:
        return np.zeros((0, mask.ndim), dtype=int)
    pick = rng.choice(len(candidates), size=count, replace=count > len(candidates))
    return candidates[pick]


def negative_centres(centres: np.ndarray, shape, rng: np.random.Generator, radius: int = 40, min_distance: int = 2,
                     allowed: np.ndarray | None = None) -> np.ndarray:
    """One other position per centre: within ``radius`` (Chebyshev) but farther than ``min_distance``.

    With ``allowed`` (a mask), positions are drawn from it (hard negatives),
    falling back to any position when the neighbourhood holds none.
    """
    out = np.empty_like(centres)
    for i, c in enumerate(centres):
        lo = np.maximum(c - radius, 0)
        hi = np.minimum(c + radius + 1, shape)
        for _ in range(100):
            q = rng.integers(lo, hi)
            if np.max(np.abs(q - c)) > min_distance and (allowed is None or allowed[tuple(q)]):
                break
        out[i] = q
    return out


def random_monotone_curves(values: np.ndarray, fraction: float, rng: np.random.Generator,
                           knots: int = 4) -> np.ndarray:
    """Rows of ``values`` ``(N, V)`` in [0, 1], a random ``fraction`` of them remapped by random increasing curves.

    Each chosen row gets its own piecewise-linear curve through (0, 0), (1, 1) and ``knots``
    inner points at evenly spaced inputs with sorted uniform outputs. Why: the MR grey
    values of one tissue relative to another differ between scanners, sequences and PNG
    windows (one head patient's brain is as bright as its scalp fat, the others' half as
    bright), and per-patch min/max normalisation removes only a linear change; remapping
    positives and negatives alike keeps the labels true while the network can no longer
    rely on the relative levels. Rows not chosen are returned unchanged.
    """
    out = np.array(values, dtype=np.float32, copy=True)
    chosen = np.flatnonzero(rng.random(len(out)) < fraction)
    if len(chosen) == 0:
        return out
    levels = np.concatenate([np.zeros((len(chosen), 1)), np.sort(rng.random((len(chosen), knots)), axis=1),
                             np.ones((len(chosen), 1))], axis=1)  # (n, knots + 2) curve values at even inputs
    x = np.clip(out[chosen], 0.0, 1.0) * (knots + 1)
    index = np.minimum(x.astype(int), knots)  # segment of each value
    t = x - index
    rows = np.arange(len(chosen))[:, None]
    out[chosen] = ((1 - t) * levels[rows, index] + t * levels[rows, index + 1]).astype(np.float32)
    return out


def random_mirror_pairs(ct: np.ndarray, mr: np.ndarray, size: tuple, rng: np.random.Generator):
    """The same random mirror applied to the CT and the MR patch of each row ``(N, voxels)``.

    Each row draws a flip of every axis and a swap of the last two (in-plane)
    axes: the 8 symmetries of a square in 2D, 16 in 3D (slice axes are never
    swapped with the in-plane ones, whose spacing may differ). Why: a skull edge
    seen mirrored is still a skull edge with the same CT/MR relation, so the
    pairs keep their labels while the network sees each edge in every
    orientation instead of the few the training patients' heads happen to show.
    Returns new ``(ct, mr)`` arrays; the inputs are untouched.
    """
    n, dim = len(ct), len(size)
    flips = rng.random((n, dim)) < 0.5
    swaps = rng.random(n) < 0.5
    codes = (flips @ (1 << np.arange(dim))) * 2 + swaps  # bit 0: swap; bit 1 + a: flip axis a
    ct_out = np.array(ct, dtype=np.float32, copy=True).reshape((n,) + tuple(size))
    mr_out = np.array(mr, dtype=np.float32, copy=True).reshape((n,) + tuple(size))
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        axes = tuple(1 + a for a in range(dim) if (code >> 1) >> a & 1)
        for out in (ct_out, mr_out):
            block = np.flip(out[rows], axis=axes) if axes else out[rows]
            out[rows] = np.swapaxes(block, -1, -2) if code & 1 else block
    return ct_out.reshape(n, -1), mr_out.reshape(n, -1)


def make_pairs(ct: np.ndarray, mr: np.ndarray, n_positive: int, rng: np.random.Generator, patch_size: int = 17,
               region: np.ndarray | None = None, radius: int = 40, min_distance: int = 2,
               negative_region: np.ndarray | None = None, negatives_per_positive: int = 1,
               positive_jitter: int = 0, mr_intensity_augment: float = 0.0, mirror: bool = False) -> PatchPairs:
    """Balanced positives and negatives from one registered CT/MR pair of [0, 1] arrays.

    Args:
        ct, mr: registered arrays of the same shape, ``(y, x)`` or ``(z, y, x)``.
        n_positive: positives (as many negatives are made, one per positive).
        region: where positive centres may lie (default: :func:`skull_edge_mask`).
        radius, min_distance: where negatives lie relative to their positive.
        negative_region: restrict negative MR centres to this mask (cascade).
        negatives_per_positive: each CT patch is paired with this many other MR positions.
        positive_jitter: positive MR patches lie up to this many voxels (Chebyshev) off
            the CT position; 1 matches the 3 x 3 tolerance of the rank-error evaluation.
        mr_intensity_augment: fraction of the MR patches (positives and negatives alike)
            remapped by a random increasing grey-value curve, see :func:`random_monotone_curves`.
        mirror: each pair mirrored at random, see :func:`random_mirror_pairs`.
    """
    if not 0 <= mr_intensity_augment <= 1:
        raise InputError("mr_intensity_augment", f"must lie in [0, 1], got {mr_intensity_augment}")
    if negatives_per_positive < 1 or positive_jitter < 0 or positive_jitter >= min_distance:
        raise InputError("pairs", f"need negatives_per_positive >= 1 and 0 <= positive_jitter < min_distance "
                                  f"({min_distance}), got {negatives_per_positive} and {positive_jitter}")
    if ct.shape != mr.shape:
        raise InputError("mr", f"shape {mr.shape} differs from the CT's {ct.shape}; register and resample first")
    region = skull_edge_mask(ct) if region is None else region
    centres = sample_centres(region, n_positive, rng)
    if len(centres) == 0:
        empty = np.zeros((0, patch_size ** ct.ndim), np.float32)
        return PatchPairs(empty, empty.copy(), np.zeros(0, np.int64))
    repeated = np.repeat(centres, negatives_per_positive, axis=0)
    others = negative_centres(repeated, np.array(ct.shape), rng, radius, min_distance, negative_region)
    shifted = np.clip(centres + rng.integers(-positive_jitter, positive_jitter + 1, centres.shape), 0,
                      np.array(ct.shape) - 1) if positive_jitter else centres
    size = (patch_size,) * ct.ndim
    ct_p = np.stack([crop(ct, c, size).ravel() for c in centres])
    mr_pos = np.stack([crop(mr, c, size).ravel() for c in shifted])
    mr_neg = np.stack([crop(mr, c, size).ravel() for c in others])
    labels = np.concatenate([np.ones(len(centres), np.int64), np.zeros(len(others), np.int64)])
    mr_p = np.concatenate([mr_pos, mr_neg])
    if mr_intensity_augment > 0:  # no draws otherwise: earlier recipes keep their pairs
        mr_p = random_monotone_curves(mr_p, mr_intensity_augment, rng)
    ct_p = np.concatenate([ct_p, np.repeat(ct_p, negatives_per_positive, axis=0)])
    if mirror:  # no draws otherwise, as above
        ct_p, mr_p = random_mirror_pairs(ct_p, mr_p, size, rng)
    return PatchPairs(ct_p, mr_p, labels)


def pairs_from_slices(slices, n_positive: int = 2000, seed: int = 0, patch_size: int = 17, **kwargs) -> PatchPairs:
    """``n_positive`` positives (+ as many negatives) spread evenly over ``(ct, mr)`` array pairs."""
    slices = list(slices)
    if not slices:
        raise InputError("slices", "no CT/MR slice pairs to sample from")
    rng = np.random.default_rng(seed)
    per = np.full(len(slices), n_positive // len(slices))
    per[: n_positive - per.sum()] += 1
    parts = [make_pairs(ct, mr, int(k), rng, patch_size, **kwargs) for (ct, mr), k in zip(slices, per) if k > 0]
    pairs = PatchPairs.concatenate(parts)
    if len(pairs) == 0:
        raise InputError("slices", "no skull edge found in any CT slice; check the CT window or the region mask")
    return pairs
