"""Registering volumes with a network (geometry, bad input), the command line, the brain-slice data and weights."""

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepSimilarityLib.cli import main
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import Volume, read_image, resample_to, write_image
from DeepSimilarityLib.paths import weights_dir
from DeepSimilarityLib.phantom import make_head_phantom
from DeepSimilarityLib.registration import RegistrationNet, save_registration_net
from DeepSimilarityLib.registration.apply import network_grid, register_deformable, to_sitk_transform

from conftest import require_data

torch.set_num_threads(1)


def zero_net(dims, grid=None):
    """A registration net whose displacement is exactly zero: the result is the affine part alone."""
    net = RegistrationNet(dims)
    torch.nn.init.zeros_(net.head.weight)
    net.metadata = {"grid": grid} if grid else {}
    return net.eval()


@pytest.fixture(scope="module")
def slice_pair():
    mr = make_head_phantom((96, 80), spacing=(2.4, 2.0), noise=0.0).mr
    shifted = Volume(mr.array, mr.spacing, tuple(np.add(mr.origin, (5.0, -3.0))), mr.direction)
    return mr, shifted


def test_network_grid_covers_the_fixed_field_of_view(slice_pair):
    fixed, _ = slice_pair
    grid = network_grid(fixed, (48, 40))
    assert grid.spacing == pytest.approx((4.8, 4.0))
    # voxel edges coincide: first edge of both grids at the same physical point
    assert np.allclose(grid.index_to_physical((-0.5, -0.5)), fixed.index_to_physical((-0.5, -0.5)))


def test_translation_comes_back_as_a_physical_displacement(slice_pair):
    fixed, moving = slice_pair
    # moving content sits 5 mm further in x and 3 mm less in y: T(p) = p + (5, -3) LPS
    result = register_deformable(fixed, moving, zero_net(2, [48, 40]), affine="rigid")
    field = result.displacement
    assert field.is_vector and field.array.shape == fixed.array.shape + (2,)
    assert field.same_grid(fixed) and result.warped.same_grid(fixed)
    assert np.allclose(field.array.reshape(-1, 2).mean(0), (5.0, -3.0), atol=0.3)
    assert result.folding == 0.0 and np.isfinite(result.warped.array).all()
    head = fixed.array > 0.2
    assert np.abs(result.warped.array - fixed.array)[head].mean() < 0.05 * fixed.array[head].mean()
    ras = register_deformable(fixed, moving, zero_net(2, [48, 40]), affine="rigid", ras=True).displacement
    assert np.allclose(ras.array, -field.array, atol=1e-6)  # 2D: both components flip
    # the ITK transform built from the field maps fixed points to moving points
    t = to_sitk_transform(field)
    p = fixed.index_to_physical((40, 48))
    assert np.allclose(t.TransformPoint(tuple(p)), p + (5.0, -3.0), atol=0.3)


def test_network_displacement_is_converted_to_mm(slice_pair):
    fixed, _ = slice_pair
    net = zero_net(2, [48, 40])
    torch.nn.init.constant_(net.head.bias, 0.0)
    net.head.bias.data[0] = 1.0  # one network voxel along array axis 0 (y): 2 fixed rows = 4.0 mm
    result = register_deformable(fixed, fixed, net, affine=None)
    inner = result.displacement.array[10:-10, 10:-10]
    assert np.allclose(inner[..., 1], 4.0, atol=1e-4) and np.allclose(inner[..., 0], 0.0, atol=1e-4)


def test_3d_volumes_and_identity():
    vol = make_head_phantom((32, 48, 40), noise=0.0).mr
    result = register_deformable(vol, vol, zero_net(3), affine=None)
    assert result.displacement.array.shape == vol.array.shape + (3,)
    assert np.abs(result.displacement.array).max() < 1e-6
    assert np.allclose(result.warped.array, vol.array, atol=1e-4)


