"""Training a registration net on the user's own images (registration/user_pairs, `train registration --images`)."""

import numpy as np
import pytest
import torch

from conftest import require_data
from DeepSimilarityLib.cli import main
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import Volume, read_image, write_image
from DeepSimilarityLib.phantom import make_head_phantom
from DeepSimilarityLib.registration.apply import network_grid, to_network_grid
from DeepSimilarityLib.registration.feature_net import FeatureNet, load_feature_net, save_feature_net
from DeepSimilarityLib.registration.network import load_registration_net
from DeepSimilarityLib.registration.experiment import TRAINING_INTENSITY
from DeepSimilarityLib.registration.user_pairs import feature_training_volume, renumbered_labels, user_training_set

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slices():
    """Three 2D heads: a reference, the same head moved by (6, -4) mm, and another head on a finer grid."""
    a = make_head_phantom((96, 80), spacing=(2.4, 2.0), noise=0.0).mr
    moved = Volume(a.array, a.spacing, tuple(np.add(a.origin, (6.0, -4.0))), a.direction)
    other = make_head_phantom((120, 96), spacing=(2.0, 1.6), seed=1, noise=0.0).mr
    return [a, moved, other]


def test_training_set_is_what_registration_will_see(slices):
    images, pairs, shape = user_training_set(slices, ["a", "moved", "other"], 2, pre_align="rigid")
    assert shape == [48, 40] and images.shape == (3, 1, 48, 40) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert sorted(map(tuple, pairs.tolist())) == [(m, f) for m in range(3) for f in range(3) if m != f]
    # The reference goes through the very function register_deformable uses for its fixed image.
    ref = to_network_grid(slices[0], network_grid(slices[0], shape), TRAINING_INTENSITY, name="fixed")
    assert np.array_equal(images[0, 0].numpy(), ref)
    # The moved copy is pre-aligned back onto the reference; without pre-alignment it is not.
    unaligned, _, _ = user_training_set(slices, ["a", "moved", "other"], 2, pre_align=None)
    aligned_error = float((images[1] - images[0]).abs().mean())
    assert aligned_error < 0.01 < float((unaligned[1] - unaligned[0]).abs().mean())


def test_training_set_bad_input(slices):
    with pytest.raises(InputError, match="at least two"):
        user_training_set(slices[:1], ["a"], 2)
    head3d = make_head_phantom((32, 32, 32), noise=0.0).mr
    with pytest.raises(InputError, match="vol.nii"):
        user_training_set([slices[0], head3d], ["a.nii", "vol.nii"], 2)
    far = Volume(slices[0].array, slices[0].spacing, (5000.0, 0.0), slices[0].direction)
    with pytest.raises(InputError):
        user_training_set([slices[0], far], ["a", "far"], 2, pre_align=None)
    flat = Volume(np.zeros((96, 80), np.float32), slices[0].spacing)
    with pytest.raises(InputError, match="flat"):
        user_training_set([slices[0], flat], ["a", "flat"], 2, pre_align=None)
    with pytest.raises(InputError, match="--downsample"):
        user_training_set(slices, ["a", "b", "c"], 0)


