"""The learned CT/MR patch similarity as a registration loss (registration/ctmr_loss.py, ``ctmr-learned``)."""

import numpy as np
import pytest
import torch

from conftest import require_data
from DeepSimilarityLib.ctmr.similarity_net import PatchSimilarityNet
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.registration.losses import LOSSES, make_loss
from DeepSimilarityLib.registration.network import Warp

torch.set_num_threads(1)


@pytest.mark.parametrize("patch_norm", ["image", "patch"])
def test_gradient_reaches_the_moving_image_not_the_net(patch_norm):
    assert "ctmr-learned" in LOSSES
    net = PatchSimilarityNet({"patch_voxels": 25, "layers": [50, 20, 10], "patch_norm": patch_norm})
    loss = make_loss("ctmr-learned", 2, net)
    gen = torch.Generator().manual_seed(0)
    ct, mr = torch.rand(2, 1, 24, 20, generator=gen), torch.rand(2, 1, 24, 20, generator=gen)
    ddf = torch.zeros(2, 2, 24, 20, requires_grad=True)
    value = loss(Warp("bilinear", "border")(mr.requires_grad_(True), ddf), ct)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert mr.grad.abs().sum() > 0 and ddf.grad.abs().sum() > 0  # through the patches and through the warp
    assert all(p.grad is None for p in net.parameters())


def test_scores_match_the_patch_net_and_bad_input():
    net = PatchSimilarityNet({"patch_voxels": 9, "layers": [18, 8, 4]})
    loss = make_loss("ctmr-learned", 2, net)
    loss.min_std = 0.0
    gen = torch.Generator().manual_seed(1)
    ct, mr = torch.rand(1, 1, 7, 7, generator=gen), torch.rand(1, 1, 7, 7, generator=gen)
    loss.stride = 1
    scores, mask = loss.scores(mr, ct)
    assert scores.shape == mask.shape == (1, 25) and bool(mask.all())
    # Position (row 1, col 2): the same row-major 3x3 windows scored by the net directly.
    direct = net.score(ct[0, 0, 1:4, 2:5].reshape(1, 9), mr[0, 0, 1:4, 2:5].reshape(1, 9))
    assert scores[0, 1 * 5 + 2].item() == pytest.approx(direct.item(), abs=1e-5)
    assert loss(mr, ct).item() == pytest.approx(-scores.mean().item(), abs=1e-5)
    with pytest.raises(InputError, match="2D"):
        make_loss("ctmr-learned", 3, net)
    with pytest.raises(InputError, match="square"):
        make_loss("ctmr-learned", 2, PatchSimilarityNet({"patch_voxels": 10, "layers": [20, 8, 4]}))
    with pytest.raises(InputError, match="smaller"):
        loss(torch.rand(1, 1, 2, 9), torch.rand(1, 1, 2, 9))
    with pytest.raises(InputError, match="patch similarity"):
        make_loss("ctmr-learned", 2, torch.nn.Linear(2, 2))


def test_shipped_net_prefers_the_true_alignment(isolated_cache):
    """Real head CT/T1 slice (affinely registered by the loader), 2x downsampled as the net was trained."""
    require_data("ct-mr-slices")
    from DeepSimilarityLib.datasets import CTMRSlices
    from DeepSimilarityLib.registration.data import downsample

    pair = CTMRSlices().load_pair("Patient_01", 10, mr="T1")  # a training patient of the shipped net
    ct, mr = downsample(np.stack([pair.ct.array, pair.mr.array]), 2)[:, None]
    loss = make_loss("ctmr-learned", 2)
    aligned = loss(mr, ct).item()
    # The loader's alignment is Mattes MI's; the learned optimum sits within ~2 px (256 grid) of it, so
    # the test compares with 4 and 8 px shifts (measured: aligned 1.149; +-4 px: 1.167-1.343).
    for dim in (2, 3):
        for shift in (-4, 4):
            shifted = loss(torch.roll(mr, shift, dims=dim), ct).item()
            assert aligned < shifted < loss(torch.roll(mr, 2 * shift, dims=dim), ct).item(), (dim, shift)
