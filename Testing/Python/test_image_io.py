import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import (Volume, check_overlap, normalise_intensity, read_image, resample_to,
                                        write_image)
from conftest import require_data


def oblique_volume():
    rng = np.random.default_rng(0)
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    return Volume(rng.normal(size=(5, 6, 7)).astype(np.float32), (0.7, 0.8, 2.5), (-12.0, 30.5, 4.0), direction)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path, ext):
    v = oblique_volume()
    path = write_image(v, tmp_path / f"v{ext}")
    back = read_image(path)
    assert back.same_grid(v)
    np.testing.assert_allclose(back.array, v.array, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [f"v{ext}"], "temporary files left behind"


def test_dicom_series_round_trip(tmp_path):
    v = oblique_volume()
    v.array = np.round(v.array * 100).astype(np.int16)
    write_image(v, tmp_path / "series")
    back = read_image(tmp_path / "series", dtype=None)
    assert back.same_grid(v, tol=1e-3)
    np.testing.assert_array_equal(back.array, v.array)


def test_png_slice_round_trip_and_colour_reduction(tmp_path):
    a = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    write_image(Volume(a), tmp_path / "s.png")
    np.testing.assert_array_equal(read_image(tmp_path / "s.png", ndim=2, dtype=None).array, a)
    rgb = Volume(np.stack([a, a, a], -1), is_vector=True)
    sitk.WriteImage(rgb.to_sitk(), str(tmp_path / "rgb.png"))
    grey = read_image(tmp_path / "rgb.png", ndim=2)
    np.testing.assert_array_equal(grey.array, a.astype(np.float32))
    kept = read_image(tmp_path / "rgb.png", color="keep", dtype=None)
    assert kept.array.shape == (20, 30, 3) and kept.ndim == 2


def test_visible_male_round_trip_keeps_geometry(tmp_path):
    folder = require_data("head-ct-mr-3d")
    for name in ("vm_head_ct.mha", "vm_head_mri.mha"):
        original = sitk.ReadImage(str(folder / name))
        v = read_image(folder / name, ndim=3, dtype=None)
        assert v.spacing == pytest.approx(original.GetSpacing())
        assert v.origin == pytest.approx(original.GetOrigin())
        for ext in (".nii.gz", ".nrrd", ".mha"):
            back = read_image(write_image(v, tmp_path / f"{name}{ext}"), dtype=None)
            assert back.same_grid(v), ext
            np.testing.assert_array_equal(back.array, v.array)


@pytest.mark.parametrize("content,message", [
    (None, "file not found"),
    (b"", "file is empty"),
    (b"\x89PNG\r\n\x1a\n truncated", "cannot read image"),
    (b"not an image at all", "cannot read image"),
])
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_wrong_dimension_and_nan_are_refused(tmp_path):
    write_image(Volume(np.zeros((4, 4), np.float32)), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="expected a 3D image"):
        read_image(tmp_path / "flat.nii.gz", ndim=3)
    a = np.ones((3, 4, 5), np.float32)
    a[1, 2, 3] = np.nan
    write_image(Volume(a), tmp_path / "nan.mha")  # ITK's NIfTI reader drops NaN; MetaImage keeps it
    with pytest.raises(InputError, match="1 NaN or infinite"):
        read_image(tmp_path / "nan.mha")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match="cannot write"):
        write_image(oblique_volume(), tmp_path / "v.xyz")
    with pytest.raises(InputError, match="2D slices"):
        write_image(oblique_volume(), tmp_path / "v.png")
    with pytest.raises(InputError, match="does not exist"):
        write_image(oblique_volume(), tmp_path / "missing" / "v.nii.gz")
    assert os.listdir(tmp_path) == []


def test_normalise_intensity_is_robust_and_never_nan():
    a = np.concatenate([np.linspace(0, 100, 1000), [1e6]])
    n = normalise_intensity(a)
    assert n.min() == 0.0 and n.max() == 1.0
    assert n[500] == pytest.approx(0.5, abs=0.02), "one outlier must not squash the range"
    assert np.all(normalise_intensity(np.full(10, 7.0)) == 0.0)


def test_index_physical_round_trip_and_resampling():
    v = oblique_volume()
    idx = np.array([1.5, 2.0, 3.25])
    np.testing.assert_allclose(v.physical_to_index(v.index_to_physical(idx)), idx)
    same = resample_to(v, v)
    np.testing.assert_allclose(same.array, v.array, atol=1e-5)
    far = Volume(np.zeros((5, 6, 7), np.float32), v.spacing, (1000.0, 1000.0, 1000.0), v.direction)
    with pytest.raises(InputError, match="do not overlap"):
        check_overlap(v, far)


def test_atomic_output_keeps_old_file_on_error_and_gives_normal_permissions(tmp_path):
    from DeepSimilarityLib.atomic import atomic_output

    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_output(target) as tmp:
        open(tmp, "w").write("new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask


def test_result_tables_are_written_atomically(tmp_path, monkeypatch):
    """write_text / write_json (every benchmark's tables) leave the old file whole when the write fails."""
    from DeepSimilarityLib.cli import common

    table = tmp_path / "r.md"
    assert common.write_text("| a |\n", table) == table and table.read_text() == "| a |\n"

    def half_then_fail(self, text, *a, **k):
        with open(self, "w") as f:
            f.write(text[:2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError):
        common.write_text("| b |\n", table)
    monkeypatch.undo()
    assert table.read_text() == "| a |\n" and os.listdir(tmp_path) == ["r.md"]