def test_cli_trains_on_images_and_the_net_registers_them(tmp_path, slices, capsys):
    paths = [str(tmp_path / f"{n}.nii.gz") for n in ("a", "moved", "other")]
    for v, p in zip(slices, paths):
        write_image(v, p)
    out = tmp_path / "user.pt"
    assert main(["train", "registration", "--loss", "ncc", "--images", *paths, "--epochs", "3",
                 "--pre-align", "rigid", "--out", str(out)]) == 0
    net = load_registration_net(out)
    assert net.metadata["grid"] == [48, 40] and net.metadata["downsample"] == 2
    assert "6 directed pairs of 3 user images" in net.metadata["data"] and net.metadata["batch_size"] == 8
    assert main(["register", "--method", "deformable", "--fixed", paths[0], "--moving", paths[2], "--net", str(out),
                 "--out-warped", str(tmp_path / "w.nii.gz")]) == 0
    assert read_image(tmp_path / "w.nii.gz").array.shape == (96, 80)
    vel = tmp_path / "velocity.pt"  # VoxelMorph's convention: the regulariser on the velocity field
    assert main(["train", "registration", "--loss", "ncc", "--images", *paths, "--epochs", "1", "--velocity",
                 "--regularise", "velocity", "--out", str(vel)]) == 0
    vel_net = load_registration_net(vel)
    assert vel_net.config["velocity"] and vel_net.metadata["regulariser"] == "diffusion of the velocity field"
    assert net.metadata["regulariser"] == "diffusion"
    capsys.readouterr()
    feat2d = tmp_path / "feat2d.pt"
    save_feature_net(FeatureNet(2, "seg", 3), feat2d)
    head3d = [make_head_phantom((32, 32, 32), seed=s, noise=0.0).mr for s in (0, 1)]
    vols = [str(tmp_path / f"v{s}.nii.gz") for s in (0, 1)]
    for v, p in zip(head3d, vols):
        write_image(v, p)
    never = str(tmp_path / "never.pt")
    cases = [(["--loss", "ncc-sup", "--images", *paths], "label"),
             (["--loss", "mse", "--downsample", "2"], "needs --images"),
             (["--loss", "mse", "--images", *paths, "--regularise", "velocity"], "--regularise"),
             (["--loss", "mse", "--images", paths[0]], "at least two"),
             (["--loss", "mse", "--images", paths[0], str(tmp_path / "missing.nii.gz")], "missing.nii.gz"),
             (["--loss", "deepsim-seg", "--features", str(feat2d), "--images", *vols], "2D feature net")]
    for argv, text in cases:
        assert main(["train", "registration", *argv, "--out", never]) == 2, argv
        assert text in capsys.readouterr().err, argv
    assert not (tmp_path / "never.pt").exists()


@pytest.fixture(scope="module")
def head_volumes():
    """Two 3D heads with label maps; the second on another grid."""
    return [make_head_phantom((40, 36, 32), spacing=(3.0, 3.0, 3.0), noise=0.0),
            make_head_phantom((44, 40, 32), spacing=(2.8, 2.8, 3.2), seed=1, noise=0.0)]


def test_feature_volume_is_on_the_registration_grid(head_volumes):
    head = head_volumes[0]
    x, y = feature_training_volume(head.mr, head.labels, 2)
    images, _, shape = user_training_set([head.mr, head_volumes[1].mr], ["a", "b"], 2, pre_align=None)
    assert shape == [24, 24, 16] and x.shape == (1, 1, 24, 24, 16) and y.shape == (1, 24, 24, 16)
    assert torch.equal(x[0], images[0])  # the very array registration training reads
    present = np.unique(head.labels.array)
    assert sorted(np.unique(y.numpy())) == list(range(len(present)))  # renumbered 0..K, nothing lost
    x_only, none = feature_training_volume(head.mr, None, 2)
    assert none is None and torch.equal(x_only, x)
    with pytest.raises(InputError, match="lab.nii"):
        feature_training_volume(head.mr, Volume(np.zeros((40, 36, 32), np.uint8), head.mr.spacing), 2,
                                labels_name="lab.nii")
    with pytest.raises(InputError, match="lab.nii"):
        feature_training_volume(head.mr, Volume(head.labels.array[0], (3.0, 3.0)), 2, labels_name="lab.nii")


def test_renumbered_labels_keeps_order_and_background():
    assert renumbered_labels(np.array([0, 41, 2, 1024])).tolist() == [0, 2, 1, 3]
    assert renumbered_labels(np.array([5, 7, 5])).tolist() == [1, 2, 1]  # no background: ids start at 1


