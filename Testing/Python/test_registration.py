"""DeepSim registration: losses, warping, Jacobian, networks, checkpoints, a tiny training run."""

import numpy as np
import pytest
import torch

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.registration import (LOSSES, DeepSimLoss, FeatureNet, RegistrationNet, folding_fraction,
                                            jacobian_determinant, load_feature_net, load_registration_net, make_loss,
                                            mind_ssc, save_feature_net, save_registration_net, train_feature_net,
                                            train_registration)
from DeepSimilarityLib.registration.checkpoint import save_checkpoint
from DeepSimilarityLib.registration.evaluate import dice_scores, mean_dice
from DeepSimilarityLib.registration.feature_net import FeatureEnsemble, FinestLevels
from DeepSimilarityLib.registration.losses import CROSS_MODALITY, foreground_quantiles, match_histogram
from DeepSimilarityLib.registration.network import regulariser, resize_displacement, warp_image, warp_labels, warp_nearest

torch.set_num_threads(1)


def blobs(shape, centre_shift=0.0, seed=0):
    """Smooth test image ``(1, 1, *shape)`` in [0, 1]: two Gaussian blobs, optionally shifted along axis 0."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    out = torch.zeros(shape)
    for k, (c, s) in enumerate(((0.4, 0.15), (0.65, 0.1))):
        r2 = sum((g - (c + 0.05 * k * (i % 2)) * n - (centre_shift if i == 0 else 0)) ** 2 / (s * n) ** 2
                 for i, (g, n) in enumerate(zip(grids, shape)))
        out += torch.exp(-r2)
    return (out / out.max())[None, None]


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def dims(request):
    return request.param


def shape_of(dims):
    return (32, 24) if dims == 2 else (16, 16, 16)


def test_deepsim_is_one_for_identical_and_lower_for_shifted(dims):
    torch.manual_seed(0)
    loss = DeepSimLoss(FeatureNet(dims, "seg", 4))
    a = blobs(shape_of(dims))
    assert loss.similarity(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    shifted = blobs(shape_of(dims), centre_shift=3.0)
    assert loss.similarity(a, shifted).item() < 0.999
    assert loss.similarity(a, shifted).item() > loss.similarity(a, blobs(shape_of(dims), 6.0)).item()


def test_every_loss_is_finite_with_gradients(dims):
    torch.manual_seed(0)
    shape = shape_of(dims)
    fixed = blobs(shape)
    labels = torch.nn.functional.one_hot((fixed[:, 0] > 0.5).long(), 2).movedim(-1, 1).float()
    for name in LOSSES:
        if name in CROSS_MODALITY:  # 2D CT/MR patch net: its own tests (test_registration_ctmr_loss.py)
            continue
        mode = name.split("-")[1] if name.startswith("deepsim") else None
        loss = make_loss(name, dims, FeatureNet(dims, mode, 2) if mode else None)
        moving = blobs(shape, 2.0).requires_grad_(True)
        value = loss(moving, fixed, labels, labels)
        assert value.ndim == 0 and torch.isfinite(value), name
        value.backward()
        assert moving.grad is not None and moving.grad.abs().sum() > 0, name
        if mode:  # the feature net is frozen
            assert all(p.grad is None for p in loss.net.parameters())
        if name != "nmi":  # same image: minimal loss (mutual information is not minimal at 0)
            same = loss(fixed, fixed, labels, labels).item()
            assert same <= value.item() + 1e-6, name


def test_loss_registry_errors():
    with pytest.raises(InputError, match="unknown loss"):
        make_loss("ssd", 2)
    with pytest.raises(InputError, match="feature network"):
        make_loss("deepsim-seg", 2)
    with pytest.raises(InputError, match="'seg' feature"):
        make_loss("deepsim-seg", 2, FeatureNet(2, "ae"))
    with pytest.raises(InputError, match="3D"):
        make_loss("deepsim-ae", 2, FeatureNet(3, "ae"))
    with pytest.raises(InputError, match="options of the DeepSim losses, not of ncc"):
        make_loss("ncc", 2, before_warp=True)
    assert make_loss("deepsim-seg", 2, FeatureNet(2, "seg"), before_warp=True).before_warp
    with pytest.raises(InputError, match="label"):
        make_loss("ncc-sup", 2)(blobs((16, 16)), blobs((16, 16)))


def test_mind_ssc_channels_and_range():
    assert mind_ssc(blobs((20, 20))).shape == (1, 4, 20, 20)
    m = mind_ssc(blobs((12, 12, 12)))
    assert m.shape == (1, 12, 12, 12, 12)
    assert float(m.max()) == pytest.approx(1.0) and float(m.min()) > 0
    flat = mind_ssc(torch.zeros(1, 1, 8, 8))
    assert torch.isfinite(flat).all()


def test_zero_displacement_warp_is_identity_and_shift_moves(dims):
    net = RegistrationNet(dims)
    img = blobs(shape_of(dims))
    zero = torch.zeros((1, dims) + img.shape[2:])
    assert torch.allclose(warp_image(img, zero), img, atol=1e-5)
    labels = (img > 0.5).long() + (img > 0.8).long()
    assert torch.equal(warp_labels(labels, zero, 3), labels)
    assert torch.equal(warp_nearest(labels, zero), labels)
    # u = +2 voxels along axis 0: warped(x) = moving(x + 2)
    two = zero.clone()
    two[:, 0] = 2.0
    moved = warp_image(img, two)
    assert torch.allclose(moved[:, :, 4:-4], img[:, :, 6:-2], atol=1e-5)
    # Beyond the border the edge value repeats (no zeros pulled in).
    assert torch.allclose(moved[:, :, -1], img[:, :, -1], atol=1e-5)
    # The network's spatial transformer is this same warp.
    warped, ddf = net(img, img)
    assert torch.equal(warped, warp_image(img, ddf))


def test_network_starts_near_identity_and_checks_sizes(dims):
    torch.manual_seed(0)
    for velocity in (False, True):
        net = RegistrationNet(dims, velocity=velocity)
        m, f = blobs(shape_of(dims), 2.0), blobs(shape_of(dims))
        warped, ddf = net(m, f)
        assert ddf.shape == (1, dims) + m.shape[2:] and warped.shape == m.shape
        assert ddf.abs().max() < 1e-2
    with pytest.raises(InputError, match="divisible"):
        net(torch.zeros((1, 1) + (18,) * dims), torch.zeros((1, 1) + (18,) * dims))


def test_jacobian_known_fields():
    h, w = 20, 30
    y, x = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    assert np.allclose(jacobian_determinant(np.zeros((2, h, w))), 1.0)
    scaled = np.stack([0.5 * y, 1.0 * x])  # x -> (1.5 y, 2 x): determinant 3
    assert np.allclose(jacobian_determinant(scaled), 3.0)
    mirrored = np.stack([-2.0 * y, np.zeros_like(x)])  # y -> -y: determinant -1, everything folds
    assert np.allclose(jacobian_determinant(mirrored), -1.0) and folding_fraction(mirrored) == 1.0
    half = np.stack([np.where(x < 15, -2.0 * y, 0.0), np.zeros_like(x)])
    assert 0.4 < folding_fraction(half) < 0.6
    z3 = np.zeros((3, 6, 7, 8))
    z3[2] = 1.0 * np.arange(8)  # doubles the last axis
    assert np.allclose(jacobian_determinant(z3), 2.0)
    assert np.allclose(jacobian_determinant(z3, spacing=(1, 1, 2)), 1.5)
    with pytest.raises(InputError):
        jacobian_determinant(np.zeros((3, 5, 5)))


def test_dice_and_resize():
    a = np.array([[0, 1, 1], [2, 2, 0]])
    scores = dice_scores(a, np.array([[0, 1, 0], [2, 2, 2]]))
    assert scores == {1: pytest.approx(2 / 3), 2: pytest.approx(0.8)}
    with pytest.raises(InputError, match="empty"):
        mean_dice(np.zeros((3, 3)), np.zeros((3, 3)))
    ddf = torch.ones(1, 2, 8, 6)
    big = resize_displacement(ddf, (16, 18))
    assert big.shape == (1, 2, 16, 18)
    assert torch.allclose(big[:, 0], torch.full((1, 16, 18), 2.0)) and torch.allclose(big[:, 1], torch.full((1, 16, 18), 3.0))


def test_feature_net_trains_saves_and_refuses_foreign_files(tmp_path):
    torch.manual_seed(0)
    images = torch.cat([blobs((16, 16), s) for s in (0.0, 1.0, 2.0, 3.0)])
    labels = (images[:, 0] > 0.5).long()
    net, hist = train_feature_net(images, labels, "seg", epochs=3, batch_size=2)
    assert hist["loss"][-1] < hist["loss"][0]
    path = save_feature_net(net, tmp_path / "f.pt", {"note": "test"})
    again = load_feature_net(path)
    assert again.metadata["note"] == "test"
    for x, y in zip(net.features(images), again.features(images)):
        assert torch.equal(x, y)
    assert [f.shape[2] for f in net.features(images)] == [16, 8, 4]
    with pytest.raises(InputError, match="empty"):
        train_feature_net(images, torch.zeros_like(labels), "seg", epochs=1)
    reg = save_registration_net(RegistrationNet(2), tmp_path / "r.pt")
    with pytest.raises(InputError, match="expected 'deepsim-features'"):
        load_feature_net(reg)
    blob = torch.load(path, weights_only=True)
    blob["config"]["channels"] = [8, 8, 8]
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="architecture"):
        load_feature_net(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable weights file"):
        load_registration_net(tmp_path / "junk.pt")


def test_strided_feature_net_levels_loss_and_checkpoint(dims, tmp_path):
    """The paper's encoder: levels at 1/2, 1/4, 1/8, a full-size prediction, DeepSim 1 for identical inputs; the
    encoder survives a checkpoint, and a checkpoint written before the option existed loads as ``pooled``."""
    torch.manual_seed(0)
    shape = (32, 24) if dims == 2 else (16, 16, 24)
    net = FeatureNet(dims, "seg", 3, encoder="strided")
    a = blobs(shape)
    assert [tuple(f.shape[2:]) for f in net.features(a)] == [tuple(n // k for n in shape) for k in (2, 4, 8)]
    assert net(a).shape == (1, 3) + shape and FeatureNet(dims, "ae", encoder="strided")(a).shape == (1, 1) + shape
    loss = DeepSimLoss(net)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(a, blobs(shape, 3.0)).item() > 1e-4
    again = load_feature_net(save_feature_net(net, tmp_path / "s.pt"))
    assert again.config["encoder"] == "strided" and torch.equal(again.features(a)[2], net.features(a)[2])
    pooled = FeatureNet(dims, "seg", 3)
    old_config = {k: v for k, v in pooled.config.items() if k != "encoder"}
    old = load_feature_net(save_checkpoint(tmp_path / "old.pt", "deepsim-features", old_config, pooled.state_dict()))
    assert old.config["encoder"] == "pooled" and torch.equal(old.features(a)[0], pooled.features(a)[0])
    with pytest.raises(InputError, match="encoder"):
        FeatureNet(dims, "seg", 3, encoder="resnet")


def test_feature_net_dropout_acts_in_training_only_and_is_kept_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = FeatureNet(3, "seg", 3, channels=(8, 16, 16), dropout=0.5)
    a = blobs((16, 16, 16))
    net.train()
    assert not torch.equal(net.features(a)[0], net.features(a)[0])  # a new mask per call
    net.eval()
    assert torch.equal(net.features(a)[0], net.features(a)[0])
    again = load_feature_net(save_feature_net(net, tmp_path / "d.pt"))
    assert again.config["dropout"] == 0.5 and torch.equal(again.features(a)[1], net.features(a)[1])
    # Without dropout the layers are those of nets saved before the option: same parameter names.
    assert set(FeatureNet(3, "seg", 3).state_dict()) == set(FeatureNet(3, "seg", 3, dropout=0.2).state_dict())
    with pytest.raises(InputError, match="dropout"):
        FeatureNet(3, "seg", 3, dropout=1.0)


def test_deepsim_before_warp_equals_after_warp_at_zero_and_gradients_reach_only_the_displacement(dims):
    """Extract before warp: with no displacement it is the usual loss; a displacement that undoes a shift
    lowers it; the gradient reaches the displacement, and the frozen feature net gets none."""
    torch.manual_seed(0)
    shape = shape_of(dims)
    loss = DeepSimLoss(FeatureNet(dims, "seg", 4), before_warp=True)
    fixed, moving = blobs(shape), blobs(shape, 2.0)
    zero = torch.zeros((1, dims) + shape, requires_grad=True)
    value = loss.warped_features_loss(moving, fixed, zero)
    assert value.item() == pytest.approx(loss(moving, fixed).item(), abs=1e-6)
    value.backward()
    assert zero.grad.abs().sum() > 0 and all(p.grad is None for p in loss.net.parameters())
    # blobs(shape, s) moves the blob centre by s pixels along the first axis: sampling the moving image
    # 2 pixels further along that axis brings it back onto the fixed one.
    undo = torch.zeros((1, dims) + shape)
    undo[:, 0] = 2.0
    assert loss.warped_features_loss(moving, fixed, undo).item() < value.item()


def test_histogram_matching_maps_quantiles_keeps_background_and_passes_gradients():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 24, 24, 24) ** 2 * 0.6
    x[..., :6] = 0.0  # background
    reference = torch.rand(1, 1, 24, 24, 24) ** 0.5
    q = foreground_quantiles(reference)
    y = match_histogram(x.requires_grad_(True), q)
    assert torch.all(y[..., :6] == 0)
    assert torch.allclose(foreground_quantiles(y), q, atol=2e-3)  # the reference's distribution
    assert torch.allclose(match_histogram(reference, q), reference, atol=1e-5)  # its own quantiles: identity
    y.sum().backward()
    assert x.grad[..., 6:].abs().min() > 0  # the map is increasing: every foreground voxel gets a gradient
    loss = DeepSimLoss(FeatureNet(3, "seg", 3), reference_quantiles=q)
    assert loss(x.detach(), x.detach()).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="no voxel above"):
        foreground_quantiles(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("name", ["mse", "deepsim-seg"])
def test_a_few_training_steps_lower_the_loss(name, tmp_path):
    torch.manual_seed(0)
    images = torch.cat([blobs((32, 32), s) for s in (0.0, 3.0, -3.0)])
    pairs = torch.tensor([[1, 0], [2, 0], [0, 1], [0, 2]])
    features = None
    if name == "deepsim-seg":
        features, _ = train_feature_net(images, (images[:, 0] > 0.5).long(), "seg", epochs=2, batch_size=3)
    loss = make_loss(name, 2, features)

    def total_loss(net):
        with torch.no_grad():
            warped, _ = net(images[pairs[:, 0]], images[pairs[:, 1]])
            return loss(warped, images[pairs[:, 1]]).item()

    before = total_loss(RegistrationNet(2))  # training starts from this very net (same seed)
    torch.manual_seed(0)
    net, hist = train_registration(images, pairs, loss, lam=0.01, epochs=15, batch_size=4, lr=3e-3, loss_name=name,
                                   seed=0)
    assert total_loss(net) < before - 0.01 * abs(before)
    path = save_registration_net(net, tmp_path / "r.pt", {"grid": [32, 32]})
    again = load_registration_net(path)
    assert again.metadata["grid"] == [32, 32]
    assert torch.equal(again.displacement(images[:1], images[1:2]), net.displacement(images[:1], images[1:2]))


def test_training_checks_inputs_and_can_be_cancelled():
    from DeepSimilarityLib.ctmr.sdae import TrainingCancelled

    images = torch.cat([blobs((16, 16)), blobs((16, 16), 2.0)])
    loss = make_loss("mse", 2)
    with pytest.raises(InputError, match="indices"):
        train_registration(images, [[0, 5]], loss, 0.1, epochs=1)
    with pytest.raises(InputError, match="labels"):
        train_registration(images, [[0, 1]], make_loss("ncc-sup", 2), 0.1, epochs=1, loss_name="ncc-sup")
    with pytest.raises(TrainingCancelled):
        train_registration(images, [[0, 1]], loss, 0.1, epochs=1, should_stop=lambda: True)
    labels = (images > 0.5).long()
    net, _ = train_registration(images, [[0, 1]], make_loss("ncc-sup", 2), 0.1, epochs=1, labels=labels,
                                loss_name="ncc-sup")
    assert regulariser(net.displacement(images[:1], images[1:])).item() >= 0


@pytest.mark.parametrize("regularise", ["displacement", "velocity"])
def test_the_regulariser_acts_on_the_field_asked_for(regularise, monkeypatch):
    import DeepSimilarityLib.registration.train as train_module

    images = torch.cat([blobs((16, 16)), blobs((16, 16), 2.0)])
    seen = []

    def spy(field):  # records what the diffusion term was given
        seen.append(field.detach().clone())
        return regulariser(field)

    monkeypatch.setattr(train_module, "regulariser", spy)
    net, _ = train_registration(images, [[0, 1]], make_loss("mse", 2), 0.1, epochs=3, lr=1e-2, velocity=True,
                                regularise=regularise)
    # One more step at lr 0 leaves the weights as they are, so the field it regularised can be recomputed.
    seen.clear()
    train_registration(images, [[0, 1]], make_loss("mse", 2), 0.1, epochs=1, lr=0.0, net=net, regularise=regularise)
    velocity, ddf = net.fields(images[:1], images[1:])
    assert not torch.allclose(velocity, ddf)  # after 3 steps at lr 1e-2 the integration changes the field
    assert torch.allclose(seen[0], velocity if regularise == "velocity" else ddf)


def test_regularising_the_velocity_needs_a_velocity_net():
    images = torch.cat([blobs((16, 16)), blobs((16, 16), 2.0)])
    with pytest.raises(InputError, match="regularise.*velocity field"):
        train_registration(images, [[0, 1]], make_loss("mse", 2), 0.1, epochs=1, regularise="velocity")
    with pytest.raises(InputError, match="regularise"):
        train_registration(images, [[0, 1]], make_loss("mse", 2), 0.1, epochs=1, velocity=True, regularise="ddf")


def test_feature_ensemble_similarity_is_the_mean_of_its_nets(dims):
    torch.manual_seed(0)
    shape = shape_of(dims)
    nets = [FeatureNet(dims, "seg", 3).eval() for _ in range(3)]
    ensemble = FeatureEnsemble(nets)
    fixed, moving = blobs(shape), blobs(shape, 2.0)
    assert len(ensemble.features(fixed)) == 3 * len(nets[0].features(fixed))
    each = torch.stack([DeepSimLoss(n).similarity(moving, fixed) for n in nets]).mean(0)
    assert torch.allclose(DeepSimLoss(ensemble).similarity(moving, fixed), each, atol=1e-6)
    assert DeepSimLoss(ensemble)(fixed, fixed).item() == pytest.approx(0.0, abs=1e-6)
    assert make_loss("deepsim-seg", dims, ensemble)  # mode and dimension read from the members
    for bad in ([], [nets[0], FeatureNet(dims, "seg", 3, channels=(8, 16))], [nets[0], FeatureNet(dims, "ae")]):
        with pytest.raises(InputError, match="feature nets"):
            FeatureEnsemble(bad)


def test_finest_levels_keep_a_nets_finest_maps_and_form_ensembles(dims):
    torch.manual_seed(0)
    shape = shape_of(dims)
    net = FeatureNet(dims, "seg", 3).eval()
    fine = FinestLevels(net, 2)
    fixed, moving = blobs(shape), blobs(shape, 2.0)
    maps, kept = net.features(fixed), fine.features(fixed)
    assert len(kept) == 2 and all(torch.equal(a, b) for a, b in zip(kept, maps[:2]))
    # DeepSim over the two finest levels is the mean of those levels' cosines alone.
    per_level = [DeepSimLoss(FinestLevels(net, k)).similarity(moving, fixed) * k for k in (1, 2)]
    assert torch.allclose(DeepSimLoss(fine).similarity(moving, fixed), per_level[1] / 2, atol=1e-6)
    assert not torch.allclose(DeepSimLoss(fine).similarity(moving, fixed), DeepSimLoss(net).similarity(moving, fixed))
    assert DeepSimLoss(fine)(fixed, fixed).item() == pytest.approx(0.0, abs=1e-6)
    assert len(FeatureEnsemble([fine, FinestLevels(FeatureNet(dims, "seg", 3), 2)]).features(fixed)) == 4
    with pytest.raises(InputError, match="feature nets"):  # 2 levels and 3 are not averaged together
        FeatureEnsemble([fine, net])
    for bad in (0, 4, 1.5):
        with pytest.raises(InputError, match="levels"):
            FinestLevels(net, bad)
