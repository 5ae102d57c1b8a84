import numpy as np
import pytest

from DeepSimilarityLib.ctmr.patch_pairs import (make_pairs, negative_centres, pairs_from_slices, random_mirror_pairs,
                                              random_monotone_curves,
                                              skull_edge_mask)
from DeepSimilarityLib.ctmr.rank_error import cumulative_curve, rank_error, rank_errors, summarise
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import normalise_intensity
from DeepSimilarityLib.patch_metrics import get_metric
from DeepSimilarityLib.phantom import LABELS, make_head_phantom


def test_rank_error_by_hand():
    s = np.zeros((5, 5))
    s[2, 2] = 1.0
    assert rank_error(s, 3) == 0
    s[0, 0] = 2.0  # one position outside the 3x3 window beats the window's best
    assert rank_error(s, 3) == 1
    s[3, 3] = 3.0  # inside the window: the window's best is now 3
    assert rank_error(s, 3) == 0
    # A flat map ranks every outside position as high as the window: the worst psi, not 0.
    assert rank_error(np.ones((5, 5)), 3) == 25 - 9
    assert rank_error(np.ones((3, 5, 5)), 3) == 75 - 27


def test_cumulative_curve_and_summary():
    psi = np.array([4, 0, 1, 0])
    np.testing.assert_array_equal(cumulative_curve(psi), [0, 0, 1, 5])
    s = summarise(psi)
    assert s == {"n": 4, "mean_psi": 1.25, "median_psi": 0.5, "fraction_psi0": 0.5}


@pytest.fixture(scope="module")
def phantom_pair():
    ph = make_head_phantom((192, 192), seed=1)
    return normalise_intensity(ph.ct.array), normalise_intensity(ph.mr.array), ph.labels.array


def test_skull_edge_mask_lies_on_the_skull(phantom_pair):
    ct, _, labels = phantom_pair
    edge = skull_edge_mask(ct, near=0)
    assert edge.sum() > 100
    near_bone = np.isin(labels, [LABELS["skull"], LABELS["diploe"]])
    assert near_bone[edge].mean() > 0.9


def test_thin_skull_of_a_small_phantom_is_kept_and_specks_are_not():
    ph = make_head_phantom((64, 64), seed=0)  # the skull is 1-2 voxels thin here
    ct, mr = normalise_intensity(ph.ct.array), normalise_intensity(ph.mr.array)
    edge = skull_edge_mask(ct, near=0)
    assert edge.sum() > 20
    assert np.isin(ph.labels.array, [LABELS["skull"], LABELS["diploe"]])[edge].mean() > 0.9
    assert len(pairs_from_slices([(ct, mr)], n_positive=40)) == 80
    specks = np.zeros((64, 64), np.float32)
    specks[10, 10:13] = 1.0  # 3 voxels of "bone": noise, not a skull
    specks[40:42, 40] = 1.0
    assert not skull_edge_mask(specks).any()


def test_pairs_are_balanced_and_positives_match(phantom_pair):
    ct, mr, _ = phantom_pair
    pairs = make_pairs(ct, mr, 50, np.random.default_rng(0))
    assert len(pairs) == 100 and pairs.labels.sum() == 50
    assert pairs.ct.shape == (100, 289)
    # Each negative reuses its positive's CT patch with a different MR patch.
    np.testing.assert_array_equal(pairs.ct[:50], pairs.ct[50:])
    assert not np.allclose(pairs.mr[:50], pairs.mr[50:])
    with pytest.raises(InputError, match="differs from the CT"):
        make_pairs(ct, mr[:-1], 5, np.random.default_rng(0))


def test_negative_centres_respect_the_distances():
    rng = np.random.default_rng(0)
    centres = np.array([[50, 50]] * 200)
    others = negative_centres(centres, np.array([100, 100]), rng, radius=10, min_distance=3)
    d = np.abs(others - centres).max(1)
    assert d.min() > 3 and d.max() <= 10


def test_pairs_from_slices_refuses_empty_input():
    with pytest.raises(InputError, match="no CT/MR slice pairs"):
        pairs_from_slices([], 10)
    flat = np.zeros((64, 64), np.float32)
    with pytest.raises(InputError, match="no skull edge"):
        pairs_from_slices([(flat, flat)], 10)


