"""The surrogate-task feature extractor of DeepSim: a small U-Net-style encoder/decoder.

Trained once, then frozen: its encoder's feature maps (one per level) are what
:class:`~.losses.DeepSimLoss` compares. Two surrogate tasks, as in the paper:

* ``"seg"`` (DeepSim_seg): supervised segmentation of labelled brain MR
  (softmax, Dice + cross-entropy), decoder with skip connections;
* ``"ae"`` (DeepSim_ae): autoencoding (mean squared reconstruction error). The
  decoder has no skip connections, otherwise the first level could copy the
  input through and the deeper levels would learn nothing.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.blocks import Convolution
from torch import nn

from ..ctmr.sdae import TrainSettings, run_epochs
from ..errors import InputError
from .checkpoint import load_network, save_checkpoint

KIND = "deepsim-features"
MODES = ("seg", "ae")
# "pooled": max-pool then two instance-normed convolutions per level, the first level at full resolution.
# "strided": the paper's encoder stage, a stride-2 4x4 convolution then a 3x3 one, LeakyReLU and no
# normalisation, so every level (the first at half resolution) keeps the image's absolute contrast.
ENCODERS = ("pooled", "strided")


def _block(dims: int, c_in: int, c_out: int, norm="instance", stride: int = 1, dropout: float = 0.0) -> nn.Sequential:
    """Two convolutions with LeakyReLU (MONAI ``Convolution`` blocks), the first 4x4 stride 2 if ``stride`` is 2;
    ``dropout`` after each (training only)."""
    conv = dict(spatial_dims=dims, act=("leakyrelu", {"negative_slope": 0.2}), norm=norm, dropout=dropout or None)
    first = dict(kernel_size=4, strides=2, padding=1) if stride == 2 else dict(kernel_size=3)
    return nn.Sequential(Convolution(in_channels=c_in, out_channels=c_out, **first, **conv),
                         Convolution(in_channels=c_out, out_channels=c_out, kernel_size=3, **conv))


class FeatureNet(nn.Module):
    """U-Net-style net whose :meth:`features` returns the encoder maps of every level.

    Args:
        spatial_dims: 2 or 3.
        mode: ``"seg"`` or ``"ae"``.
        out_channels: segmentation classes including background (``seg``); ignored for ``ae``.
        channels: channels per encoder level; level ``i`` runs at ``1/2**i`` resolution (``pooled``)
            or ``1/2**(i+1)`` (``strided``).
        encoder: one of :data:`ENCODERS`.
        dropout: dropout rate after every convolution while training (the paper's segmentation net
            uses dropout); 0 for none.
    Inputs ``(B, 1, H, W[, D])`` with sizes divisible by ``2**(levels-1)`` (``pooled``) or
    ``2**levels`` (``strided``).
    """

    def __init__(self, spatial_dims: int = 2, mode: str = "seg", out_channels: int = 2, channels=(16, 32, 32),
                 encoder: str = "pooled", dropout: float = 0.0):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise InputError("spatial_dims", f"must be 2 or 3, not {spatial_dims!r}")
        if mode not in MODES:
            raise InputError("mode", f"must be one of {MODES}, not {mode!r}")
        if encoder not in ENCODERS:
            raise InputError("encoder", f"must be one of {ENCODERS}, not {encoder!r}")
        if not 0.0 <= dropout < 1.0:
            raise InputError("dropout", f"must be in [0, 1), not {dropout!r}")
        self.config = dict(spatial_dims=spatial_dims, mode=mode, out_channels=int(out_channels) if mode == "seg" else 1,
                           channels=[int(c) for c in channels], encoder=encoder, dropout=float(dropout))
        self.dims, self.mode, self.strided, ch = spatial_dims, mode, encoder == "strided", self.config["channels"]
        norm, stride = (None, 2) if self.strided else ("instance", 1)
        self.encoder = nn.ModuleList(_block(spatial_dims, 1 if i == 0 else ch[i - 1], ch[i], norm, stride, dropout)
                                     for i in range(len(ch)))
        skip = mode == "seg"
        # The strided encoder has one more upsampling step, back to the input, whose skip is the image itself.
        up = [(ch[i + 1], ch[i], ch[i]) for i in reversed(range(len(ch) - 1))]  # (deep in, skip in, out)
        up += [(ch[0], 1, ch[0])] if self.strided else []
        self.decoder = nn.ModuleList(_block(spatial_dims, c_deep + (c_skip if skip else 0), c_out, norm, 1, dropout)
                                     for c_deep, c_skip, c_out in up)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.head = conv(ch[0], self.config["out_channels"], kernel_size=1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps, finest first: ``[(B, c0, H, W), (B, c1, H/2, W/2), ...]`` (``pooled``)
        or ``[(B, c0, H/2, W/2), (B, c1, H/4, W/4), ...]`` (``strided``)."""
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        maps = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 or self.strided else pool(x, 2))
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, classes, ...)`` or the reconstruction ``(B, 1, ...)``."""
        maps = self.features(x)
        skips = list(reversed(maps[:-1])) + ([x] if self.strided else [])
        y = maps[-1]
        for block, skip in zip(self.decoder, skips):
            y = F.interpolate(y, size=skip.shape[2:], mode="nearest")
            y = block(torch.cat([y, skip], 1) if self.mode == "seg" else y)
        return self.head(y)


def ensemble_key(net: nn.Module) -> tuple:
    """``(levels, dims, mode)``: feature nets can be averaged in a :class:`FeatureEnsemble` when these agree."""
    return len(net.config["channels"]), net.dims, net.mode


class FeatureEnsemble(nn.Module):
    """Several frozen feature nets of equal depth seen as one: :meth:`features` lists every net's maps,
    net after net. :class:`~.losses.DeepSimLoss`'s mean over all these levels is then the mean over the
    nets of each net's DeepSim similarity (why: averaging nets trained from different seeds on one
    subject leaves less of any one net's idiosyncrasies in the loss)."""

    def __init__(self, nets):
        super().__init__()
        nets = list(nets)
        if not nets or len({ensemble_key(n) for n in nets}) != 1:
            raise InputError("feature nets", "need one or more feature nets of the same depth, dimension and mode")
        self.nets = nn.ModuleList(nets)
        self.dims, self.mode = nets[0].dims, nets[0].mode

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every net's :meth:`FeatureNet.features`, concatenated as one list."""
        return [m for net in self.nets for m in net.features(x)]


