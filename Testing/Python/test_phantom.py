"""Tests for the digital head phantom (DeepSimilarityLib.phantom)."""

import numpy as np
import pytest
from scipy import ndimage

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import resample_to
from DeepSimilarityLib.phantom import LABELS, HeadPhantom, make_head_phantom

L = LABELS


@pytest.fixture(scope="module")
def p2():
    return make_head_phantom((256, 256))


@pytest.fixture(scope="module")
def p3():
    return make_head_phantom((64, 128, 128))


def _median(phantom, image, *names):
    mask = np.isin(phantom.labels.array, [L[n] for n in names])
    assert mask.any(), names
    return float(np.median(getattr(phantom, image).array[mask]))


def test_same_seed_is_bit_identical_and_seed_changes_only_noise():
    a = make_head_phantom((64, 64), seed=7, misalign={"rotation": 3, "translation": (2, 1)})
    b = make_head_phantom((64, 64), seed=7, misalign={"rotation": 3, "translation": (2, 1)})
    c = make_head_phantom((64, 64), seed=8, misalign={"rotation": 3, "translation": (2, 1)})
    for name in ("ct", "mr", "labels"):
        assert np.array_equal(getattr(a, name).array, getattr(b, name).array), name
    assert not np.array_equal(a.ct.array, c.ct.array)
    assert not np.array_equal(a.mr.array, c.mr.array)
    assert np.array_equal(a.labels.array, c.labels.array)  # anatomy does not depend on the seed


def test_2d_shapes_dtypes_and_geometry(p2):
    assert isinstance(p2, HeadPhantom)
    for v in (p2.ct, p2.mr, p2.labels):
        assert v.array.shape == (256, 256) and v.ndim == 2
        assert v.same_grid(p2.ct)
    assert p2.ct.array.dtype == np.float32 and p2.mr.array.dtype == np.float32 and p2.labels.array.dtype == np.uint8
    assert p2.ct.spacing == (1.0, 1.0)
    assert p2.label_names == LABELS
    # The head is centred on the physical origin.
    yy, xx = np.nonzero(p2.labels.array)
    centre = p2.ct.index_to_physical((xx.mean(), yy.mean()))
    assert np.all(np.abs(centre) < 5.0), centre
    # ... and fits in the field of view with air all round.
    edge = np.concatenate([p2.labels.array[[0, -1]].ravel(), p2.labels.array[:, [0, -1]].ravel()])
    assert np.all(edge == L["background"])


def test_3d_shapes_and_geometry(p3):
    for v in (p3.ct, p3.mr, p3.labels):
        assert v.array.shape == (64, 128, 128) and v.ndim == 3
        assert v.same_grid(p3.ct)
    assert p3.ct.spacing == (2.0, 2.0, 4.0)
    zz, yy, xx = np.nonzero(p3.labels.array)
    assert np.all(np.abs(p3.ct.index_to_physical((xx.mean(), yy.mean(), zz.mean()))[:2]) < 5.0)


def test_custom_spacing_and_non_square_shape():
    p = make_head_phantom((96, 80), spacing=(2.5, 2.0), noise=0)
    assert p.ct.array.shape == (96, 80) and p.ct.spacing == (2.5, 2.0) and p.mr.same_grid(p.ct)
    # The head keeps its physical size: ~150 mm wide at 2.5 mm -> about 60 columns.
    cols = np.nonzero((p.labels.array > 0).any(axis=0))[0]
    assert 50 <= cols.size <= 66, cols.size


@pytest.mark.parametrize("which", ["p2", "p3"])
def test_every_label_present(which, request):
    phantom = request.getfixturevalue(which)
    present = set(np.unique(phantom.labels.array).tolist())
    assert present == set(LABELS.values()), {n for n, v in LABELS.items() if v not in present}


def test_anatomy_layout_2d(p2):
    lab = p2.labels.array
    for names in (("eye", "lens"), ("ventricles",)):
        n = ndimage.label(np.isin(lab, [L[n] for n in names]))[1]
        assert n == 2, (names, n)
    rows = {n: np.nonzero(lab == L[n])[0].mean() for n in ("eye", "sinus", "ventricles")}
    assert rows["eye"] < rows["ventricles"] and rows["sinus"] < rows["ventricles"]  # anterior is up (LPS y)
    # The skull is a closed ring: the air outside does not reach the brain.
    outside = ndimage.label(lab == L["background"])[0]
    assert np.unique(outside).size == 2
    inside = ~ndimage.binary_fill_holes(lab == L["skull"]) & (lab != L["background"])
    assert not np.isin(lab[inside], [L["white_matter"], L["ventricles"]]).any()


@pytest.mark.parametrize("which", ["p2", "p3"])
def test_ct_hounsfield_ranges(which, request):
    p = request.getfixturevalue(which)
    assert np.mean(p.ct.array[p.labels.array == L["skull"]]) > 700
    assert np.mean(p.ct.array[p.labels.array == L["background"]]) < -800
    assert _median(p, "ct", "sinus") < -500
    for name in ("grey_matter", "white_matter"):
        assert 20 <= _median(p, "ct", name) <= 60, name
    assert _median(p, "ct", "grey_matter") > _median(p, "ct", "white_matter") > _median(p, "ct", "ventricles")
    assert -150 < _median(p, "ct", "scalp") < 40
    assert 300 < _median(p, "ct", "diploe") < _median(p, "ct", "skull")


