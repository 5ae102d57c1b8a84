"""The classical reference: SimpleITK B-spline Mattes MI (both settings the 3D benchmark compares)."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import Volume
from DeepSimilarityLib.registration.bspline import register_bspline, transform_to_displacement


def smoothly_deformed_pair(size=64, amplitude=2.5):
    """A blurred random texture (fixed) and the same texture under a smooth sine deformation (moving)."""
    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random((size, size)), 2.0)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    y, x = np.mgrid[:size, :size].astype(float)
    dy = amplitude * np.sin(2 * np.pi * x / size)
    dx = amplitude * np.cos(2 * np.pi * y / size)
    moving = ndimage.map_coordinates(fixed, [y + dy, x + dx], order=1, mode="nearest")
    return Volume(fixed.astype(np.float32)), Volume(moving.astype(np.float32))


@pytest.mark.parametrize("options", [dict(mesh=6, shrink=(2, 1)),
                                     dict(mesh=2, shrink=(4, 2, 1), mesh_refine=(1, 2, 4), iterations=100)])
def test_bspline_undoes_a_smooth_deformation(options):
    fixed, moving = smoothly_deformed_pair()
    transform = register_bspline(fixed, moving, **options)
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    warped = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(moving.to_sitk(), sitk.sitkFloat32), f, transform))
    before = np.mean((moving.array - fixed.array) ** 2)
    after = np.mean((warped - fixed.array)[8:-8, 8:-8] ** 2)  # away from the border, where no sample reaches
    assert after < 0.3 * before, (before, after)
    ddf = transform_to_displacement(transform, fixed)
    assert ddf.shape == (2, 64, 64) and np.abs(ddf).max() > 1.0  # it moved, in voxels along the array axes


def test_bspline_refuses_a_refinement_without_a_factor_per_level():
    fixed, moving = smoothly_deformed_pair(32)
    with pytest.raises(InputError, match="mesh_refine"):
        register_bspline(fixed, moving, shrink=(2, 1), mesh_refine=(1, 2, 4))