class FinestLevels(nn.Module):
    """The ``levels`` finest feature maps of a frozen feature net (or ensemble member): a DeepSim over
    fewer, finer levels. Why: a coarse level's cosine changes little when structures a few voxels wide
    are misaligned, so it may pull a registration towards a coarse match."""

    def __init__(self, net: nn.Module, levels: int):
        super().__init__()
        depth = len(net.config["channels"])
        if int(levels) != levels or not 1 <= levels <= depth:
            raise InputError("levels", f"must be a whole number from 1 to the net's {depth} levels, not {levels!r}")
        self.net, self.levels = net, int(levels)
        self.dims, self.mode = net.dims, net.mode
        self.config = {**net.config, "channels": net.config["channels"][:self.levels]}

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The first ``levels`` maps of the net's :meth:`FeatureNet.features` (finest first)."""
        return self.net.features(x)[:self.levels]


def train_feature_net(images: torch.Tensor, labels: torch.Tensor | None = None, mode: str = "seg",
                      epochs: int = 30, batch_size: int = 8, lr: float = 1e-3, channels=(16, 32, 32), seed: int = 0,
                      on_epoch=None, should_stop=None, augment=None, encoder: str = "pooled",
                      dropout: float = 0.0) -> tuple[FeatureNet, dict]:
    """Train a :class:`FeatureNet` on ``images`` ``(N, 1, H, W[, D])`` in [0, 1].

    ``labels`` ``(N, H, W[, D])`` integer ids 0..K (``seg`` only). ``augment(images, labels) ->
    (images, labels)`` transforms every batch ``(B, 1, ...)`` (labels ``(B, 1, ...)`` or None)
    before the net sees it, e.g. :func:`~.augmentation.augment_labelled`. Returns the frozen
    net in eval mode and a history dict (loss per epoch, seconds).
    """
    if images.ndim not in (4, 5) or images.shape[1] != 1:
        raise InputError("images", f"expected (N, 1, H, W[, D]), got {tuple(images.shape)}")
    dims = images.ndim - 2
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if mode == "seg":
        if labels is None or labels.shape != images.shape[:1] + images.shape[2:]:
            raise InputError("labels", "segmentation features need one label map per image, shaped like the images")
        if int(labels.max()) < 1:
            raise InputError("labels", "label maps are empty (only background)")
        net = FeatureNet(dims, "seg", int(labels.max()) + 1, channels, encoder, dropout)
        criterion = DiceCELoss(to_onehot_y=True, softmax=True)
        target = labels[:, None].long()
    else:
        net = FeatureNet(dims, "ae", 1, channels, encoder, dropout)
        target = None

    def loss_fn(idx):
        x, y = images[idx], None if target is None else target[idx]
        if augment is not None:
            with torch.no_grad():
                x, y = augment(x, y)
        return criterion(net(x), y) if y is not None else F.mse_loss(net(x), x)

    settings = TrainSettings(optimizer="adam", lr=lr, batch_size=batch_size)
    t0 = time.perf_counter()
    net.train()
    losses = run_epochs(loss_fn, images.shape[0], net, settings, epochs, generator, on_epoch, should_stop)
    net.eval().requires_grad_(False)
    return net, {"loss": losses, "seconds": time.perf_counter() - t0}


def save_feature_net(net: FeatureNet, path, metadata: dict | None = None):
    return save_checkpoint(path, KIND, net.config, net.state_dict(), metadata)


def load_feature_net(path) -> FeatureNet:
    """A frozen :class:`FeatureNet` in eval mode; :class:`InputError` on a wrong or foreign file."""
    return load_network(path, KIND, FeatureNet, "feature net")
