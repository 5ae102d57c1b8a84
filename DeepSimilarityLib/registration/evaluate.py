"""Evaluation of a registration: Dice of label maps, Jacobian determinant, folding."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def dice_scores(warped_labels, fixed_labels, labels=None) -> dict[int, float]:
    """Dice per label id of two integer label arrays of one shape.

    ``labels``: the ids to score (default: non-zero ids present in either map). A label
    absent from both maps is skipped; absent from one scores 0.
    """
    a, b = np.asarray(warped_labels), np.asarray(fixed_labels)
    if a.shape != b.shape:
        raise InputError("labels", f"shapes {a.shape} and {b.shape} differ")
    ids = labels if labels is not None else np.union1d(np.unique(a), np.unique(b))
    out = {}
    for k in ids:
        if k == 0:
            continue
        ma, mb = a == k, b == k
        total = int(ma.sum()) + int(mb.sum())
        if total:
            out[int(k)] = 2.0 * int(np.logical_and(ma, mb).sum()) / total
    return out


def mean_dice(warped_labels, fixed_labels, labels=None) -> float:
    scores = dice_scores(warped_labels, fixed_labels, labels)
    if not scores:
        raise InputError("labels", "label maps are empty (only background)")
    return float(np.mean(list(scores.values())))


def jacobian_determinant(ddf, spacing=None) -> np.ndarray:
    """Determinant of the Jacobian of ``x -> x + u(x)`` for a displacement ``(dims, ...)``.

    ``ddf`` channel ``i`` is the displacement along array axis ``i``, in voxels, or in mm when
    ``spacing`` (per array axis) is given; derivatives by central differences (one-sided at
    the border). A value <= 0 marks folding. Returns an array of the grid's shape.
    """
    u = np.asarray(ddf, dtype=np.float64)
    dims = u.ndim - 1
    if dims not in (2, 3) or u.shape[0] != dims:
        raise InputError("displacement", f"expected (dims, ...) with dims 2 or 3, got {u.shape}")
    spacing = np.ones(dims) if spacing is None else np.asarray(spacing, dtype=float)
    jac = np.empty((dims, dims) + u.shape[1:])
    for i in range(dims):
        grads = np.gradient(u[i], *spacing, edge_order=1)
        for j in range(dims):
            jac[i, j] = grads[j] + (1.0 if i == j else 0.0)
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def folding_fraction(ddf, spacing=None, mask=None) -> float:
    """Fraction of voxels (inside ``mask`` if given) whose Jacobian determinant is <= 0."""
    det = jacobian_determinant(ddf, spacing)
    return float(np.mean(det[mask] <= 0) if mask is not None else np.mean(det <= 0))