def test_registered_phantom_gives_small_rank_error_for_mind_and_large_for_noise(phantom_pair):
    ct, mr, _ = phantom_pair
    centres = np.argwhere(skull_edge_mask(ct, near=0))[::97][:8]
    psi = rank_errors([(ct, mr, tuple(c)) for c in centres], get_metric("mind"), neighbourhood=21)
    rng = np.random.default_rng(0)
    noise = rng.random(mr.shape).astype(np.float32)
    psi_noise = rank_errors([(ct, noise, tuple(c)) for c in centres], get_metric("mind"), neighbourhood=21)
    assert psi.mean() < psi_noise.mean()


def test_cascade_takes_the_smaller_score_and_hard_negatives_are_dark(phantom_pair):
    from DeepSimilarityLib.ctmr.cascade import CascadePatchMetric, hard_negative_pairs
    from DeepSimilarityLib.ctmr.patch_pairs import dark_mask

    class Constant:
        def __init__(self, value):
            self.value = value

        def score_map(self, ct_patch, mr_region):
            n = mr_region.shape[0] - ct_patch.shape[0] + 1
            return np.full((n, n), self.value, np.float32) + np.arange(n)[:, None]

    m = CascadePatchMetric(Constant(1.0), Constant(-2.0)).score_map(np.zeros((3, 3)), np.zeros((7, 7)))
    np.testing.assert_array_equal(m[:, 0], np.arange(5) - 2.0)
    ct, mr, _ = phantom_pair
    pairs = hard_negative_pairs([(ct, mr)], 40, seed=0)
    negatives = pairs.mr[pairs.labels == 0]
    # Negative MR patches are centred on dark MR voxels.
    centre = negatives[:, 289 // 2]
    assert np.mean(centre < 0.15) > 0.8 and dark_mask(mr).any()


def test_several_negatives_per_positive_and_jittered_positives(phantom_pair):
    ct, mr, _ = phantom_pair
    rng = np.random.default_rng(3)
    pairs = make_pairs(ct, mr, 20, rng, negatives_per_positive=3, positive_jitter=1)
    assert len(pairs) == 80 and pairs.labels.sum() == 20
    # Each CT patch appears once as a positive and three times with a negative.
    assert np.array_equal(np.repeat(pairs.ct[:20], 3, axis=0), pairs.ct[20:])
    # Jittered positives are the MR patch at most one voxel away: some differ from the aligned patch.
    aligned = make_pairs(ct, mr, 20, np.random.default_rng(3))
    assert np.array_equal(pairs.ct[:20], aligned.ct[:20])
    assert not np.array_equal(pairs.mr[:20], aligned.mr[:20])
    with pytest.raises(InputError):
        make_pairs(ct, mr, 5, rng, negatives_per_positive=0)
    with pytest.raises(InputError):
        make_pairs(ct, mr, 5, rng, positive_jitter=2, min_distance=2)


def test_random_monotone_curves_keep_order_and_ends_and_touch_only_the_chosen_fraction():
    rng = np.random.default_rng(0)
    values = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (400, 1))
    out = random_monotone_curves(values, 0.5, np.random.default_rng(1))
    changed = ~np.all(np.isclose(out, values), axis=1)
    assert 0.4 < changed.mean() < 0.6
    # Every curve is increasing and keeps 0 and 1: the order of grey values and the patch range survive.
    assert np.all(np.diff(out, axis=1) >= -1e-6)
    np.testing.assert_allclose(out[:, [0, -1]], values[:, [0, -1]], atol=1e-6)
    # The remapped rows differ from one another (a curve per row, not one for all).
    assert len({tuple(np.round(r, 4)) for r in out[changed]}) == changed.sum()
    np.testing.assert_array_equal(random_monotone_curves(values, 0.0, rng), values)


def test_mr_intensity_augment_remaps_mr_patches_only_and_leaves_other_pairs_alone(phantom_pair):
    ct, mr, _ = phantom_pair
    plain = make_pairs(ct, mr, 30, np.random.default_rng(5), negatives_per_positive=2)
    augmented = make_pairs(ct, mr, 30, np.random.default_rng(5), negatives_per_positive=2, mr_intensity_augment=1.0)
    np.testing.assert_array_equal(plain.ct, augmented.ct)
    np.testing.assert_array_equal(plain.labels, augmented.labels)
    # Every MR patch, positive and negative, went through a curve; the order of its grey values is kept.
    assert np.all(np.any(plain.mr != augmented.mr, axis=1) | (np.ptp(plain.mr, axis=1) == 0))
    order = np.argsort(plain.mr, axis=1, kind="stable")
    assert np.all(np.diff(np.take_along_axis(augmented.mr, order, axis=1), axis=1) >= -1e-6)
    with pytest.raises(InputError):
        make_pairs(ct, mr, 5, np.random.default_rng(0), mr_intensity_augment=1.5)


