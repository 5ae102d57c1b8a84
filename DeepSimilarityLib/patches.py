"""Cutting patches and search regions out of images (2D and 3D alike).

Every patch in the project comes from here: the heat map, the rank-error
evaluation and the training-pair sampler. Arrays are indexed ``(y, x)`` or
``(z, y, x)``; centres are integer array indices in the same order.
Positions whose patch reaches outside the image read zeros (the background
of intensity-normalised images), so a centre near the border is scored, not
refused; a centre outside the image is an error.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import InputError


def _as_tuple(value, ndim: int, name: str) -> tuple:
    values = (value,) * ndim if np.isscalar(value) else tuple(value)
    if len(values) != ndim or any(int(v) != v or v < 1 for v in values):
        raise InputError(name, f"must be {ndim} positive integers, got {value!r}")
    return tuple(int(v) for v in values)


def crop(array: np.ndarray, centre, size) -> np.ndarray:
    """The block of ``size`` centred on ``centre`` (array order), zero outside the image.

    For even sizes the extra voxel lies before the centre. Returns a new
    float32 array of shape ``size``.
    """
    array = np.asarray(array)
    ndim = array.ndim
    size = _as_tuple(size, ndim, "size")
    centre = tuple(int(round(c)) for c in centre)
    if len(centre) != ndim:
        raise InputError("centre", f"needs {ndim} coordinates, got {len(centre)}")
    if any(c < 0 or c >= n for c, n in zip(centre, array.shape)):
        raise InputError("centre", f"{centre} lies outside the image of shape {array.shape}")
    start = [c - s // 2 for c, s in zip(centre, size)]
    out = np.zeros(size, dtype=np.float32)
    src, dst = [], []
    for st, s, n in zip(start, size, array.shape):
        lo, hi = max(st, 0), min(st + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[tuple(dst)] = array[tuple(src)]
    return out


def search_region(array: np.ndarray, centre, patch_size, neighbourhood) -> np.ndarray:
    """The region holding every patch centred in the neighbourhood of ``centre``.

    Shape ``neighbourhood + patch_size - 1`` per axis; patch ``i`` of
    :func:`sliding_patches` on it is centred at ``centre - neighbourhood // 2 + i``.
    """
    ndim = np.ndim(array)
    p = _as_tuple(patch_size, ndim, "patch_size")
    n = _as_tuple(neighbourhood, ndim, "neighbourhood")
    if any(s % 2 == 0 for s in p + n):
        raise InputError("patch_size/neighbourhood", f"must be odd, got {p} and {n}")
    return crop(array, centre, tuple(a + b - 1 for a, b in zip(p, n)))


def sliding_patches(region: np.ndarray, patch_size) -> np.ndarray:
    """All patches of ``region`` as a read-only view ``(*positions, *patch_size)``."""
    p = _as_tuple(patch_size, region.ndim, "patch_size")
    return sliding_window_view(region, p)


def neighbourhood_offsets(neighbourhood, ndim: int) -> np.ndarray:
    """Offsets ``(M, ndim)`` of all positions of a neighbourhood from its centre, row-major."""
    n = _as_tuple(neighbourhood, ndim, "neighbourhood")
    grids = np.meshgrid(*[np.arange(s) - s // 2 for s in n], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)