def test_cli_3d_features_then_3d_deepsim_registration(tmp_path, head_volumes, capsys):
    paths = {}
    for i, head in enumerate(head_volumes):
        for what in ("mr", "labels"):
            paths[what, i] = str(tmp_path / f"{what}{i}.nii.gz")
            write_image(getattr(head, what), paths[what, i])
    feat = tmp_path / "feat3d.pt"
    assert main(["train", "features", "--mode", "seg", "--dims", "3", "--image", paths["mr", 0],
                 "--labels", paths["labels", 0], "--downsample", "2", "--epochs", "3", "--out", str(feat)]) == 0
    net = load_feature_net(feat)
    assert net.dims == 3 and net.metadata["grid"] == [24, 24, 16] and net.metadata["downsample"] == 2
    assert net.metadata["epochs"] == 3 and net.metadata["batch_size"] == 1
    out = tmp_path / "reg3d.pt"
    assert main(["train", "registration", "--loss", "deepsim-seg", "--features", str(feat), "--images",
                 paths["mr", 0], paths["mr", 1], "--downsample", "2", "--epochs", "2", "--pre-align", "none",
                 "--out", str(out)]) == 0
    assert load_registration_net(out).metadata["grid"] == [24, 24, 16]
    # Two feature nets (another seed): the loss averages over both, and the metadata names both files.
    feat_b = tmp_path / "feat3d_b.pt"
    assert main(["train", "features", "--mode", "seg", "--dims", "3", "--image", paths["mr", 0],
                 "--labels", paths["labels", 0], "--downsample", "2", "--epochs", "2", "--seed", "1",
                 "--out", str(feat_b)]) == 0
    both = tmp_path / "reg3d_both.pt"
    assert main(["train", "registration", "--loss", "deepsim-seg", "--features", str(feat), str(feat_b),
                 "--images", paths["mr", 0], paths["mr", 1], "--downsample", "2", "--epochs", "1",
                 "--pre-align", "none", "--out", str(both)]) == 0
    assert load_registration_net(both).metadata["features"] == [str(feat), str(feat_b)]
    assert load_registration_net(out).metadata["features"] == str(feat)  # one file: a plain path, as before
    capsys.readouterr()
    ae = tmp_path / "ae3d.pt"
    assert main(["train", "features", "--mode", "ae", "--dims", "3", "--image", paths["mr", 0], "--downsample", "2",
                 "--epochs", "1", "--out", str(ae)]) == 0
    capsys.readouterr()
    assert main(["train", "registration", "--loss", "deepsim-seg", "--features", str(feat), str(ae), "--images",
                 paths["mr", 0], paths["mr", 1], "--downsample", "2", "--epochs", "1", "--pre-align", "none",
                 "--out", str(tmp_path / "never_mixed.pt")]) == 2
    assert "--features: need one or more feature nets of the same" in capsys.readouterr().err
    assert not (tmp_path / "never_mixed.pt").exists()
    never = str(tmp_path / "never.pt")
    slice2d = str(tmp_path / "slice.nii.gz")
    write_image(Volume(head_volumes[0].mr.array[10], (3.0, 3.0)), slice2d)
    cases = [(["--dims", "3", "--image", slice2d, "--mode", "ae"], "slice.nii.gz"),
             (["--downsample", "2", "--mode", "ae"], "--dims 3"),
             (["--dims", "3", "--image", paths["mr", 0], "--mode", "seg"], "label map"),
             (["--dims", "3", "--image", paths["mr", 0], "--labels", slice2d, "--mode", "seg"], "slice.nii.gz"),
             (["--dims", "3", "--epochs", "0", "--mode", "ae"], "--epochs")]
    for argv, text in cases:
        assert main(["train", "features", *argv, "--out", never]) == 2, argv
        assert text in capsys.readouterr().err, argv
    assert not (tmp_path / "never.pt").exists()


def test_cli_3d_features_default_is_the_benchmarks_vxm_volume(tmp_path):
    require_data("brain-mr/oasis")
    out = tmp_path / "vxm3d.pt"
    assert main(["train", "features", "--mode", "seg", "--dims", "3", "--epochs", "1", "--out", str(out)]) == 0
    net = load_feature_net(out)
    # The grid and label count of the 3D benchmark's feature nets (seg35 + background).
    assert net.dims == 3 and net.metadata["grid"] == [56, 48, 40] and net.config["out_channels"] == 36
    assert net.metadata["lr"] == 3e-3 and "vxm" in net.metadata["data"]
