"""Training the registration network on pairs of images from one stack."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..ctmr.sdae import TrainSettings, run_epochs
from ..errors import InputError
from .losses import needs_labels
from .network import RegistrationNet, regulariser, warp_image


REGULARISED = ("displacement", "velocity")  # what the diffusion regulariser may act on


def check_regularise(regularise: str, velocity: bool, name: str = "regularise") -> None:
    """InputError naming ``name`` unless ``regularise`` is one of :data:`REGULARISED` and the net has that
    field: only a net that integrates a velocity field (``velocity``) can have it regularised."""
    if regularise not in REGULARISED:
        raise InputError(name, f"must be one of {REGULARISED}, got {regularise!r}")
    if regularise == "velocity" and not velocity:
        raise InputError(name, "'velocity' needs a net that integrates a velocity field (a displacement net has "
                               "none)")


def train_registration(images: torch.Tensor, pairs: torch.Tensor, loss: torch.nn.Module, lam: float,
                       epochs: int = 10, batch_size: int = 8, lr: float = 1e-3, labels: torch.Tensor | None = None,
                       loss_name: str = "", net: RegistrationNet | None = None, seed: int = 0, velocity: bool = False,
                       augment=None, on_epoch=None, should_stop=None,
                       regularise: str = "displacement") -> tuple[RegistrationNet, dict]:
    """Minimise ``loss(warped, fixed) + lam * diffusion(ddf)`` over ``pairs``.

    Args:
        images: ``(M, 1, H, W[, D])`` float in [0, 1], every image once.
        pairs: ``(P, 2)`` indices into ``images``: (moving, fixed).
        loss: from :func:`~.losses.make_loss`; ``loss_name`` tells whether it needs labels.
        labels: ``(M, 1, ...)`` integer label maps (only ``ncc-sup`` reads them, warped as one-hot).
        net: continue training this net (else a new one with ``velocity``).
        seed: seeds the initial weights and the pair order (deterministic on one thread).
        augment: ``augment(moving, fixed) -> (moving, fixed)`` applied to every batch ``(B, 1, ...)``
            before the net sees it, e.g. one random spatial transform for both images of a pair
            (:func:`~.augmentation.augment_pairs`); images only, so not with a label loss.
        on_epoch: called with the fraction of epochs done; ``should_stop``: polled every step,
            raises :class:`~DeepSimilarityLib.ctmr.sdae.TrainingCancelled`.
        regularise: ``"displacement"`` (the diffusion term on ``ddf``) or ``"velocity"`` (on the net's
            velocity field before integration, as VoxelMorph does; a velocity net only).
    Returns the net in eval mode and ``{"loss": [per epoch], "seconds": ...}``.
    """
    if images.ndim not in (4, 5) or images.shape[1] != 1:
        raise InputError("images", f"expected (M, 1, H, W[, D]), got {tuple(images.shape)}")
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise InputError("pairs", f"expected (P, 2) indices, got {tuple(pairs.shape)}")
    if int(pairs.min()) < 0 or int(pairs.max()) >= len(images):
        raise InputError("pairs", f"indices must lie in 0..{len(images) - 1}")
    if not lam >= 0:
        raise InputError("lambda", f"must be >= 0, got {lam}")
    supervised = needs_labels(loss_name)
    if supervised and labels is None:
        raise InputError("labels", f"the {loss_name} loss needs label maps")
    if supervised and augment is not None:
        # The labels would have to follow the same random transform; no caller needs that yet.
        raise InputError("augment", f"augmentation transforms images only; the {loss_name} loss also reads labels")
    check_regularise(regularise, net.config["velocity"] if net is not None else velocity)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = net or RegistrationNet(images.ndim - 2, velocity=velocity)
    on_output = regularise == "velocity"
    n_classes = int(labels.max()) + 1 if supervised else 0
    loss.train()

    def step_loss(idx):
        m, f = pairs[idx, 0], pairs[idx, 1]
        moving, fixed = images[m], images[f]
        if augment is not None:
            with torch.no_grad():
                moving, fixed = augment(moving, fixed)
        output, ddf = net.fields(moving, fixed)
        # The penalty is built after the similarity term, as before this option existed: the order of
        # autograd's gradient sums changes the last bits, and the committed runs reproduce bit for bit.
        penalty = lambda: lam * regulariser(output if on_output else ddf)  # noqa: E731
        if getattr(loss, "before_warp", False):  # DeepSim warps the moving features, not the image (DeepSimLoss)
            return loss.warped_features_loss(moving, fixed, ddf) + penalty()
        wl = fl = None
        if supervised:
            wl = warp_image(F.one_hot(labels[m, 0].long(), n_classes).movedim(-1, 1).float(), ddf)
            fl = F.one_hot(labels[f, 0].long(), n_classes).movedim(-1, 1).float()
        return loss(warp_image(moving, ddf), fixed, wl, fl) + penalty()

    net.train()
    t0 = time.perf_counter()
    settings = TrainSettings(optimizer="adam", lr=lr, batch_size=batch_size)
    losses = run_epochs(step_loss, len(pairs), net, settings, epochs, generator, on_epoch, should_stop)
    return net.eval(), {"loss": losses, "seconds": time.perf_counter() - t0}
