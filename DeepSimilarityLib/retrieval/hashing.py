"""Order-sensitive deep hashing (OSDH, Chen et al. 2018) and the deep baselines DSH and HashNet.

Network: the retrieval backbone, a fully connected hash layer of k bits with
activation ``tanh(alpha * z)`` and, for OSDH, a label classifier on the
relaxed codes. Training raises alpha stage by stage (continuation: the
relaxed codes approach binary ones); encoding uses the limit ``sign(z)``.

Objective of OSDH: ``lambda_R * L_rank + lambda_C * L_BCE + weight_decay * |W|^2 / 2``
with the order-sensitive triplet ranking loss over in-batch ranking lists
(relevance r = number of shared labels) and the multi-label binary
cross-entropy. Ablations: OSDH-R (``lambda_R = 0``), OSDH-C (``lambda_C = 0``).
Baselines: DSH (real outputs, pairwise contrastive loss with a binary
regulariser) and HashNet-style (continuation, weighted pairwise likelihood);
pairs count as similar when they share a label.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..ctmr.sdae import TrainSettings, run_epochs
from ..errors import InputError
from .backbone import as_batch, augment, backbone_config, make_backbone, recalibrate_batchnorm, weight_penalty
from .hashing_losses import dsh_loss, hashnet_loss, multilabel_bce, order_sensitive_ranking_loss

METHODS = ("osdh", "osdh-r", "osdh-c", "dsh", "hashnet")
BITS = (16, 32, 48, 64)


@dataclass(frozen=True)
class HashSettings:
    """Training of one hashing model. ``margin`` is the ranking margin rho as a fraction of k bits."""

    method: str = "osdh"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lambda_r: float = 1.0
    lambda_c: float = 1.0
    margin: float = 0.125
    alphas: tuple = (1.0, 2.0, 4.0, 8.0)  # continuation stages, spread evenly over the epochs
    shift: int = 4
    seed: int = 0

    def check(self) -> "HashSettings":
        if self.method not in METHODS:
            raise InputError("method", f"must be one of {METHODS}, got {self.method!r}")
        if self.epochs < 1 or self.batch_size < 4 or self.lr <= 0 or self.weight_decay < 0 or not self.alphas:
            raise InputError("settings", f"needs epochs >= 1, batch_size >= 4, lr > 0, alphas: {self}")
        if self.lambda_r < 0 or self.lambda_c < 0 or self.lambda_r + self.lambda_c == 0:
            raise InputError("settings", f"lambda_R and lambda_C must be >= 0, not both 0: {self}")
        return self

    def weights(self) -> tuple[float, float]:
        """``(lambda_R, lambda_C)`` after the method's ablation."""
        if self.method == "osdh-r":
            return 0.0, self.lambda_c
        if self.method == "osdh-c":
            return self.lambda_r, 0.0
        return self.lambda_r, self.lambda_c


class HashingNet(nn.Module):
    """Images ``(B, 1, H, W)`` -> batch-normalised hash-layer outputs ``z`` ``(B, k)``; codes are ``sign(z)``.

    ``relaxed(x)`` gives ``tanh(alpha z)`` (or ``z`` for DSH) and the label
    logits ``(B, L)`` computed from it.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.backbone, n = make_backbone(config)
        self.hash = nn.Linear(n, config["n_bits"])
        # Normalising each bit's pre-activation over the batch (no learnt shift) keeps the bits
        # balanced: without it the label loss drove every image to one constant code on NIH.
        self.balance = nn.BatchNorm1d(config["n_bits"], affine=False)
        self.classifier = nn.Linear(config["n_bits"], config["n_labels"])
        self.alpha = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.balance(self.hash(self.backbone(x)))

    def relaxed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.forward(x)
        h = z if self.config["method"] == "dsh" else torch.tanh(self.alpha * z)
        return h, self.classifier(h)


def hashing_config(method: str, n_bits: int, image_size, n_labels: int, depth=10, width=16, stem_stride=2) -> dict:
    if int(n_bits) < 8 or int(n_bits) % 8:
        raise InputError("bits", f"must be a positive multiple of 8, got {n_bits}")
    if n_labels < 1:
        raise InputError("labels", "need at least one label column")
    config = backbone_config(depth, width, stem_stride, 2, image_size)
    config.update(kind="hashing", method=method, n_bits=int(n_bits), n_labels=int(n_labels))
    return config


def train_hashing(images: np.ndarray, labels: np.ndarray, n_bits: int = 64, settings: HashSettings = HashSettings(),
                  progress=None, should_stop=None, **arch) -> tuple[HashingNet, dict]:
    """Train on images ``(N, H, W)`` with multi-hot labels ``(N, L)``; returns ``(net, history)``."""
    settings = settings.check()
    labels = np.asarray(labels)
    if labels.ndim != 2 or len(labels) != len(images):
        raise InputError("labels", f"need (N, L) multi-hot labels for {len(images)} images, got {labels.shape}")
    torch.manual_seed(settings.seed)
    net = HashingNet(hashing_config(settings.method, n_bits, images.shape[1:], labels.shape[1], **arch))
    x = as_batch(images, net.config["image_size"])
    y = torch.as_tensor(labels, dtype=torch.float32)
    g = torch.Generator().manual_seed(settings.seed)
    lam_r, lam_c = settings.weights()
    k = net.config["n_bits"]

    def loss_fn(idx):
        h, logits = net.relaxed(augment(x[idx], g, settings.shift))
        yb = y[idx]
        if settings.method == "dsh":
            loss = dsh_loss(h, yb)
        elif settings.method == "hashnet":
            loss = hashnet_loss(h, yb)
        else:
            loss = h.sum() * 0.0
            if lam_r:  # ranking hinge in bits / k: comparable across code lengths
                loss = loss + lam_r * order_sensitive_ranking_loss(h, yb, settings.margin * k) / k
            if lam_c:
                loss = loss + lam_c * multilabel_bce(logits, yb)
        return loss + settings.weight_decay * weight_penalty(net)

    n_stages = len(settings.alphas)

    def on_epoch(fraction):
        # Continuation: the next alpha once this stage's share of the epochs is done.
        net.alpha = float(settings.alphas[min(int(fraction * n_stages + 1e-9), n_stages - 1)])
        if progress is not None:
            progress(f"alpha {net.alpha:g}", fraction)

    net.alpha = float(settings.alphas[0])
    start = time.perf_counter()
    net.train()
    optim = TrainSettings(optimizer="adam", lr=settings.lr, batch_size=settings.batch_size)
    losses = run_epochs(loss_fn, len(x), net, optim, settings.epochs, g, on_epoch, should_stop)
    recalibrate_batchnorm(net, x, settings.batch_size)
    return net, {"loss": losses, "seconds": time.perf_counter() - start, "settings": asdict(settings)}


@torch.no_grad()
def hash_codes(net: HashingNet, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Images ``(N, H, W)`` -> ``(N, k)`` float32 signs in {-1, 1} (zero maps to +1)."""
    net.eval()
    x = as_batch(images, net.config["image_size"])
    z = (torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x)
         else torch.zeros(0, net.config["n_bits"]))
    return np.where(z.numpy() >= 0, 1.0, -1.0).astype(np.float32)
