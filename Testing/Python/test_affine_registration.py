import numpy as np
import pytest
import SimpleITK as sitk

from DeepSimilarityLib.affine_registration import register_affine
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import Volume, read_image, resample_to
from DeepSimilarityLib.intensity_metrics import mutual_information
from conftest import require_data


def mi(a: Volume, b: Volume) -> float:
    return float(mutual_information(a.array.ravel(), b.array.ravel(), 32))


def test_real_ct_mr_slice_registration_improves_mutual_information():
    folder = require_data("ct-mr-slices/Patient_02")
    ct = read_image(folder / "CT" / "010.png", ndim=2)
    mr = read_image(folder / "T1" / "010.png", ndim=2)
    result = register_affine(ct, mr, kind="affine")
    before, after = mi(ct, resample_to(mr, ct)), mi(ct, result.warped)
    assert after > before * 1.05, (before, after)
    assert result.metric_after < result.metric_before
    assert result.warped.same_grid(ct)


def test_recovers_a_known_rigid_motion():
    # A blurred random texture moved by a known rigid transform must be brought back.
    rng = np.random.default_rng(3)
    from scipy import ndimage
    a = ndimage.gaussian_filter(rng.random((128, 128)), 3).astype(np.float32)
    a[:10], a[-10:] = 0, 0
    fixed = Volume(a, (1.0, 1.0), (-64.0, -64.0))
    truth = sitk.Euler2DTransform((0.0, 0.0), np.deg2rad(6), (3.0, -2.0))
    moving = Volume.from_sitk(sitk.Resample(fixed.to_sitk(), truth.GetInverse()))
    result = register_affine(fixed, moving, kind="rigid", sampling=0.5, initialise="geometry")
    got = result.transform.TransformPoint((10.0, 20.0))
    expected = truth.TransformPoint((10.0, 20.0))
    assert np.allclose(got, expected, atol=0.5), (got, expected)


def test_bad_pairs_are_refused():
    flat = Volume(np.zeros((32, 32), np.float32))
    textured = Volume(np.random.default_rng(0).random((32, 32)).astype(np.float32))
    with pytest.raises(InputError, match="fixed: image is constant"):
        register_affine(flat, textured)
    with pytest.raises(InputError, match="moving: is 3D"):
        register_affine(textured, Volume(np.ones((4, 32, 32), np.float32)))
    with pytest.raises(InputError, match="kind"):
        register_affine(textured, textured, kind="bspline")


def test_registration_is_reproducible():
    rng = np.random.default_rng(5)
    from scipy import ndimage
    a = ndimage.gaussian_filter(rng.random((96, 96)), 2).astype(np.float32)
    fixed = Volume(a)
    moving = Volume(ndimage.rotate(a, 7, reshape=False, order=1) ** 2)
    first = register_affine(fixed, moving).transform.GetParameters()
    second = register_affine(fixed, moving).transform.GetParameters()
    assert first == second