def test_random_mirror_pairs_mirror_ct_and_mr_alike_through_every_symmetry():
    square = np.arange(9, dtype=np.float32).reshape(3, 3)
    rows = np.tile(square.ravel(), (200, 1))
    ct, mr = random_mirror_pairs(rows, rows + 100, (3, 3), np.random.default_rng(0))
    np.testing.assert_array_equal(mr - ct, 100)  # both patches of a row got the same mirror
    symmetries = {tuple(np.rot90(m, k).ravel()) for m in (square, square.T) for k in range(4)}
    seen = {tuple(r) for r in ct}
    assert seen == symmetries  # all 8 symmetries of the square, nothing else
    np.testing.assert_array_equal(rows[0], square.ravel())  # input untouched
    # 3D: flips of each axis and the in-plane swap only; the slice axis (0) stays the slice axis.
    cube = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    out, _ = random_mirror_pairs(np.tile(cube.ravel(), (400, 1)), np.zeros((400, 27)), (3, 3, 3),
                                 np.random.default_rng(1))
    assert len({tuple(r) for r in out}) == 16
    for r in out:
        assert sorted(r.reshape(3, 3, 3)[1].ravel()) == sorted(cube[1].ravel())


def test_mirror_augment_keeps_labels_and_draws_nothing_when_off(phantom_pair):
    ct, mr, _ = phantom_pair
    plain = make_pairs(ct, mr, 30, np.random.default_rng(5), negatives_per_positive=2)
    again = make_pairs(ct, mr, 30, np.random.default_rng(5), negatives_per_positive=2, mirror=False)
    np.testing.assert_array_equal(plain.mr, again.mr)
    mirrored = make_pairs(ct, mr, 30, np.random.default_rng(5), negatives_per_positive=2, mirror=True)
    np.testing.assert_array_equal(plain.labels, mirrored.labels)
    assert np.any(plain.ct != mirrored.ct)
    np.testing.assert_allclose(np.sort(plain.ct, axis=1), np.sort(mirrored.ct, axis=1))  # same voxels, moved


def test_percentile_ranks_by_hand():
    from DeepSimilarityLib.ctmr.cascade import percentile_ranks

    ranks = percentile_ranks(np.array([[0.5, -3.0], [0.5, 10.0]]))
    # Sorted: -3 (1st), the two 0.5 tie and share the higher rank (3rd), 10 (4th); divided by 4 values.
    np.testing.assert_allclose(ranks, [[0.75, 0.25], [0.75, 1.0]])


def test_rank_sum_ignores_scales_and_favours_a_position_high_on_both(phantom_pair):
    from DeepSimilarityLib.ctmr.cascade import RankSumPatchMetric

    class Fixed:
        def __init__(self, scores):
            self.scores = np.asarray(scores, np.float32)

        def score_map(self, ct_patch, mr_region):
            return self.scores

    first = [[9.0, 1.0, 0.0], [2.0, 8.0, 3.0], [4.0, 5.0, 6.0]]  # best at (0, 0), (1, 1) second
    second = [[0.0, 0.1, 0.2], [0.3, 0.8, 0.4], [0.5, 0.6, 0.7]]  # best at (1, 1)
    patch, region = np.zeros((3, 3)), np.zeros((5, 5))
    summed = RankSumPatchMetric(Fixed(first), Fixed(second)).score_map(patch, region)
    assert np.unravel_index(np.argmax(summed), summed.shape) == (1, 1)
    # Rescaling one metric's scores (a monotone change) leaves the combined map as it was.
    rescaled = RankSumPatchMetric(Fixed(np.asarray(first) * 1000 - 5), Fixed(second)).score_map(patch, region)
    np.testing.assert_array_equal(summed, rescaled)
    # With NMI twice, the rank sum has its peak where NMI has it (on a registered phantom patch: the centre).
    ct, mr, _ = phantom_pair
    centre = tuple(int(v) for v in np.argwhere(skull_edge_mask(ct, near=0))[0])
    nmi_only = rank_errors([(ct, mr, centre)], get_metric("nmi"))
    both = rank_errors([(ct, mr, centre)], RankSumPatchMetric(get_metric("nmi"), get_metric("nmi")))
    np.testing.assert_array_equal(nmi_only, both)
    with pytest.raises(InputError):
        RankSumPatchMetric(get_metric("nmi"))