@pytest.mark.parametrize("which", ["p2", "p3"])
def test_mr_t1_contrast(which, request):
    p = request.getfixturevalue(which)
    wm, gm = _median(p, "mr", "white_matter"), _median(p, "mr", "grey_matter")
    csf = _median(p, "mr", "ventricles")
    fat, bone, air = _median(p, "mr", "scalp"), _median(p, "mr", "skull"), _median(p, "mr", "background")
    assert fat > wm > gm > csf > air
    assert bone < gm and bone < _median(p, "mr", "diploe") < fat
    assert _median(p, "mr", "eye") < gm


def _deep_white_matter(p, iterations):
    """White matter voxels far from other tissue, and off the midline (thin fissure)."""
    deep = ndimage.binary_erosion(p.labels.array == L["white_matter"], iterations=iterations)
    x = p.ct.origin[0] + np.arange(p.ct.size[0]) * p.ct.spacing[0]  # mm, identity direction
    return deep & (np.abs(x) > 5.0)[None, :]


def test_clean_images_hit_table_values():
    p = make_head_phantom((128, 128), noise=0, bias=0, blur=0)
    deep = _deep_white_matter(p, 2)
    assert deep.sum() > 500
    assert np.allclose(p.ct.array[deep], 25.0, atol=1e-3) and np.allclose(p.mr.array[deep], 720.0, atol=1e-3)
    assert np.all(p.mr.array[p.labels.array == 0][:100] >= 0)


def test_partial_volume_at_skull_edges():
    sharp = make_head_phantom((256, 256), noise=0, blur=0)
    soft = make_head_phantom((256, 256), noise=0, blur=2.0)
    lab = sharp.labels.array
    skull = lab == L["skull"]
    band = ndimage.binary_dilation(skull, iterations=2) & np.isin(lab, [L["csf"], L["grey_matter"]])
    counts = [np.count_nonzero((p.ct.array[band] > 150) & (p.ct.array[band] < 1000)) for p in (sharp, soft)]
    assert counts[1] > 50 and counts[1] > 2 * counts[0], counts
    # Within tissue, far from edges, blurring changes nothing.
    deep = _deep_white_matter(sharp, 6)
    assert deep.sum() > 500
    assert np.allclose(sharp.ct.array[deep], soft.ct.array[deep], atol=1e-3)


def test_misalign_moves_mr_only_and_transform_is_ground_truth():
    ref = make_head_phantom((128, 128), noise=0, bias=0)
    mis = make_head_phantom((128, 128), noise=0, bias=0, misalign={"rotation": 6.0, "translation": (5.0, -4.0)})
    assert np.array_equal(ref.ct.array, mis.ct.array)
    assert np.array_equal(ref.labels.array, mis.labels.array)
    assert mis.mr.same_grid(ref.mr)
    before = np.mean(np.abs(mis.mr.array - ref.mr.array))
    assert before > 20
    # Resampling the MR through the returned transform undoes the motion.
    back = resample_to(mis.mr, mis.ct, mis.transform)
    after = np.mean(np.abs(back.array - ref.mr.array))
    assert after < 0.25 * before, (before, after)
    # The default transform is the identity.
    assert np.allclose(ref.transform.TransformPoint((10.0, -3.0)), (10.0, -3.0))


def test_misalign_3d_three_angles():
    ref = make_head_phantom((32, 64, 64), noise=0)
    mis = make_head_phantom((32, 64, 64), noise=0, misalign=((2.0, -3.0, 4.0), (1.0, 2.0, -3.0)))
    assert np.array_equal(ref.ct.array, mis.ct.array)
    assert np.mean(np.abs(ref.mr.array - mis.mr.array)) > 10
    assert mis.transform.GetDimension() == 3


@pytest.mark.parametrize("kwargs, name", [
    (dict(shape=(16, 256)), "shape"),
    (dict(shape=(256,)), "shape"),
    (dict(shape=(32, 32, 32, 32)), "shape"),
    (dict(shape=(64.0, 64)), "shape"),
    (dict(shape="256x256"), "shape"),
    (dict(shape=(4096, 4096, 4096)), "shape"),
    (dict(spacing=(1.0,)), "spacing"),
    (dict(spacing=(1.0, 0.0)), "spacing"),
    (dict(spacing=(1.0, float("nan"))), "spacing"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(noise=-0.1), "noise"),
    (dict(noise=float("inf")), "noise"),
    (dict(blur=-1.0), "blur"),
    (dict(bias=2.0), "bias"),
    (dict(misalign={"rot": 3}), "misalign"),
    (dict(misalign={"rotation": (1.0, 2.0, 3.0)}), "misalign"),
    (dict(misalign={"translation": (1.0, 2.0, 3.0)}), "misalign"),
    (dict(misalign={"rotation": "a lot"}), "misalign"),
    (dict(misalign=5.0), "misalign"),
])
def test_bad_parameters_raise_input_error(kwargs, name):
    with pytest.raises(InputError) as info:
        make_head_phantom(**{"shape": (64, 64), **kwargs})
    assert info.value.name == name
