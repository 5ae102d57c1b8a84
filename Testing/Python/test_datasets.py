"""Tests of the dataset loaders (DeepSimilarityLib.datasets).

Tests on real data skip when ``../shared/data`` (or ``$DEEPSIM_DATA``) lacks
the folder; only two CT/MR slices are registered, to keep the run short.
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

from DeepSimilarityLib.datasets import (CHESTXRAY14_LABELS, CTMRSlices, check_patient_split, label_ids,
                                        load_ants_slices, load_fundus, load_multilabel_csv, load_nih1000,
                                        load_oasis, load_pneumoniamnist, load_visible_male, load_vxm_scan,
                                        oasis_subjects, seg35_to_freesurfer, split_by_patient,
                                        split_indices_by_patient, vxm_seg_as_seg35)
from DeepSimilarityLib.datasets._common import resize_area
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import Volume, normalise_intensity, read_image, resample_to, write_image
from DeepSimilarityLib.intensity_metrics import mutual_information
from DeepSimilarityLib.paths import data_root, has_shared_data


def needs(sub: str):
    """Skip unless the shared data folder ``sub`` exists."""
    return pytest.mark.skipif(not has_shared_data(sub),
                              reason=f"shared data folder {data_root() / sub} not found (set DEEPSIM_DATA)")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache, so results never depend on the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSIM_CACHE", str(cache))
    return cache


def dice(a, b, label):
    x, y = a == label, b == label
    return 2.0 * np.sum(x & y) / max(np.sum(x) + np.sum(y), 1)


# ---------------------------------------------------------------- splits (no data)

def test_split_by_patient_is_disjoint_and_deterministic():
    ids = [f"P{i:02d}" for i in range(20) for _ in range(3)]  # 3 images per patient
    train, test = split_by_patient(ids, test_fraction=0.25, seed=3)
    assert len(test) == 5 and len(train) == 15
    assert set(train) | set(test) == set(ids)
    check_patient_split(train, test)
    assert split_by_patient(list(reversed(ids)), test_fraction=0.25, seed=3) == (train, test)
    assert split_by_patient(ids, n_test=5, seed=4) != (train, test)
    tr_idx, te_idx = split_indices_by_patient(ids, n_test=5, seed=3)
    assert len(tr_idx) + len(te_idx) == len(ids)
    check_patient_split([ids[i] for i in tr_idx], [ids[i] for i in te_idx])
    assert {ids[i] for i in te_idx} == set(test)


def test_split_errors():
    with pytest.raises(InputError, match="split"):
        check_patient_split(["a", "b"], ["b", "c"])
    with pytest.raises(InputError):
        split_by_patient(["a", "a"], n_test=1)
    with pytest.raises(InputError):
        split_by_patient(["a", "b", "c"], test_fraction=0.5, n_test=1)


def test_resize_area_keeps_means():
    a = np.random.default_rng(0).random((343, 512, 3)).astype(np.float32)
    r = resize_area(a, (128, 128))
    assert r.shape == (128, 128, 3) and r.dtype == np.float32
    np.testing.assert_allclose(r.mean((0, 1)), a.mean((0, 1)), atol=2e-3)
    np.testing.assert_allclose(resize_area(np.full((30, 40), 0.5), (7, 9)), 0.5, atol=1e-6)


def test_cache_key_follows_content_not_modification_time(tmp_path):
    from DeepSimilarityLib.datasets._common import source_key

    a, b = tmp_path / "one" / "001.png", tmp_path / "two" / "001.png"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"same bytes")
    os.utime(b, (1_000_000, 1_000_000))  # a copy with another mtime keeps the key
    assert source_key("v1", [a]) == source_key("v1", [b])
    b.write_bytes(b"same bytez")  # same size, other content
    assert source_key("v1", [a]) != source_key("v1", [b]) and source_key("v1", [a]) != source_key("v2", [a])


def test_load_multilabel_csv_generic(tmp_path):
    rows = [("a.png", "Cat|Dog", "p1"), ("b.png", "None", "p1"), ("c.png", "Dog", "p2")]
    (tmp_path / "img").mkdir()
    for i, (name, _, _) in enumerate(rows):
        write_image(Volume(np.full((8, 6), 50 * i, dtype=np.uint8)), tmp_path / "img" / name)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "tags", "who"])
        w.writerows(rows)
    s = load_multilabel_csv(tmp_path / "img", tmp_path / "labels.csv", "file", "tags", none_label="None",
                            patient_column="who")
    assert s.label_names == ["Cat", "Dog"] and s.labels.tolist() == [[1, 1], [0, 0], [0, 1]]
    assert s.images.shape == (3, 8, 6) and np.isclose(s.images[2].max(), 100 / 255)
    assert s.patient_ids == ["p1", "p1", "p2"] and s.image_ids == ["a.png", "b.png", "c.png"]
    with pytest.raises(InputError, match="not in label_names"):
        load_multilabel_csv(tmp_path / "img", tmp_path / "labels.csv", "file", "tags", none_label="None",
                            label_names=["Cat"])


def test_missing_data_names_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSIM_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="ct-mr-slices"):
        CTMRSlices()
    with pytest.raises(InputError, match="nih1000"):
        load_nih1000()
    with pytest.raises(InputError, match="brain-mr"):
        load_oasis("OASIS_OAS1_0001_MR1")


def test_benchmarks_say_which_data_folder_is_missing(tmp_path, monkeypatch, capsys):
    from DeepSimilarityLib.paths import missing_shared_data

    monkeypatch.setenv("DEEPSIM_DATA", str(tmp_path))
    assert missing_shared_data("brain-mr/oasis")
    assert str(tmp_path / "brain-mr" / "oasis") in capsys.readouterr().err
    (tmp_path / "brain-mr" / "oasis").mkdir(parents=True)
    assert not missing_shared_data("brain-mr/oasis") and capsys.readouterr().err == ""


# ---------------------------------------------------------------- CT/MR slices

@needs("ct-mr-slices")
def test_ct_mr_regions_match_patients_csv():
    d = CTMRSlices()
    with open(d.root / "patients.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert d.patients("head") == sorted(r["patient"] for r in rows if r["region"] == "head")
    assert d.patients("body") == sorted(r["patient"] for r in rows if r["region"] == "body")
    assert len(d.patients("head")) == 7 and len(d.patients("body")) == 7
    assert all(d.region(r["patient"]) == r["region"] for r in rows)
    assert all(len(d.slice_ids(r["patient"])) == int(r["slices"]) for r in rows)
    # patients.csv and the PNG folders hold 309 triplets (the data README says 332).
    assert sum(len(d.slice_ids(p)) for p in d.patients()) == sum(int(r["slices"]) for r in rows) == 309
    with pytest.raises(InputError):
        d.patients("leg")
    with pytest.raises(InputError):
        d.load_pair("Patient_99", 1)


@needs("ct-mr-slices")
def test_ct_mr_pair_registration_and_cache(private_cache):
    d = CTMRSlices()
    t0 = time.perf_counter()
    pair = d.load_pair("Patient_01", 10, mr="T1")
    t_first = time.perf_counter() - t0
    assert not pair.cached and pair.region == "head" and pair.modality == "T1"
    assert pair.ct.array.shape == pair.mr.array.shape == (512, 512)
    assert pair.ct.same_grid(pair.mr) and pair.mr.array.dtype == np.float32
    assert 0.0 <= pair.mr.array.min() and pair.mr.array.max() <= 1.0 and pair.ct.array.max() == 1.0
    assert pair.metric_after < pair.metric_before  # Mattes MI: lower is better

    # Mutual information of CT against the MR before (identity resampling) and after registration.
    raw = read_image(d.slice_path("Patient_01", 10, "T1"), ndim=2)
    unregistered = resample_to(raw.with_array(normalise_intensity(raw.array)), pair.ct)
    mi_before = mutual_information(pair.ct.array.ravel(), unregistered.array.ravel())
    mi_after = mutual_information(pair.ct.array.ravel(), pair.mr.array.ravel())
    assert mi_after > mi_before + 0.03, (mi_before, mi_after)

    cache_files = list((private_cache / "ct-mr-slices").rglob("*.npz"))
    assert [p.name for p in cache_files] == ["010_T1.npz"]
    t0 = time.perf_counter()
    again = d.load_pair("Patient_01", 10, mr="T1")
    t_second = time.perf_counter() - t0
    assert again.cached and t_second < t_first / 5, (t_first, t_second)
    np.testing.assert_array_equal(again.mr.array, pair.mr.array)
    assert again.transform.GetParameters() == pair.transform.GetParameters()
    assert (again.metric_before, again.metric_after) == (pair.metric_before, pair.metric_after)

    # iter_pairs over the cached slice only (registering every slice takes minutes).
    d.slice_ids = lambda patient: [10]
    pairs = list(d.iter_pairs(["Patient_01"], mr="T1", progress=False))
    assert len(pairs) == 1 and pairs[0].cached

    # A damaged cache file is a miss and is recomputed, never an error; the registration is
    # single-threaded with seeded sampling, so the recomputed pair is identical.
    cache_files[0].write_bytes(b"not a zip file")
    redone = d.load_pair("Patient_01", 10, mr="T1")
    assert not redone.cached and d.load_pair("Patient_01", 10, mr="T1").cached
    assert redone.transform.GetParameters() == pair.transform.GetParameters()
    np.testing.assert_array_equal(redone.mr.array, pair.mr.array)


@needs("ct-mr-slices")
def test_ct_mr_no_cache_writes_nothing(private_cache):
    d = CTMRSlices(cache=False)
    with pytest.raises(InputError, match="mr"):
        d.load_pair("Patient_01", 10, mr="PD")
    assert not (private_cache / "ct-mr-slices").exists()


# ---------------------------------------------------------------- Visible Male

@needs("head-ct-mr-3d")
def test_visible_male_geometry_matches_files():
    ct, mr = load_visible_male()
    for vol, name in ((ct, "vm_head_ct.mha"), (mr, "vm_head_mri.mha")):
        ref = sitk.ReadImage(str(data_root() / "head-ct-mr-3d" / name))
        assert vol.size == ref.GetSize()
        np.testing.assert_allclose(vol.spacing, ref.GetSpacing())
        np.testing.assert_allclose(vol.origin, ref.GetOrigin())
        np.testing.assert_allclose(vol.direction.ravel(), ref.GetDirection())
        np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref).astype(np.float32))
    assert ct.array.shape == (8, 512, 512) and mr.array.shape == (33, 256, 256)


# ---------------------------------------------------------------- brain MR

@needs("brain-mr/oasis")
def test_oasis_shapes_and_labels():
    assert oasis_subjects() == ["OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1"]
    s3 = load_oasis("OASIS_OAS1_0001_MR1", dim=3)
    assert s3.image.array.shape == s3.seg.array.shape == s3.seg4.array.shape == (224, 192, 160)
    assert s3.seg.array.dtype == np.uint8 and label_ids(s3.seg) == list(range(1, 36))
    assert label_ids(s3.seg4) == [1, 2, 3, 4]
    s2 = load_oasis("OASIS_OAS1_0001_MR1", dim=2)
    assert s2.image.array.shape == s2.seg.array.shape == (192, 160)
    assert max(label_ids(s2.seg)) <= 24 and len(label_ids(s2.seg)) >= 20
    np.testing.assert_array_equal(s2.image.array, s3.image.array[109])  # the documented slice
    with pytest.raises(InputError):
        load_oasis("OASIS_OAS1_0009_MR1")


@needs("brain-mr/oasis")
def test_vxm_scan_in_oasis_space_and_label_mapping():
    vol, seg = load_vxm_scan()
    assert vol.array.shape == seg.array.shape == (224, 192, 160)
    assert vol.array.dtype == np.float32 and 0.0 <= vol.array.min() and vol.array.max() <= 1.0
    ids = label_ids(seg)
    assert len(ids) == 45 and ids[:3] == [2, 3, 4]  # 46 labels counting background
    oasis = load_oasis("OASIS_OAS1_0001_MR1")
    assert vol.same_grid(oasis.image)
    corr = np.corrcoef(vol.array.ravel(), oasis.image.array.ravel())[0, 1]
    corr_flip_y = np.corrcoef(vol.array[:, ::-1].ravel(), oasis.image.array.ravel())[0, 1]
    assert corr > 0.8 and corr > corr_flip_y + 0.1

    table = seg35_to_freesurfer()
    assert len(table) == 35 and table[1] == (2, "Left-Cerebral-White-Matter")
    mapped = vxm_seg_as_seg35(seg)
    assert mapped.array.dtype == np.uint8 and mapped.same_grid(seg)
    assert label_ids(mapped) == list(range(1, 36))
    assert np.count_nonzero(mapped.array) > 0.99 * np.count_nonzero(seg.array)
    assert np.all(mapped.array[seg.array == 24] == 0)  # CSF has no seg35 id
    # Large structures: cerebral WM and cortex, lateral ventricles, cerebellum, brain stem.
    large = [1, 2, 3, 5, 6, 13, 20, 21, 22, 24, 25]
    d = [dice(mapped.array, oasis.seg.array, k) for k in large]
    d_flip = [dice(mapped.array[:, :, ::-1], oasis.seg.array, k) for k in large]
    assert np.mean(d) > 0.5 and min(d) > 0.35 and np.mean(d_flip) < 0.2, (d, d_flip)


@needs("brain-mr/ants-slices")
def test_ants_slices():
    slices = load_ants_slices()
    assert sorted(slices) == ["ants_r16", "ants_r27", "ants_r30", "ants_r62", "ants_r64", "ants_r85"]
    assert all(v.array.shape == (256, 256) and v.ndim == 2 for v in slices.values())


# ---------------------------------------------------------------- chest X-rays

@needs("chest-xray/nih1000")
def test_nih1000_labels():
    s = load_nih1000()
    assert s.images.shape == (1000, 64, 64) and s.images.dtype == np.float32
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert s.labels.shape == (1000, 14) and s.labels.dtype == np.uint8
    assert s.label_names == list(CHESTXRAY14_LABELS)
    assert int(np.sum(s.labels.sum(1) >= 2)) == 213
    with open(data_root() / "chest-xray/nih1000/labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert int(np.sum(s.labels.sum(1) == 0)) == sum(r["finding_labels"] == "No Finding" for r in rows)
    assert s.image_ids[:2] == ["00000001_000.png", "00000001_001.png"]
    assert len(set(s.patient_ids)) == 264
    train, test = split_by_patient(s.patient_ids, test_fraction=0.2, seed=0)
    check_patient_split(train, test)


@needs("chest-xray/pneumoniamnist.npz")
def test_pneumoniamnist():
    for split, n in (("train", 2428), ("val", 270), ("test", 468)):
        x, y = load_pneumoniamnist(split)
        assert x.shape == (n, 28, 28) and y.shape == (n,) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == {0, 1}
    with pytest.raises(InputError):
        load_pneumoniamnist("dev")


# ---------------------------------------------------------------- fundus

@needs("fundus")
def test_fundus_drops_duplicate_patient(private_cache):
    t0 = time.perf_counter()
    f = load_fundus(size=(64, 64))
    t_first = time.perf_counter() - t0
    assert f.images.shape == (598, 64, 64, 3) and f.images.dtype == np.float32
    assert 0.0 <= f.images.min() and f.images.max() <= 1.0
    assert "Patient300" not in f.patient_ids and f.patient_ids.count("Patient299") == 2
    assert np.bincount(f.grades).tolist() == [276, 99, 168, 32, 23]  # README counts, less Patient300 (grade 3)
    assert set(f.eyes) == {"L", "R"}
    t0 = time.perf_counter()
    g = load_fundus(size=(64, 64))
    assert time.perf_counter() - t0 < t_first / 3
    np.testing.assert_array_equal(f.images, g.images)
