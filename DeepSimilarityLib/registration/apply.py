"""Registering a moving volume to a fixed volume of any size and spacing with a trained network.

Steps: affine pre-alignment by Mattes MI (:func:`~DeepSimilarityLib.affine_registration.register_affine`;
skipping it is the commonest cause of poor learned registration), resampling of both images
to the network grid (the fixed field of view at the net's training size), prediction, and
composition of the network displacement with the affine into one displacement field on the
fixed grid.

Conventions of the returned field: ITK's. It is a :class:`Volume` on the fixed grid whose
array is ``(..., dims)`` (vector components last) holding, at each fixed point ``p``, the
vector ``T(p) - p`` in LPS millimetres, components ordered ``(x, y[, z])``, where ``T`` maps
fixed points to moving points (the "resampling" direction ITK and SimpleITK use).
``to_sitk_transform`` wraps it as a ``DisplacementFieldTransform``; written with
``sitk.WriteTransform`` (.h5/.tfm) Slicer loads it as a grid transform and converts LPS to
RAS itself. To fill a Slicer grid transform node directly, negate the x and y components
(``ras=True``) - Slicer's nodes hold RAS vectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..affine_registration import register_affine
from ..errors import InputError
from ..image_io import Volume, check_overlap, check_volume, resample_to
from .evaluate import folding_fraction
from .network import RegistrationNet, load_registration_net, resize_displacement


@dataclass
class DeformableResult:
    """``displacement``: Volume ``(..., dims)`` LPS mm (RAS if asked), fixed -> moving, on the fixed grid.
    ``warped``: the moving image on the fixed grid. ``affine``: the pre-alignment transform (or None).
    ``folding``: fraction of fixed voxels where the network deformation folds (Jacobian <= 0).
    ``seconds``: {"affine", "network", "total"}."""

    displacement: Volume
    warped: Volume
    affine: sitk.Transform | None
    folding: float
    seconds: dict


def network_grid(fixed: Volume, shape) -> Volume:
    """An empty Volume covering ``fixed``'s field of view with array ``shape`` (voxel edges aligned)."""
    shape = tuple(int(s) for s in shape)
    factor = np.array(fixed.array.shape[: fixed.ndim][::-1], float) / np.array(shape[::-1], float)  # (x, y[, z])
    spacing = np.array(fixed.spacing) * factor
    origin = np.array(fixed.origin) + fixed.direction @ ((spacing - np.array(fixed.spacing)) / 2.0)
    return Volume(np.zeros(shape, np.float32), tuple(spacing), tuple(origin), fixed.direction.copy())


def network_shape(fixed: Volume, multiple: int, downsample: int = 1) -> list[int]:
    """``fixed``'s array shape divided by ``downsample``, rounded up to a multiple of ``multiple`` (the net's)."""
    if downsample < 1:
        raise InputError("--downsample", f"must be >= 1, got {downsample}")
    return [int(np.ceil(s / downsample / multiple) * multiple) for s in fixed.array.shape]


def _unit(a: np.ndarray, name: str, intensity: dict | None = None) -> np.ndarray:
    """Intensities as the network learned them.

    ``intensity`` (the net's metadata) ``{"percentile": q, "value": v}``: the image minimum goes to
    0 and the q-th percentile of the voxels above 1% of the range to v, clipped to [0, 1] (the
    brain volumes are normalised per volume, so a slice's maximum varies from 0.6 to 0.96 and a
    per-slice min-max stretch changes the contrast the net saw). Without it: min-max to [0, 1].
    """
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        raise InputError(name, "image is constant (zero variance); nothing to register")
    if not intensity:
        return ((a - lo) / (hi - lo)).astype(np.float32)
    x = a - lo
    ref = float(np.percentile(x[x > 0.01 * (hi - lo)], intensity["percentile"]))
    return np.clip(x * (intensity["value"] / ref), 0.0, 1.0).astype(np.float32)


def to_network_grid(image: Volume, grid: Volume, intensity: dict | None = None,
                    transform: sitk.Transform | None = None, name: str = "moving") -> np.ndarray:
    """``image`` resampled onto ``grid`` (:func:`network_grid`; through ``transform``, which maps grid
    points to image points) and scaled as :func:`_unit` says: the array a registration net reads.

    The one way images reach a net's grid, for registering (:func:`register_deformable`) and for
    training on the user's images (:mod:`.user_pairs`), so that the two cannot drift apart.
    """
    a = resample_to(image, grid, transform).array.astype(np.float32)
    if float(np.ptp(a)) == 0.0:
        raise InputError(name, "is empty on the fixed field of view" + (" after pre-alignment" if transform else ""))
    return _unit(a, name, intensity)