def test_bad_input_is_an_input_error(slice_pair):
    fixed, moving = slice_pair
    net = zero_net(2)
    vol3 = make_head_phantom((32, 32, 32), noise=0.0).mr
    with pytest.raises(InputError, match="3D but fixed is 2D"):
        register_deformable(fixed, vol3, net)
    with pytest.raises(InputError, match="zero variance"):
        register_deformable(fixed.with_array(np.ones_like(fixed.array)), moving, net)
    far = Volume(moving.array, moving.spacing, (1000.0, 1000.0))
    with pytest.raises(InputError, match="do not overlap"):
        register_deformable(fixed, far, net, affine=None)
    with pytest.raises(InputError, match="3D network"):
        register_deformable(fixed, moving, zero_net(3))
    with pytest.raises(InputError, match="NaN"):
        register_deformable(fixed.with_array(np.full_like(fixed.array, np.nan)), moving, net)


def test_cli_deformable_register_and_jacobian(tmp_path, slice_pair, capsys):
    fixed, moving = slice_pair
    write_image(fixed, tmp_path / "f.nii.gz")
    write_image(moving, tmp_path / "m.nii.gz")
    net = zero_net(2, [48, 40])
    save_registration_net(net, tmp_path / "net.pt", {"grid": [48, 40]})
    args = ["register", "--method", "deformable", "--fixed", str(tmp_path / "f.nii.gz"), "--moving",
            str(tmp_path / "m.nii.gz"), "--net", str(tmp_path / "net.pt"), "--pre-align", "rigid"]
    assert main(args + ["--out-transform", str(tmp_path / "t.h5"), "--out-field", str(tmp_path / "u.nii.gz"),
                        "--out-warped", str(tmp_path / "w.nii.gz")]) == 0
    field = read_image(tmp_path / "u.nii.gz", color="keep")
    assert field.array.shape == (96, 80, 2) and np.allclose(field.array.reshape(-1, 2).mean(0), (5, -3), atol=0.3)
    t = sitk.ReadTransform(str(tmp_path / "t.h5"))
    p = fixed.index_to_physical((30, 30))
    assert np.allclose(t.TransformPoint(tuple(p)), p + (5.0, -3.0), atol=0.3)
    capsys.readouterr()
    assert main(["jacobian", str(tmp_path / "u.nii.gz"), "--out", str(tmp_path / "det.nii.gz")]) == 0
    assert "folding: 0 of 7680" in capsys.readouterr().out
    assert np.allclose(read_image(tmp_path / "det.nii.gz").array, 1.0, atol=1e-3)
    assert main(["jacobian", str(tmp_path / "t.h5")]) == 0
    # bad input: exit 2, one line, nothing written
    for bad, text in ((["--net", str(tmp_path / "none.pt")], "weights file not found"),
                      (["--out-transform", str(tmp_path / "t.nii.gz")], ".h5")):
        out = tmp_path / "never.nii.gz"
        cmd = args[:-4] + bad + (["--out-warped", str(out)] if "--out-transform" not in bad else [])
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert text in err and err.strip().count("\n") == 0 and not out.exists()
    write_image(make_head_phantom((32, 32, 32), noise=0.0).mr, tmp_path / "v3.nii.gz")
    assert main(args[:5] + ["--moving", str(tmp_path / "v3.nii.gz"), "--out-warped", str(tmp_path / "x.nii.gz")]) == 2
    assert "3D" in capsys.readouterr().err
    assert main(["jacobian", str(tmp_path / "f.nii.gz")]) == 2
    # a one-slice 3D file (as the OASIS 2D slices are stored) is read as 2D for a 2D net
    write_image(Volume(moving.array[None], moving.spacing + (1.0,), moving.origin + (0.0,)), tmp_path / "m1.nii.gz")
    assert main(args[:5] + ["--moving", str(tmp_path / "m1.nii.gz"), "--net", str(tmp_path / "net.pt"),
                            "--out-warped", str(tmp_path / "w1.nii.gz")]) == 0
    assert read_image(tmp_path / "w1.nii.gz").ndim == 2
    assert main(["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                 "--net", "x.pt", "--out-warped", str(tmp_path / "y.nii.gz")]) == 2


def test_cli_train_and_evaluate_bad_input(tmp_path, capsys):
    from DeepSimilarityLib.cli import train_registration as cli
    from DeepSimilarityLib.registration import LOSSES
    from DeepSimilarityLib.registration.losses import CROSS_MODALITY
    from DeepSimilarityLib.registration.train import REGULARISED

    assert cli.LOSS_NAMES == [name for name in LOSSES if name not in CROSS_MODALITY]  # the brain-slice training
    assert cli.REGULARISED == REGULARISED
    out = str(tmp_path / "r.pt")
    cases = [(["train", "registration", "--loss", "mse", "--lambda", "-1", "--out", out], "--lambda"),
             (["train", "registration", "--loss", "mse", "--epochs", "0", "--out", out], "--epochs"),
             (["train", "registration", "--loss", "ncc", "--features", "f.pt", "--out", out], "only the deepsim"),
             (["train", "registration", "--loss", "deepsim-ae", "--out", out], "needs a feature net"),
             (["train", "registration", "--loss", "mse", "--out", str(tmp_path / "no" / "r.pt")], "does not exist"),
             (["evaluate", "registration", "--losses", "mse,ssd"], "unknown"),
             (["evaluate", "registration", "--out-dir", str(tmp_path / "no")], "does not exist")]
    for argv, text in cases:
        assert main(argv) == 2, argv
        assert text in capsys.readouterr().err
    assert not (tmp_path / "r.pt").exists()
    with pytest.raises(SystemExit):
        main(["train", "registration", "--loss", "ssd", "--out", out])


def test_brain_slice_splits_and_affine_floor():
    require_data("brain-mr/oasis")
    from DeepSimilarityLib.registration.data import load_brain_volumes, slice_pairs, split_slices, stack_pairs
    from DeepSimilarityLib.registration.evaluate import mean_dice

    splits = {k: set(split_slices(k)) for k in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert min(abs(x - y) for x in splits[a] for y in splits[b]) >= 2
    assert 109 in splits["test"]
    vols = load_brain_volumes()
    train = slice_pairs(vols, "train", (-1, 0, 1))
    assert all(0 in (p[0], p[2]) for p in train)  # the evaluated pair 1 <-> 2 is never trained on
    _, _, full, index = stack_pairs(vols, slice_pairs(vols, "test"))
    floor = np.mean([mean_dice(full[m], full[f]) for m, f in index.tolist()])
    assert 0.38 < floor < 0.47


def test_shipped_weights_match_the_manifest_and_register_the_oasis_slices():
    manifest = json.loads((weights_dir() / "manifest.json").read_text())
    entries = {m["file"]: m for m in manifest["models"] if m["kind"].startswith("deepsim")}
    if not entries:
        pytest.skip("no DeepSim weights shipped in weights/")
    for name, entry in entries.items():
        data = (weights_dir() / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) < 10_000_000
    require_data("brain-mr/oasis")
    from DeepSimilarityLib.datasets import load_oasis, oasis_subjects
    from DeepSimilarityLib.registration.evaluate import mean_dice

    a, b = (load_oasis(s, 2) for s in oasis_subjects())
    result = register_deformable(a.image, b.image, weights_dir() / "registration_deepsim_seg_2d.pt", affine=None)
    warped = resample_to(b.seg, a.image, to_sitk_transform(result.displacement), interpolation="nearest")
    before, after = mean_dice(b.seg.array, a.seg.array), mean_dice(warped.array, a.seg.array)
    # benchmark at this slice (z = 109, seg35): Dice 0.49 / 0.54, folding 1.7% / 2.1%; mean over test pairs 0.94%
    assert after > before + 0.1 and result.folding < 0.03
