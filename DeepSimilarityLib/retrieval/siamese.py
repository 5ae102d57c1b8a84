"""Siamese CNN retrieval (Chung & Weng 2017) and its supervised-classifier baseline.

Twin CNNs with shared weights are one network applied to both images of a
pair. It maps an image to an embedding; the contrastive loss
``1(same) D^2 / 2 + 1(different) max(0, m - D)^2 / 2`` on the Euclidean
distance D of the two embeddings pulls same-class pairs together and pushes
different-class pairs at least ``m`` apart. Pairs are built from the labels:
each training image is paired, with even odds, with a random image of its own
class or of another class; the loss then covers every pair of images in the
batch (anchors and partners, 2B(2B - 1)/2 pairs), with same-class and
different-class pairs weighing half each. Embeddings have unit length.

Why every pair and unit length: with one pair per image and free-length
embeddings, NIH 'any finding' (a weak signal: the classifier's MAP is 0.57
against 0.50 by chance) settled where every pair lies about m/2 apart (the
loss of m^2/8 that needs no class information), and even the training images
did not separate (mean distance 0.48 same class vs 0.49 different): Siamese
MAP 0.51. 2016 pairs per batch instead of 32 average out the noise of single
pairs at the same forward cost. On nih-any (3 folds, 20 epochs) every pair
alone gave MAP 0.57, unit length alone 0.52, both 0.64; margins 0.5 and 1.5
gave 0.61 and 0.65, so the margin stays 1.

Baseline: the same backbone trained as a classifier (cross-entropy);
retrieval uses its penultimate layer (the pooled backbone features).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..ctmr.sdae import TrainSettings, run_epochs
from ..errors import InputError
from .backbone import as_batch, augment, backbone_config, make_backbone, recalibrate_batchnorm, weight_penalty


@dataclass(frozen=True)
class SiameseSettings:
    """Training schedule. ``epochs`` count passes over the training images (one pair per image)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    margin: float = 1.0
    shift: int = 4  # augmentation: random translation in pixels
    flip: bool = False  # augmentation: left/right flips (fundus: both eyes occur)
    all_pairs: bool = True  # loss over every pair in the batch; False: only each anchor with its partner
    seed: int = 0

    def check(self) -> "SiameseSettings":
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.margin <= 0 or self.weight_decay < 0:
            raise InputError("settings", f"needs epochs >= 1, batch_size >= 2, lr > 0, margin > 0: {self}")
        return self