def test_leave_patient_out_trains_on_extra_sequence_of_training_patients_only(monkeypatch):
    """``extra_train`` slices (e.g. CT/T2) join the training set of every fold, never the held-out patient's."""
    from DeepSimilarityLib.ctmr import experiment

    ph = experiment.phantom_slices(count=4)
    t1, t2 = {"A": ph[:1], "B": ph[1:2]}, {"A": ph[2:3], "B": ph[3:4]}
    trained_on = []
    monkeypatch.setattr(experiment, "pairs_from_slices", lambda slices, **kw: trained_on.append(slices))
    # no variants and no baselines: each fold only draws its training pairs and test patches
    result = experiment.leave_patient_out(t1, n_test=4, n_pairs=10, variants=(), baselines=(), extra_train=t2)
    assert result["folds"] == ["A", "B"]
    fold_a, fold_b = ([id(s) for s in slices] for slices in trained_on)
    assert fold_a == [id(t1["B"][0]), id(t2["B"][0])]
    assert fold_b == [id(t1["A"][0]), id(t2["A"][0])]


def test_get_metric_joins_names_into_a_rank_sum():
    from DeepSimilarityLib.ctmr.cascade import RankSumPatchMetric, percentile_ranks
    from DeepSimilarityLib.errors import InputError

    metric = get_metric("nmi+lcc")
    assert isinstance(metric, RankSumPatchMetric) and metric.name == "nmi+lcc"
    rng = np.random.default_rng(0)
    patch, region = rng.random((7, 7)), rng.random((15, 15))
    expected = percentile_ranks(get_metric("nmi").score_map(patch, region)) + \
        percentile_ranks(get_metric("lcc").score_map(patch, region))
    np.testing.assert_allclose(metric.score_map(patch, region), expected)
    with pytest.raises(InputError, match="apply to one metric"):
        get_metric("nmi+lcc", bins=16)
    with pytest.raises(InputError, match="unknown metric 'xyz'"):
        get_metric("nmi+xyz")


def test_training_slices_of_two_mr_sequences(isolated_cache, monkeypatch):
    """``--mr T1,T2``: one patient's kept CT/T1 and CT/T2 pairs, counted apart in the description."""
    from conftest import require_data

    require_data("ct-mr-slices")
    from DeepSimilarityLib.ctmr.experiment import training_slices
    from DeepSimilarityLib.datasets import CTMRSlices

    slice_ids = CTMRSlices.slice_ids
    monkeypatch.setattr(CTMRSlices, "slice_ids", lambda self, p: slice_ids(self, p)[3:6])  # 6 registrations, not 18

    t1, _ = training_slices(patients="Patient_04", mr="T1")
    both, source = training_slices(patients="Patient_04", mr="T1,T2")
    assert len(both) > len(t1) and all(a is b or np.array_equal(a[1], b[1]) for a, b in zip(t1, both))
    assert f"{len(t1)} T1 + {len(both) - len(t1)} T2 slices" in source


def test_select_slices_splits_tested_pairs_from_the_looser_training_band(monkeypatch):
    """``select_slices(limit)`` and ``select_slices(train_limit, above=limit)`` never share a pair and miss none up to train_limit."""
    from DeepSimilarityLib import registration_qc
    from DeepSimilarityLib.ctmr.experiment import select_slices

    # each pair carries its made-up outline distance in the CT's first voxel
    monkeypatch.setattr(registration_qc, "outline_distance", lambda ct, mr: float(ct[0, 0]))
    pairs = {"A": [(np.full((4, 4), d, np.float32), np.zeros((4, 4), np.float32)) for d in (1, 3, 4, 5, 9)]}
    tested = select_slices(pairs, 3.0, downsample=1)
    band = select_slices(pairs, 5.0, downsample=1, above=3.0)
    assert [float(ct[0, 0]) for ct, _ in tested["A"]] == [1, 3]
    assert [float(ct[0, 0]) for ct, _ in band["A"]] == [4, 5]
    assert [float(ct[0, 0]) for ct, _ in select_slices(pairs, None, downsample=1, above=3.0)["A"]] == [4, 5, 9]
