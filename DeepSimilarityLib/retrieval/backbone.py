"""The CNN shared by every retrieval model: a MONAI ResNet on grey images, plus training helpers.

Depth is configurable as in the papers (Chung & Weng use ResNet-50); the
defaults (ResNet-10, 16 base channels) train in minutes on one CPU core on
64x64 images. 2D and 3D come from one code path via ``spatial_dims``.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import ResNet
from torch import nn

from ..errors import InputError

# MONAI's block type and blocks per stage for each ResNet depth.
DEPTHS = {10: ("basic", [1, 1, 1, 1]), 18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
          50: ("bottleneck", [3, 4, 6, 3])}
BACKBONE_KEYS = ("depth", "width", "stem_stride", "spatial_dims", "image_size")


def backbone_config(depth: int = 10, width: int = 16, stem_stride: int = 2, spatial_dims: int = 2,
                    image_size=(64, 64)) -> dict:
    """Checked backbone settings. ``stem_stride`` 2 suits 64 px inputs, 1 suits 28 px ones."""
    if int(depth) not in DEPTHS:
        raise InputError("depth", f"must be one of {sorted(DEPTHS)}, got {depth}")
    if int(width) < 4 or int(stem_stride) not in (1, 2) or int(spatial_dims) not in (2, 3):
        raise InputError("backbone", f"needs width >= 4, stem_stride 1 or 2, spatial_dims 2 or 3: "
                                     f"{width}, {stem_stride}, {spatial_dims}")
    size = [int(s) for s in image_size]
    if len(size) != int(spatial_dims) or min(size) < 8:
        raise InputError("image_size", f"needs {spatial_dims} sizes >= 8, got {image_size}")
    return {"depth": int(depth), "width": int(width), "stem_stride": int(stem_stride),
            "spatial_dims": int(spatial_dims), "image_size": size}


def make_backbone(config: dict) -> tuple[nn.Module, int]:
    """``(net, n_features)``: images ``(B, 1, H, W[, D])`` -> pooled features ``(B, n_features)``."""
    block, layers = DEPTHS[config["depth"]]
    w = config["width"]
    net = ResNet(block=block, layers=layers, block_inplanes=[w, 2 * w, 4 * w, 8 * w],
                 spatial_dims=config["spatial_dims"], n_input_channels=1, conv1_t_size=5,
                 conv1_t_stride=config["stem_stride"], num_classes=1, feed_forward=False)
    return net, 8 * w * (4 if block == "bottleneck" else 1)


def as_batch(images: np.ndarray, image_size) -> torch.Tensor:
    """Grey images ``(N, H, W[, D])`` float in [0, 1] -> tensor ``(N, 1, H, W[, D])``; sizes must match."""
    a = np.asarray(images, dtype=np.float32)
    if a.ndim != len(image_size) + 1 or list(a.shape[1:]) != list(image_size):
        raise InputError("images", f"expected (N, {', '.join(map(str, image_size))}) grey images, got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError("images", "contain NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(a))[:, None]


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 4, flip: bool = False) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (zero fill) and optional left/right flips, per image.

    A few hundred training images overfit a ResNet within epochs; small
    shifts are label-preserving for fundus photographs and chest X-rays.
    """
    if shift <= 0 and not flip:
        return x
    b, dims = x.shape[0], x.ndim - 2
    out = torch.empty_like(x)
    padded = nn.functional.pad(x, [shift] * (2 * dims)) if shift > 0 else x
    offsets = (torch.randint(0, 2 * shift + 1, (b, dims), generator=generator) if shift > 0
               else torch.zeros(b, dims, dtype=torch.long))
    flips = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    size = x.shape[2:]
    for i in range(b):
        idx = tuple(slice(int(o), int(o) + s) for o, s in zip(offsets[i], size))
        img = padded[(i, slice(None)) + idx]
        out[i] = img.flip(-1) if flips[i] else img
    return out


def weight_penalty(net: nn.Module) -> torch.Tensor:
    """Half the summed squares of the weight matrices and kernels (not biases or norms): weight decay in the loss."""
    return 0.5 * sum((p * p).sum() for name, p in net.named_parameters() if p.ndim > 1)


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``fn`` over ``x`` in batches (inference, no gradients)."""
    return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)]) if x.shape[0] else fn(x)


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, x: torch.Tensor, batch: int = 64) -> None:
    """Re-estimate every batch-norm layer's running statistics on ``x`` ``(N, 1, H, W)`` (no augmentation).

    The running averages kept during training trail a network that keeps
    changing and saw augmented images; in eval mode they then shift the
    features (and flip hash bits) away from what training saw.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for i in range(0, len(x), batch):
        idx = order[i:i + batch]
        if len(idx) > 1:
            net(x[idx])
    for m, momentum in zip(layers, saved):
        m.momentum = momentum
    net.eval()
