"""The classical reference: SimpleITK B-spline Mattes MI (both settings the 3D benchmark compares)."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import benchmark_script
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


def test_3d_settings_benchmark_scores_every_setting_on_the_pairs(tmp_path, monkeypatch):
    import json
    import types

    from DeepSimilarityLib.registration import experiment3d as e3d

    # Three 3D subjects: one textured ball moved by a voxel or two; label 1 inside the ball.
    rng = np.random.default_rng(1)
    texture = ndimage.gaussian_filter(rng.random((24, 24, 24)), 1.5)
    z, y, x = np.mgrid[:24, :24, :24]
    images, labels = [], []
    for c in (12, 13, 11):
        ball = ((z - c) ** 2 + (y - 12) ** 2 + (x - 12) ** 2) < 49
        images.append((ball * (0.5 + texture)).astype(np.float32))
        labels.append(ball.astype(np.uint8))
    vols = types.SimpleNamespace(images=images, labels=labels, names=["a", "b", "c"])
    monkeypatch.setattr(e3d, "load_brain_volumes", lambda: vols)
    fast = {"one level": dict(mesh=2, shrink=(1,), iterations=20),
            "refined": dict(mesh=2, shrink=(2, 1), mesh_refine=(1, 2), iterations=20)}
    result = e3d.run_bspline_settings_3d(factor=2, pairs=2, settings=fast, log=lambda *_: None)
    assert result["setup"]["pairs"] == ["a -> b", "a -> c"] and result["setup"]["network_grid"] == [12, 12, 12]
    assert len(result["affine_only"]["dice"]) == 2
    for name, r in result["losses"].items():
        assert len(r["dice"]) == len(r["folding"]) == 2 and r["seconds_per_pair"] > 0 and r["lambda"] is None
    assert result["losses"]["refined"]["options"]["mesh_refine"] == [1, 2]
    # The benchmark script writes the table for whatever the run returns.
    script = benchmark_script("eval_bspline_3d")
    monkeypatch.setattr(script, "missing_shared_data", lambda *a: False)
    monkeypatch.setattr(e3d, "run_bspline_settings_3d", lambda pairs: result)
    assert script.main(["--out-dir", str(tmp_path), "--stem", "bs"]) == 0
    assert "| refined |" in (tmp_path / "bs.md").read_text() and (tmp_path / "bs.png").is_file()
    assert json.loads((tmp_path / "bs.json").read_text())["losses"]["one level"]["lambda"] is None