def _affine_matrix(transform: sitk.Transform, dims: int) -> np.ndarray:
    """Linear part ``M`` of an affine-type transform: ``A(p + u) = A(p) + M u``."""
    zero = np.array(transform.TransformPoint((0.0,) * dims))
    return np.stack([np.array(transform.TransformPoint(tuple(np.eye(dims)[j]))) - zero for j in range(dims)], 1)


def to_sitk_transform(displacement: Volume) -> sitk.Transform:
    """A SimpleITK ``DisplacementFieldTransform`` (LPS, fixed -> moving) from an LPS displacement Volume."""
    image = sitk.Cast(displacement.to_sitk(), sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(image)


def register_deformable(fixed: Volume, moving: Volume, net, affine: str | None = "affine",
                        ras: bool = False) -> DeformableResult:
    """Register ``moving`` to ``fixed`` (2D or 3D, any grids) with a registration network.

    Args:
        net: a :class:`RegistrationNet` or the path of its weights; its ``metadata['grid']``
            (array order) is the network grid, else the fixed size rounded up to the net's multiple.
        affine: ``"rigid"``, ``"similarity"``, ``"affine"`` pre-alignment, or None when the
            images are already affinely aligned (then the moving image is only resampled).
        ras: return displacement vectors in RAS (x and y negated) instead of LPS.
    Intensities are scaled as the net's ``metadata['intensity']`` says (see :func:`_unit`), else min-max.
    """
    t0 = time.perf_counter()
    check_volume(fixed, "fixed")
    check_volume(moving, "moving")
    if fixed.ndim != moving.ndim:
        raise InputError("moving", f"is {moving.ndim}D but fixed is {fixed.ndim}D")
    if not isinstance(net, RegistrationNet):
        net = load_registration_net(net)
    if net.dims != fixed.ndim:
        raise InputError("net", f"is a {net.dims}D network but the images are {fixed.ndim}D")
    _unit(fixed.array, "fixed")
    _unit(moving.array, "moving")
    check_overlap(fixed, moving)
    dims = fixed.ndim
    if affine:
        pre = register_affine(fixed, moving, kind=affine).transform
    else:
        pre = sitk.Transform(dims, sitk.sitkIdentity)
    t_affine = time.perf_counter() - t0
    shape = getattr(net, "metadata", {}).get("grid")
    if shape is None or len(shape) != dims:
        shape = network_shape(fixed, net.multiple)
    grid = network_grid(fixed, shape)
    intensity = getattr(net, "metadata", {}).get("intensity")
    f_net = to_network_grid(fixed, grid, intensity, name="fixed")
    m_net = to_network_grid(moving, grid, intensity, pre, "moving")
    t1 = time.perf_counter()
    with torch.no_grad():
        ddf = net.displacement(torch.from_numpy(m_net)[None, None], torch.from_numpy(f_net)[None, None])
        ddf = resize_displacement(ddf, fixed.array.shape)[0].numpy().astype(np.float64)
    t_net = time.perf_counter() - t1
    folding = folding_fraction(ddf)
    # Network displacement: array-axis voxels of the fixed grid -> (x, y[, z]) index units -> LPS mm.
    u_index = np.moveaxis(ddf[::-1], 0, -1) * np.asarray(fixed.spacing)
    u_lps = u_index @ fixed.direction.T
    # Total transform T(p) = A(p + u(p)): affine displacement field plus the linear part applied to u.
    a_field = sitk.TransformToDisplacementField(pre, sitk.sitkVectorFloat64, fixed.size, fixed.origin,
                                                fixed.spacing, tuple(fixed.direction.ravel()))
    total = sitk.GetArrayFromImage(a_field) + u_lps @ _affine_matrix(pre, dims).T
    field = Volume(total, fixed.spacing, fixed.origin, fixed.direction.copy(), is_vector=True)
    warped = resample_to(moving, fixed, to_sitk_transform(field))
    if ras:
        flipped = total.copy()
        flipped[..., :2] *= -1
        field = field.with_array(flipped)
    return DeformableResult(field, warped, pre if affine else None, folding,
                            {"affine": t_affine, "network": t_net, "total": time.perf_counter() - t0})
