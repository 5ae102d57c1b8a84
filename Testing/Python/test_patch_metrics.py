import numpy as np
import pytest
from scipy import ndimage

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.heatmap import similarity_heatmap
from DeepSimilarityLib.image_io import Volume
from DeepSimilarityLib.intensity_metrics import (linear_correlation, mutual_information,
                                                 normalised_mutual_information)
from DeepSimilarityLib.patch_metrics import get_metric, mind_descriptor
from DeepSimilarityLib.patches import crop, search_region, sliding_patches


def test_information_measures_on_hand_computed_cases():
    a = np.array([0.0] * 50 + [1.0] * 50)
    assert mutual_information(a, a, 2) == pytest.approx(np.log(2))
    assert normalised_mutual_information(a, a, 2) == pytest.approx(2.0)
    # Inverted intensities carry the same information.
    assert normalised_mutual_information(a, 1 - a, 2) == pytest.approx(2.0)
    # Independent halves: every joint cell holds a quarter.
    b = np.array(([0.0] * 25 + [1.0] * 25) * 2)
    assert mutual_information(a, b, 2) == pytest.approx(0.0, abs=1e-12)
    assert normalised_mutual_information(a, b, 2) == pytest.approx(1.0)


def test_constant_inputs_give_finite_scores():
    flat = np.zeros((3, 289))
    noisy = np.random.default_rng(0).random((3, 289))
    for f in (normalised_mutual_information, mutual_information, linear_correlation):
        values = f(flat, noisy) if f is linear_correlation else f(flat, noisy, 16)
        assert np.all(np.isfinite(values))
    assert np.all(normalised_mutual_information(flat, flat, 16) == 1.0)
    assert np.all(linear_correlation(flat, noisy) == 0.0)


def test_linear_correlation_sign_and_batches():
    x = np.arange(10.0)
    np.testing.assert_allclose(linear_correlation(np.stack([x, x]), np.stack([2 * x + 1, -x])), [1.0, -1.0])
    assert get_metric("lcc").score_patches(x[None], -x[None])[0] == pytest.approx(1.0)


def test_crop_pads_with_zeros_and_refuses_outside_centres():
    a = np.arange(25, dtype=np.float32).reshape(5, 5)
    c = crop(a, (0, 0), 3)
    np.testing.assert_array_equal(c, [[0, 0, 0], [0, 0, 1], [0, 5, 6]])
    with pytest.raises(InputError, match="outside"):
        crop(a, (5, 0), 3)
    with pytest.raises(InputError, match="odd"):
        search_region(a, (2, 2), 4, 3)


def textured(shape, seed=0):
    return ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2).astype(np.float32)


@pytest.mark.parametrize("name", ["nmi", "lcc", "mind"])
def test_score_map_finds_a_known_shift_even_across_modalities(name):
    ct = textured((120, 120))
    mr = np.roll(1.0 - ct, shift=(3, -5), axis=(0, 1))  # inverted contrast, shifted
    centre = (60, 60)
    scores = get_metric(name).score_map(crop(ct, centre, 17), search_region(mr, centre, 17, 21))
    assert scores.shape == (21, 21)
    best = np.unravel_index(np.argmax(scores), scores.shape)
    assert (best[0] - 10, best[1] - 10) == (3, -5)


def test_patchwise_score_map_equals_a_per_position_loop():
    ct, mr = textured((60, 60), 1), textured((60, 60), 2)
    patch, region = crop(ct, (30, 30), 7), search_region(mr, (30, 30), 7, 9)
    metric = get_metric("nmi")
    fast = metric.score_map(patch, region)
    windows = sliding_patches(region, 7)
    slow = [[normalised_mutual_information(patch.ravel(), windows[i, j].ravel(), 16, (0.0, 1.0)) for j in range(9)]
            for i in range(9)]
    np.testing.assert_allclose(fast, slow, rtol=1e-6)


def test_mind_descriptor_shape_and_range():
    d = mind_descriptor(textured((10, 12, 14)))
    assert d.shape == (6, 10, 12, 14)
    assert d.max() <= 1.0 and d.min() > 0.0
    assert np.all(np.isfinite(mind_descriptor(np.zeros((16, 16)))))


def test_heatmap_geometry_and_best_match_2d_and_3d():
    ct = textured((100, 110))
    mr = np.roll(ct, shift=(2, 4), axis=(0, 1))
    spacing, origin = (0.5, 0.75), (-20.0, 10.0)
    result = similarity_heatmap(Volume(ct, spacing, origin), Volume(mr, spacing, origin), index=(55, 50),
                                metric="lcc", neighbourhood=21)
    assert result.scores.array.shape == (21, 21)
    assert result.scores.spacing == spacing
    # The map's first voxel is the position 10 voxels before the point on each axis.
    np.testing.assert_allclose(result.scores.origin, (origin[0] + 45 * 0.5, origin[1] + 40 * 0.75))
    assert result.best_index == (52, 59)
    ct3, mr3 = textured((30, 60, 60)), None
    mr3 = np.roll(ct3, shift=(1, -2, 3), axis=(0, 1, 2))
    r3 = similarity_heatmap(Volume(ct3), Volume(mr3), index=(30, 30, 15), metric="nmi", patch_size=9,
                            neighbourhood=11, depth=5)
    assert r3.scores.array.shape == (5, 11, 11)
    assert r3.best_index == (16, 28, 33)


def test_heatmap_bad_input():
    ct = Volume(textured((50, 50)))
    with pytest.raises(InputError, match="mr: is 3D"):
        similarity_heatmap(ct, Volume(textured((5, 50, 50))), index=(25, 25))
    with pytest.raises(InputError, match="outside"):
        similarity_heatmap(ct, ct, index=(60, 25))
    with pytest.raises(InputError, match="do not overlap"):
        similarity_heatmap(ct, Volume(textured((50, 50)), origin=(500.0, 500.0)), index=(25, 25))
    with pytest.raises(InputError, match="unknown metric"):
        similarity_heatmap(ct, ct, index=(25, 25), metric="ssim")
