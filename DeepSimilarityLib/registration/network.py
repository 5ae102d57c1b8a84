"""The registration network: a MONAI U-Net on (moving, fixed) that outputs a dense displacement.

Optionally the output is a stationary velocity field integrated by scaling and
squaring (MONAI ``DVF2DDF``), which keeps the transform diffeomorphic in the
limit. Images are warped with MONAI ``Warp`` (bilinear), label maps as one-hot
channels (bilinear, then arg-max) or by nearest neighbour. Displacements are in
voxels of the network grid, channel ``i`` along tensor axis ``i + 2``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from monai.losses import DiffusionLoss
from monai.networks.blocks import DVF2DDF, Warp
from monai.networks.nets import UNet
from torch import nn

from ..errors import InputError
from .checkpoint import load_network, save_checkpoint

KIND = "deepsim-registration"

# Two MONAI warnings that say nothing a user can act on, printed on every command line run:
# Warp announces that it uses PyTorch's grid_sample (it has no compiled alternative here), and
# DiffusionLoss's spatial gradient indexes with a list, which PyTorch flags as deprecated. Only
# these two messages from these two modules are silenced.
warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample",
                        module="monai.networks.blocks.warp")
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                        module="monai.losses.deform")


CHANNELS = (16, 32, 32, 32)  # the U-Net's default channels per level


def size_multiple(channels=CHANNELS) -> int:
    """What a :class:`RegistrationNet` with these ``channels`` needs its input sizes divisible by."""
    return 2 ** (len(channels) - 1)


class RegistrationNet(nn.Module):
    """``forward(moving, fixed) -> (warped, ddf)`` for ``(B, 1, H, W[, D])`` inputs.

    Args:
        spatial_dims: 2 or 3.
        channels: U-Net channels per level (each level halves the resolution), so the
            input sizes must be divisible by ``2**(len(channels)-1)``.
        velocity: integrate the output as a stationary velocity field (``steps`` squarings).
    """

    def __init__(self, spatial_dims: int = 2, channels=CHANNELS, velocity: bool = False, steps: int = 7):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise InputError("spatial_dims", f"must be 2 or 3, not {spatial_dims!r}")
        self.config = dict(spatial_dims=spatial_dims, channels=[int(c) for c in channels], velocity=bool(velocity),
                           steps=int(steps))
        self.dims = spatial_dims
        self.unet = UNet(spatial_dims, 2, channels[0], channels=channels, strides=(2,) * (len(channels) - 1),
                         act=("leakyrelu", {"negative_slope": 0.2}), norm=None)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.head = conv(channels[0], spatial_dims, kernel_size=3, padding=1)
        # Start near the identity transform, as VoxelMorph does: tiny weights, zero bias.
        nn.init.normal_(self.head.weight, std=1e-5)
        nn.init.zeros_(self.head.bias)
        self.integrate = DVF2DDF(num_steps=steps) if velocity else None

    @property
    def multiple(self) -> int:
        return size_multiple(self.config["channels"])

    def displacement(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``(B, dims, H, W[, D])`` displacement in voxels (fixed grid -> moving grid)."""
        return self.fields(moving, fixed)[1]

    def fields(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, displacement)``, both ``(B, dims, H, W[, D])`` in voxels: the net's own output (the
        velocity field when it integrates one, else the displacement itself) and the displacement."""
        if moving.shape != fixed.shape or moving.ndim != self.dims + 2:
            raise InputError("images", f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must both be "
                                       f"(B, 1, ...) with {self.dims} spatial axes")
        if any(s % self.multiple for s in fixed.shape[2:]):
            raise InputError("images", f"spatial size {tuple(fixed.shape[2:])} must be divisible by {self.multiple}")
        field = self.head(F.leaky_relu(self.unet(torch.cat([moving, fixed], 1)), 0.2))
        return field, self.integrate(field) if self.integrate is not None else field

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor):
        ddf = self.displacement(moving, fixed)
        return warp_image(moving, ddf), ddf


# Warp holds no weights, so one instance serves every caller.
_BILINEAR_WARP = Warp(mode="bilinear", padding_mode="border")


def warp_image(image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Bilinear (trilinear in 3D) warp of ``(B, C, H, W[, D])`` by a voxel displacement ``(B, dims, ...)``.

    Outside the image the border value is repeated, so a shifted brain does not pull in zeros at
    the edge. Differentiable in both arguments; the one image warp of training, instance
    optimisation and synthetic deformations.
    """
    return _BILINEAR_WARP(image, ddf)


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """Warp integer label maps ``(B, 1, ...)``: one-hot, bilinear, arg-max (no label mixing at borders).

    With ``n_classes`` the one-hot has that many channels; returns ``(B, 1, ...)`` int64.
    """
    n = int(n_classes or int(labels.max()) + 1)
    onehot = F.one_hot(labels[:, 0].long(), n).movedim(-1, 1).float()
    return warp_image(onehot, ddf).argmax(1, keepdim=True)


def warp_nearest(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of label maps ``(B, 1, ...)`` (cheap when there are many labels)."""
    return Warp(mode="nearest", padding_mode="border")(labels.float(), ddf).round().long()


def regulariser(ddf: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: mean squared spatial gradient of the displacement (MONAI ``DiffusionLoss``)."""
    return DiffusionLoss()(ddf)


def save_registration_net(net: RegistrationNet, path, metadata: dict | None = None):
    return save_checkpoint(path, KIND, net.config, net.state_dict(), metadata)


def load_registration_net(path) -> RegistrationNet:
    """A frozen :class:`RegistrationNet` in eval mode; :class:`InputError` on a wrong or foreign file."""
    return load_network(path, KIND, RegistrationNet, "registration net")


def resize_displacement(ddf: torch.Tensor, size) -> torch.Tensor:
    """Resample a voxel-unit displacement ``(B, dims, ...)`` to grid ``size`` (same field of view).

    Pixel centres are matched (``align_corners=False``) and each component is rescaled by the
    grid ratio along its own axis, so the result is in voxels of the new grid.
    """
    size = tuple(int(s) for s in size)
    mode = "bilinear" if ddf.ndim == 4 else "trilinear"
    out = F.interpolate(ddf, size=size, mode=mode, align_corners=False)
    scale = torch.tensor([n / o for n, o in zip(size, ddf.shape[2:])], dtype=ddf.dtype)
    return out * scale.view(1, -1, *([1] * len(size)))
