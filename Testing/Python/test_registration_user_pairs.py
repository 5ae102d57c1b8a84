"""Training a registration net on the user's own images (registration/user_pairs, `train registration --images`)."""

import numpy as np
import pytest
import torch

from DeepSimilarityLib.cli import main
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.image_io import Volume, read_image, write_image
from DeepSimilarityLib.phantom import make_head_phantom
from DeepSimilarityLib.registration.apply import network_grid, to_network_grid
from DeepSimilarityLib.registration.feature_net import FeatureNet, save_feature_net
from DeepSimilarityLib.registration.network import load_registration_net
from DeepSimilarityLib.registration.experiment import TRAINING_INTENSITY
from DeepSimilarityLib.registration.user_pairs import user_training_set

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
             (["--loss", "mse", "--images", paths[0]], "at least two"),
             (["--loss", "mse", "--images", paths[0], str(tmp_path / "missing.nii.gz")], "missing.nii.gz"),
             (["--loss", "deepsim-seg", "--features", str(feat2d), "--images", *vols], "2D feature net")]
    for argv, text in cases:
        assert main(["train", "registration", *argv, "--out", never]) == 2, argv
        assert text in capsys.readouterr().err, argv
    assert not (tmp_path / "never.pt").exists()