class EmbeddingNet(nn.Module):
    """Images ``(B, 1, H, W)`` -> embeddings ``(B, embedding_dim)`` (backbone + linear head).

    With ``config["normalise"]`` the embeddings have unit L2 norm; files saved
    before that option existed lack the key and keep their free-length output.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.backbone, n = make_backbone(config)
        self.head = nn.Linear(n, config["embedding_dim"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.head(self.backbone(x))
        return F.normalize(e, dim=1) if self.config.get("normalise", False) else e

    embed = forward


class ClassifierNet(nn.Module):
    """Images ``(B, 1, H, W)`` -> class logits ``(B, n_classes)``; :meth:`embed` gives the penultimate layer."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.backbone, n = make_backbone(config)
        self.head = nn.Linear(n, config["n_classes"])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def pair_losses(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Contrastive loss ``(P,)`` of each embedding pair ``a``, ``b`` ``(P, D)``; ``same`` ``(P,)`` bool."""
    # The epsilon keeps the gradient of D finite for identical embeddings.
    d = torch.sqrt(((a - b) ** 2).sum(1) + 1e-12)
    same = same.to(a.dtype)
    return same * d ** 2 / 2 + (1 - same) * F.relu(margin - d) ** 2 / 2


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean contrastive loss of embedding pairs ``a``, ``b`` ``(B, D)``; ``same`` ``(B,)`` bool."""
    return pair_losses(a, b, same, margin).mean()


def batch_contrastive_loss(e: torch.Tensor, classes: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Contrastive loss over all ``B(B-1)/2`` pairs of embeddings ``e`` ``(B, D)`` with class ids ``(B,)``.

    The mean over same-class pairs and the mean over different-class pairs
    weigh half each (as the even odds of :func:`partners`), so rare classes'
    few same-class pairs are not drowned by the many different-class ones.
    """
    i, j = torch.triu_indices(len(e), len(e), 1, device=e.device)
    same = classes[i] == classes[j]
    losses = pair_losses(e[i], e[j], same, margin)
    return torch.stack([losses[kind].mean() for kind in (same, ~same) if kind.any()]).mean()


def partners(classes: np.ndarray, anchors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each anchor index, a partner index of the same class (odds 1/2) or another class; ``(partner, same)``."""
    classes = np.asarray(classes)
    by_class = {c: np.flatnonzero(classes == c) for c in np.unique(classes)}
    others = {c: np.flatnonzero(classes != c) for c in by_class}
    want_same = rng.random(len(anchors)) < 0.5
    out = np.empty(len(anchors), dtype=np.int64)
    for k, (i, s) in enumerate(zip(anchors, want_same)):
        c = classes[i]
        own = by_class[c][by_class[c] != i]
        pool = own if (s and len(own)) or not len(others[c]) else others[c]
        out[k] = rng.choice(pool) if len(pool) else i
    return out, classes[out] == classes[anchors]


def model_config(kind: str, image_size, n_classes: int, depth=10, width=16, stem_stride=2,
                 embedding_dim: int = 32, normalise: bool = True) -> dict:
    config = backbone_config(depth, width, stem_stride, 2, image_size)
    if n_classes < 2:
        raise InputError("labels", f"need at least 2 classes, got {n_classes}")
    config.update(kind=kind, n_classes=int(n_classes))
    if kind == "siamese":
        config.update(embedding_dim=int(embedding_dim), normalise=bool(normalise))
    return config


def _train(net, loss_fn, x, settings, generator, progress, should_stop, rngs=()) -> list[float]:
    optim = TrainSettings(optimizer="adam", lr=settings.lr, batch_size=settings.batch_size)
    on_epoch = (lambda f: progress("train", f)) if progress is not None else None
    net.train()
    losses = run_epochs(loss_fn, len(x), net, optim, settings.epochs, generator, on_epoch, should_stop, rngs=rngs)
    recalibrate_batchnorm(net, x, settings.batch_size)
    return losses


def train_siamese(images: np.ndarray, classes: np.ndarray, settings: SiameseSettings = SiameseSettings(),
                  progress=None, should_stop=None, **arch) -> tuple[EmbeddingNet, dict]:
    """Train an :class:`EmbeddingNet` on images ``(N, H, W)`` with class ids ``(N,)``; returns ``(net, history)``."""
    settings = settings.check()
    torch.manual_seed(settings.seed)
    classes = np.asarray(classes)
    net = EmbeddingNet(model_config("siamese", images.shape[1:], int(classes.max()) + 1, **arch))
    x = as_batch(images, net.config["image_size"])
    g, rng = torch.Generator().manual_seed(settings.seed), np.random.default_rng(settings.seed)

    def loss_fn(idx):
        j, same = partners(classes, idx.numpy(), rng)
        both = augment(torch.cat([x[idx], x[torch.from_numpy(j)]]), g, settings.shift, settings.flip)
        e = net(both)  # one network, both images of the pair: the twins share their weights
        if settings.all_pairs:
            pair_classes = torch.from_numpy(classes[np.concatenate([idx.numpy(), j])])
            loss = batch_contrastive_loss(e, pair_classes, settings.margin)
        else:
            loss = contrastive_loss(e[: len(idx)], e[len(idx):], torch.from_numpy(same), settings.margin)
        return loss + settings.weight_decay * weight_penalty(net)

    start = time.perf_counter()
    losses = _train(net, loss_fn, x, settings, g, progress, should_stop, rngs=(rng,))
    return net, {"loss": losses, "seconds": time.perf_counter() - start, "settings": asdict(settings)}


def train_classifier(images: np.ndarray, classes: np.ndarray, settings: SiameseSettings = SiameseSettings(),
                     progress=None, should_stop=None, **arch) -> tuple[ClassifierNet, dict]:
    """The supervised baseline: same backbone, cross-entropy on class ids ``(N,)``; returns ``(net, history)``."""
    settings = settings.check()
    torch.manual_seed(settings.seed)
    arch.pop("embedding_dim", None)
    arch.pop("normalise", None)
    net = ClassifierNet(model_config("classifier", images.shape[1:], int(np.max(classes)) + 1, **arch))
    x = as_batch(images, net.config["image_size"])
    y = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    g = torch.Generator().manual_seed(settings.seed)

    def loss_fn(idx):
        logits = net(augment(x[idx], g, settings.shift, settings.flip))
        return F.cross_entropy(logits, y[idx]) + settings.weight_decay * weight_penalty(net)

    start = time.perf_counter()
    losses = _train(net, loss_fn, x, settings, g, progress, should_stop)
    return net, {"loss": losses, "seconds": time.perf_counter() - start, "settings": asdict(settings)}
