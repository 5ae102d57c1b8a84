"""Random pose and contrast augmentation for registration training, 2D and 3D.

Pose: one random rotation, isotropic scale, shift and left-right flip per sample, applied alike to
both images of a pair (:func:`augment_pairs`, so the pair's own misalignment is kept) or to one
image and its label map (:func:`augment_labelled`, labels by nearest neighbour). Contrast: a MONAI
bias field, gamma and noise (:func:`intensity_transform`, :func:`augment_intensity`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError

# Tensor axis of left-right in (B, C, 56, 48, 40): flipping it keeps an OASIS brain correlated 0.95 with
# itself, the other two axes 0.71-0.72.
LR_AXIS = 4
# The random pose of the augmentation: rotation up to ANGLE degrees per axis plane, isotropic scale
# 1 +- SCALE, shift up to SHIFT in [-1, 1] normalised coordinates (0.08 = 2 voxels of 50).
ANGLE, SCALE, SHIFT = 6.0, 0.06, 0.08


def _random_pose(shape, generator: torch.Generator, angle: float, scale: float, shift: float, flip_axis):
    """A sampling grid for ``shape`` ``(B, C, ...)`` (one random rotation, isotropic scale and shift per
    sample) and which samples to flip along ``flip_axis``."""
    b, dims = shape[0], len(shape) - 2
    if flip_axis is not None and not 2 <= flip_axis < len(shape):
        raise InputError("flip_axis", f"must be a spatial tensor axis 2..{len(shape) - 1} or None, not {flip_axis}")

    def uniform(*size):
        return 2 * torch.rand(*size, generator=generator) - 1

    theta = torch.eye(dims).repeat(b, 1, 1)
    for i in range(dims):
        for j in range(i + 1, dims):
            a = uniform(b) * math.radians(angle)
            rot = torch.eye(dims).repeat(b, 1, 1)
            rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = a.cos(), -a.sin(), a.sin(), a.cos()
            theta = rot @ theta
    theta = theta * (1 + scale * uniform(b, 1, 1))
    grid = F.affine_grid(torch.cat([theta, shift * uniform(b, dims, 1)], 2), list(shape), align_corners=False)
    flip = torch.rand(b, generator=generator) < 0.5 if flip_axis is not None else torch.zeros(b, dtype=torch.bool)
    return grid, flip


def _resample(x: torch.Tensor, grid: torch.Tensor, flip: torch.Tensor, flip_axis, mode: str) -> torch.Tensor:
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if flip_axis is not None:
        out[flip] = out[flip].flip(flip_axis)
    return out


def augment_pairs(moving: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator, angle: float = ANGLE,
                  scale: float = SCALE, shift: float = SHIFT, flip_axis: int | None = LR_AXIS):
    """One random transform per sample, the same for both images: ``(B, 1, ...)`` -> same shapes.

    A flip of ``flip_axis`` with probability 1/2, rotations of up to ``angle`` degrees in every
    axis plane, an isotropic scale in ``1 +- scale``, a shift of up to ``shift`` (in [-1, 1]
    normalised coordinates, 0.08 = 2 voxels of 50); trilinear, zero outside.
    """
    if moving.shape != fixed.shape or moving.ndim not in (4, 5) or moving.shape[1] != 1:
        raise InputError("images", f"expected two (B, 1, H, W[, D]) batches, got {tuple(moving.shape)} and "
                                   f"{tuple(fixed.shape)}")
    grid, flip = _random_pose(moving.shape, generator, angle, scale, shift, flip_axis)
    both = _resample(torch.cat([moving, fixed], 1), grid, flip, flip_axis, "bilinear")
    return both[:, :1], both[:, 1:]


def augment_labelled(images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
                     angle: float = ANGLE, scale: float = SCALE, shift: float = SHIFT,
                     flip_axis: int | None = LR_AXIS):
    """:func:`augment_pairs`' random pose for one image batch ``(B, 1, ...)`` and its label maps.

    ``labels`` ``(B, 1, ...)`` integer ids (or None) follow the same transform by nearest neighbour,
    so a segmentation feature net sees new poses of its one training subject with matching labels.
    """
    if images.ndim not in (4, 5) or images.shape[1] != 1:
        raise InputError("images", f"expected (B, 1, H, W[, D]), got {tuple(images.shape)}")
    if labels is not None and labels.shape != images.shape:
        raise InputError("labels", f"expected {tuple(images.shape)} like the images, got {tuple(labels.shape)}")
    grid, flip = _random_pose(images.shape, generator, angle, scale, shift, flip_axis)
    out = _resample(images, grid, flip, flip_axis, "bilinear")
    if labels is None:
        return out, None
    return out, _resample(labels.float(), grid, flip, flip_axis, "nearest").round().long()


def intensity_transform(seed: int):
    """A seeded MONAI transform giving one ``(1, ...)`` image a new random contrast: a smooth bias field
    (degree 3, coefficients < 0.02: a multiplicative field of about 0.9-1.2), a gamma in 0.7-1.5 and
    Gaussian noise (sd 0.01). What it is for: the feature net learns from one subject, and the other
    subjects differ mainly in contrast (the darkest structure's mean intensity is 0.08-0.20 across the three).
    """
    from monai.transforms import Compose, RandAdjustContrast, RandBiasField, RandGaussianNoise

    transform = Compose([RandBiasField(degree=3, coeff_range=(0.0, 0.02), prob=1.0),
                         RandAdjustContrast(prob=1.0, gamma=(0.7, 1.5)), RandGaussianNoise(prob=1.0, std=0.01)])
    transform.set_random_state(seed)
    return transform


def augment_intensity(images: torch.Tensor, labels, transform):
    """``transform`` (e.g. :func:`intensity_transform`) applied to every image of ``(B, 1, ...)``; labels pass."""
    if images.ndim not in (4, 5) or images.shape[1] != 1:
        raise InputError("images", f"expected (B, 1, H, W[, D]), got {tuple(images.shape)}")
    # as_subclass: MONAI returns MetaTensors; the nets need plain tensors only.
    return torch.stack([torch.as_tensor(transform(x)).as_subclass(torch.Tensor).float() for x in images]), labels
