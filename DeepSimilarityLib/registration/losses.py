"""Image similarity losses for learned registration: DeepSim and the paper's baselines.

Every loss is a module called as ``loss(warped, fixed, warped_labels=None, fixed_labels=None)``
on images ``(B, 1, H, W[, D])`` in [0, 1] and returns a scalar to minimise. Labels
(``(B, K, ...)`` one-hot, the moving ones warped bilinearly) are used by ``ncc-sup`` only.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss
from torch import nn

from ..errors import InputError
from .network import resize_displacement, warp_image

# name -> what it is; ``needs`` says which extra input the loss takes.
LOSSES = {
    "mse": "mean squared intensity difference",
    "ncc": "local normalised cross-correlation, window 9 (MONAI)",
    "ncc-sup": "NCC plus Dice of warped moving labels vs fixed labels (needs labels in training)",
    "nmi": "global mutual information, Parzen histogram (MONAI), multimodal",
    "mind": "MIND-SSC descriptors compared by mean squared difference, multimodal",
    "deepsim-seg": "DeepSim: cosine similarity of segmentation-trained feature maps",
    "deepsim-ae": "DeepSim: cosine similarity of autoencoder feature maps",
    "ctmr-learned": "learned CT/MR patch similarity (fixed = CT, moving = MR), 2D only",
}
# Losses with fixed roles for the two images (fixed modality, moving modality): not for the brain MR benchmarks.
CROSS_MODALITY = {"ctmr-learned": ("CT", "MR")}


class DeepSimLoss(nn.Module):
    """``1 - mean_levels mean_pixels cos(F_l(warped), F_l(fixed))`` with a frozen feature net.

    ``feature_net.features(x)`` returns a list of maps ``(B, C_l, ...)``; the cosine is over
    channels. The small ``eps`` enters numerator and norms alike, so identical inputs give
    similarity exactly 1 (loss 0), also where a feature vector is zero.

    ``before_warp``: training compares the moving image's feature maps, warped by the displacement
    (resampled to each level), with the fixed image's (:meth:`warped_features_loss`), instead of
    the features of the warped image: the "extract before warp" variant of the authors' later work.
    Gradients then reach the displacement through the warp alone, never through the feature net.

    ``reference_quantiles``: :func:`foreground_quantiles` of the feature net's training image; each
    input's foreground intensities are then mapped onto them (:func:`match_histogram`) before the
    feature net sees it, so that images of other subjects reach it with its training contrast.
    """

    def __init__(self, feature_net: nn.Module, eps: float = 1e-6, before_warp: bool = False,
                 reference_quantiles: torch.Tensor | None = None):
        super().__init__()
        self.net = feature_net.eval().requires_grad_(False)
        self.eps = eps
        self.before_warp = before_warp
        self.reference_quantiles = reference_quantiles

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.reference_quantiles is not None:
            x = torch.cat([match_histogram(xi[None], self.reference_quantiles) for xi in x])
        return self.net.features(x)

    def train(self, mode: bool = True):  # the feature net stays in eval mode
        super().train(mode)
        self.net.eval()
        return self

    def _cosine(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """Mean over pixels of the cosine over channels of two maps ``(B, C, ...)``: ``(B,)``."""
        dot = (fa * fb).sum(1) + self.eps
        norm = torch.sqrt((fa.pow(2).sum(1) + self.eps) * (fb.pow(2).sum(1) + self.eps))
        return (dot / norm).flatten(1).mean(1)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity per batch element, ``(B,)``, in [-1, 1]."""
        levels = [self._cosine(fa, fb) for fa, fb in zip(self._maps(a), self._maps(b))]
        return torch.stack(levels, 0).mean(0)

    def warped_features_loss(self, moving: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """``1 - mean_levels mean_pixels cos(warp(F_l(moving), ddf_l), F_l(fixed))``; ``ddf`` ``(B, dims, ...)``
        in voxels of the images' grid, resampled to each level's grid (:func:`~.network.resize_displacement`)."""
        with torch.no_grad():  # the feature net is frozen and neither image depends on the displacement
            moving_maps, fixed_maps = self._maps(moving), self._maps(fixed)
        levels = [self._cosine(warp_image(fm, resize_displacement(ddf, fm.shape[2:])), ff)
                  for fm, ff in zip(moving_maps, fixed_maps)]
        return 1.0 - torch.stack(levels, 0).mean(0).mean()

    def forward(self, warped, fixed, warped_labels=None, fixed_labels=None):
        return 1.0 - self.similarity(warped, fixed).mean()


def foreground_quantiles(image: torch.Tensor, n: int = 101, threshold: float = 0.01) -> torch.Tensor:
    """``n`` evenly spaced quantiles ``(n,)`` of the voxels of ``image`` above ``threshold`` (the background
    of skull-stripped MR in [0, 1] is 0). No gradient."""
    values = image.detach().flatten()
    values = values[values > threshold]
    if values.numel() == 0:
        raise InputError("image", f"no voxel above {threshold}: nothing to take quantiles of")
    if values.numel() > 1_000_000:  # torch.quantile's size limit; a regular subsample keeps the distribution
        values = values[:: values.numel() // 1_000_000 + 1]
    return torch.quantile(values, torch.linspace(0, 1, n, dtype=values.dtype))


def match_histogram(x: torch.Tensor, reference_quantiles: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Map ``x``'s foreground quantiles onto ``reference_quantiles``, piecewise linearly.

    Background (0 to ``threshold``) stays where it is, so the foreground keeps its voxels. Differentiable
    in ``x`` (the map's slope); the map itself is taken from ``x`` without gradient. Values above
    ``x``'s maximum map to the reference maximum.
    """
    edge = x.new_tensor([0.0, threshold])
    xp = torch.cat([edge, foreground_quantiles(x, len(reference_quantiles), threshold)])
    fp = torch.cat([edge, reference_quantiles.to(x.dtype)])
    i = torch.searchsorted(xp.contiguous(), x.detach().contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((x - x0) / (x1 - x0).clamp_min(1e-6)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


def mind_ssc(x: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors (Heinrich et al. 2013), 2D and 3D, differentiable.

    The self-similarity context: patch distances between pairs of the 2*dims neighbours at
    ``dilation`` voxels whose mutual distance is ``sqrt(2) * dilation`` (12 pairs in 3D, 4 in
    2D), each a box-filtered squared difference over a ``2*radius+1`` patch. Returns
    ``(B, P, ...)`` in (0, 1], normalised by the per-voxel maximum.
    """
    dims = x.ndim - 2
    offsets = []
    for axis in range(dims):
        for step in (-dilation, dilation):
            o = [0] * dims
            o[axis] = step
            offsets.append(tuple(o))
    pairs = [(a, b) for a, b in itertools.combinations(offsets, 2)
             if sum((p - q) ** 2 for p, q in zip(a, b)) == 2 * dilation ** 2]
    padded = F.pad(x, [dilation] * (2 * dims), mode="replicate")
    size = x.shape[2:]

    def shifted(o):
        window = tuple(slice(dilation + s, dilation + s + n) for s, n in zip(o, size))
        return padded[(slice(None), slice(None)) + window]

    dist = torch.cat([(shifted(a) - shifted(b)).pow(2) for a, b in pairs], 1)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    dist = pool(dist, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    var = dist.mean(1, keepdim=True)
    mean = var.flatten(1).mean(1).view(-1, *([1] * (dims + 1)))
    var = torch.maximum(torch.minimum(var, mean * 1e3), mean * 1e-3 + 1e-12)
    mind = torch.exp(-dist / var)
    return mind / mind.amax(1, keepdim=True)


class MINDLoss(nn.Module):
    """Mean squared difference of MIND-SSC descriptors (``radius``, ``dilation`` of :func:`mind_ssc`).

    Dilation 1 by default: the benchmark's networks run on a 2x downsampled grid, where it spans the
    usual 2 mm. With dilation 2 there, the trained nets folded 7-9% of pixels at every lambda tried
    (0.0075-0.12; 13% at 2): the sparse sampling lets a high-frequency displacement match descriptors.
    """

    def __init__(self, radius: int = 1, dilation: int = 1):
        super().__init__()
        self.radius, self.dilation = radius, dilation

    def forward(self, warped, fixed, warped_labels=None, fixed_labels=None):
        return F.mse_loss(mind_ssc(warped, self.radius, self.dilation), mind_ssc(fixed, self.radius, self.dilation))


class _ImageOnly(nn.Module):
    """Wraps a MONAI ``loss(pred, target)`` into the common signature."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, warped, fixed, warped_labels=None, fixed_labels=None):
        return self.loss(warped, fixed)


class NCCSupervised(nn.Module):
    """NCC plus ``weight`` x Dice loss of the warped (soft) moving labels against the fixed labels."""

    def __init__(self, spatial_dims: int, weight: float = 1.0):
        super().__init__()
        self.ncc = LocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size=9, kernel_type="rectangular")
        self.dice = DiceLoss(include_background=False)
        self.weight = weight

    def forward(self, warped, fixed, warped_labels=None, fixed_labels=None):
        if warped_labels is None or fixed_labels is None:
            raise InputError("ncc-sup", "this loss needs label maps of the training pairs")
        return self.ncc(warped, fixed) + self.weight * self.dice(warped_labels, fixed_labels)


def make_loss(name: str, spatial_dims: int, feature_net: nn.Module | None = None, **deepsim_options) -> nn.Module:
    """The loss called ``name`` (see :data:`LOSSES`); DeepSim losses need their ``feature_net`` and take
    ``deepsim_options``, the keywords of :class:`DeepSimLoss` (``before_warp``, ``reference_quantiles``).

    ``ctmr-learned`` takes a :class:`~DeepSimilarityLib.ctmr.similarity_net.PatchSimilarityNet` as
    ``feature_net`` and otherwise loads the shipped ``weights/ctmr_similarity.pt``.
    """
    if name not in LOSSES:
        raise InputError("loss", f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if deepsim_options and not name.startswith("deepsim"):
        raise InputError("loss", f"{sorted(deepsim_options)} are options of the DeepSim losses, not of {name}")
    if name == "ctmr-learned":
        return _ctmr_learned(spatial_dims, feature_net)
    if name == "mse":
        return _ImageOnly(nn.MSELoss())
    if name == "ncc":
        return _ImageOnly(LocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size=9, kernel_type="rectangular"))
    if name == "ncc-sup":
        return NCCSupervised(spatial_dims)
    if name == "nmi":
        return _ImageOnly(GlobalMutualInformationLoss(num_bins=32))
    if name == "mind":
        return MINDLoss()
    if feature_net is None:
        raise InputError("features", f"the {name} loss needs a trained feature network (--features)")
    mode = getattr(feature_net, "mode", None)
    if mode is not None and name != f"deepsim-{mode}":
        raise InputError("features", f"the {name} loss needs a '{name.split('-')[1]}' feature network, got '{mode}'")
    if getattr(feature_net, "dims", spatial_dims) != spatial_dims:
        raise InputError("features", f"feature network is {feature_net.dims}D but the images are {spatial_dims}D")
    return DeepSimLoss(feature_net, **deepsim_options)


def _ctmr_learned(spatial_dims: int, net: nn.Module | None) -> nn.Module:
    from ..ctmr.similarity_net import PatchSimilarityNet, load_net
    from ..paths import weights_dir
    from .ctmr_loss import LearnedCTMRLoss

    if spatial_dims != 2:
        raise InputError("ctmr-learned", f"the CT/MR patch net is 2D; got {spatial_dims}D images")
    if net is None:
        net = load_net(weights_dir() / "ctmr_similarity.pt")
    elif not isinstance(net, PatchSimilarityNet):
        raise InputError("features", "the ctmr-learned loss needs a CT/MR patch similarity net")
    return LearnedCTMRLoss(net)


def needs_labels(name: str) -> bool:
    return name == "ncc-sup"
