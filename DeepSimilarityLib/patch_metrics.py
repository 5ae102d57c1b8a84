"""Patch similarity metrics with one interface: a CT patch against a search region.

A metric's :meth:`PatchMetric.score_map` takes one CT patch of shape ``P``
(``(p, p)`` or ``(p, p, p)``) and an MR search region of shape ``N + P - 1``
and returns the score of every MR patch of the region, shape ``N``; higher
always means more similar. Heat maps and the rank-error evaluation use
nothing else, so a learned metric and the hand-made baselines are compared
on identical patches.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from .errors import InputError
from .intensity_metrics import linear_correlation, normalised_mutual_information
from .patches import sliding_patches


class PatchMetric:
    """Base class: scores every patch position of a search region."""

    name = "metric"

    def score_map(self, ct_patch: np.ndarray, mr_region: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check(self, ct_patch, mr_region):
        ct_patch = np.asarray(ct_patch, dtype=np.float32)
        mr_region = np.asarray(mr_region, dtype=np.float32)
        if ct_patch.ndim != mr_region.ndim or any(r < p for r, p in zip(mr_region.shape, ct_patch.shape)):
            raise InputError("mr_region", f"shape {mr_region.shape} cannot hold patches of shape {ct_patch.shape}")
        return ct_patch, mr_region


class _PatchwiseMetric(PatchMetric):
    """A metric defined on flattened patch pairs, evaluated on all positions at once."""

    # Positions per batch: bounds memory of the unfolded patches (3D regions hold ~60k patches).
    chunk = 8192

    def score_map(self, ct_patch, mr_region):
        ct_patch, mr_region = self._check(ct_patch, mr_region)
        windows = sliding_patches(mr_region, ct_patch.shape)
        out_shape = windows.shape[: ct_patch.ndim]
        flat = windows.reshape(-1, ct_patch.size)  # copies: one row per position
        ct = ct_patch.reshape(1, -1)
        scores = [self.score_patches(ct, flat[i : i + self.chunk]) for i in range(0, flat.shape[0], self.chunk)]
        return np.concatenate(scores).reshape(out_shape).astype(np.float32)

    def score_patches(self, ct: np.ndarray, mr: np.ndarray) -> np.ndarray:
        """Scores ``(M,)`` of CT patches ``(1 or M, n)`` against MR patches ``(M, n)``."""
        raise NotImplementedError


class NMIMetric(_PatchwiseMetric):
    """Normalised mutual information (Studholme) with fixed bins over [0, 1]."""

    name = "nmi"

    def __init__(self, bins: int = 16, value_range=(0.0, 1.0)):
        self.bins = int(bins)
        self.value_range = value_range

    def score_patches(self, ct, mr):
        return normalised_mutual_information(ct, mr, self.bins, self.value_range)


class LCCMetric(_PatchwiseMetric):
    """Linear correlation coefficient; absolute by default since CT and MR may be anti-correlated."""

    name = "lcc"

    def __init__(self, absolute: bool = True):
        self.absolute = absolute

    def score_patches(self, ct, mr):
        r = linear_correlation(ct, mr)
        return np.abs(r) if self.absolute else r


def mind_descriptor(image: np.ndarray, sigma: float = 0.8, radius: int = 1) -> np.ndarray:
    """MIND descriptor (Heinrich et al. 2012) of every voxel, shape ``(R, *image.shape)``.

    For each offset r of the 4 (2D) or 6 (3D) neighbourhood at distance
    ``radius``, D(x, r) is the Gaussian-weighted squared patch distance
    between x and x + r; MIND(x, r) = exp(-D(x, r) / V(x)) with V the mean of D
    over r, normalised so the maximum over r is 1.
    """
    image = np.asarray(image, dtype=np.float32)
    offsets = []
    for axis in range(image.ndim):
        for sign in (-radius, radius):
            o = [0] * image.ndim
            o[axis] = sign
            offsets.append(tuple(o))
    distances = np.stack([
        ndimage.gaussian_filter((image - ndimage.shift(image, o, order=0, mode="nearest")) ** 2, sigma, mode="nearest")
        for o in offsets
    ])
    variance = distances.mean(0)
    # Floor the variance so flat regions (air, constant patches) stay finite.
    floor = max(float(variance.mean()) * 1e-3, 1e-6)
    descriptor = np.exp(-distances / np.maximum(variance, floor))
    return (descriptor / descriptor.max(0, keepdims=True)).astype(np.float32)


class MINDMetric(PatchMetric):
    """Negative mean squared difference of MIND descriptors over the patch.

    Descriptors need neighbours, so they are computed on the whole CT patch and
    MR region (patch edges use nearest-neighbour padding); the sum of squared
    differences at every position is expanded into correlations done by FFT.
    """

    name = "mind"

    def __init__(self, sigma: float = 0.8, radius: int = 1):
        self.sigma = sigma
        self.radius = radius

    def score_map(self, ct_patch, mr_region):
        ct_patch, mr_region = self._check(ct_patch, mr_region)
        dc = mind_descriptor(ct_patch, self.sigma, self.radius)
        dm = mind_descriptor(mr_region, self.sigma, self.radius)
        box = np.ones(ct_patch.shape, dtype=np.float32)
        ssd = np.zeros(tuple(r - p + 1 for r, p in zip(mr_region.shape, ct_patch.shape)), dtype=np.float64)
        for c, m in zip(dc, dm):
            ssd += float((c * c).sum())
            ssd -= 2.0 * signal.correlate(m, c, mode="valid", method="fft")
            ssd += signal.correlate(m * m, box, mode="valid", method="fft")
        return (-ssd / (dc.shape[0] * ct_patch.size)).astype(np.float32)


HAND_MADE_METRICS = {"nmi": NMIMetric, "lcc": LCCMetric, "mind": MINDMetric}


DEFAULT_LEARNED_WEIGHTS = "ctmr_similarity.pt"


def get_metric(name: str, weights=None, precision: str = "auto", **kwargs) -> PatchMetric:
    """A metric by name: ``nmi``, ``lcc``, ``mind``, ``learned`` (the CT/MR network), or
    names joined by ``+`` (e.g. ``learned+nmi``): the rank sum of their maps
    (:class:`~.ctmr.cascade.RankSumPatchMetric`, for an MR contrast the network
    has not seen).

    ``learned`` loads ``weights`` (default: ``ctmr_similarity.pt`` in the
    shipped weights folder); a missing file names the command that trains it. ``precision``: its
    arithmetic (``"auto"``: the fastest on this CPU, timed once per metric, so two metrics of the same
    weights can score differently in the third decimal; ``"float32"``: reproducible).
    """
    if precision != "auto" and "learned" not in name.split("+"):
        raise InputError("precision", f"is for the learned metric, not {name!r}")
    if "+" in name:
        from .ctmr.cascade import RankSumPatchMetric

        if kwargs:
            raise InputError("metric", f"options {sorted(kwargs)} apply to one metric, not to the rank sum {name!r}")
        parts = name.split("+")
        return RankSumPatchMetric(*(get_metric(p, weights=weights, precision=precision if p == "learned" else "auto")
                                    for p in parts))
    if name == "learned":
        from pathlib import Path

        from .ctmr.learned_metric import LearnedPatchMetric
        from .paths import shipped_weights

        path = Path(weights) if weights else shipped_weights(DEFAULT_LEARNED_WEIGHTS)
        if not path.exists():
            raise InputError(path, "no CT/MR similarity weights; train them with "
                                   f"'deepsim similarity train --out {path}'")
        return LearnedPatchMetric.from_file(path, precision=precision, **kwargs)
    if name not in HAND_MADE_METRICS:
        raise InputError("metric", f"unknown metric {name!r}; choose one of {sorted(HAND_MADE_METRICS) + ['learned']} "
                                   "or join names by '+' (e.g. learned+nmi)")
    return HAND_MADE_METRICS[name](**kwargs)
