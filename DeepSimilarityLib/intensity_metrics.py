"""Hand-made intensity similarity measures, batched over samples.

Each function takes two arrays of shape ``(..., N)``: any leading batch axes
and ``N`` intensities per sample (a flattened patch or a whole image), and
returns one value per sample of shape ``(...)``. A whole-image measure is the
same function on a batch of one, so patch heat maps and registration checks
share one definition of each metric. Constant inputs give finite values
(0 information, 0 correlation), never NaN.
"""

from __future__ import annotations

import numpy as np


def _bin_indices(x: np.ndarray, bins: int, value_range) -> np.ndarray:
    """Histogram bin of every value, per sample min..max unless a range is given."""
    if value_range is None:
        lo = x.min(axis=-1, keepdims=True)
        hi = x.max(axis=-1, keepdims=True)
    else:
        lo, hi = value_range
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(((x - lo) / width * bins).astype(np.int64), 0, bins - 1)


def joint_histogram(a, b, bins: int = 16, value_range=None) -> np.ndarray:
    """Joint probability tables ``(..., bins, bins)`` of paired samples ``(..., N)``."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    a, b = np.broadcast_arrays(a, b)
    batch_shape, n = a.shape[:-1], a.shape[-1]
    ia = _bin_indices(a.reshape(-1, n), bins, value_range)
    ib = _bin_indices(b.reshape(-1, n), bins, value_range)
    m = ia.shape[0]
    # One bincount over all samples: offset each sample's cells by its index.
    cells = ia * bins + ib + (np.arange(m, dtype=np.int64) * bins * bins)[:, None]
    counts = np.bincount(cells.ravel(), minlength=m * bins * bins).reshape(m, bins, bins)
    return (counts / float(n)).reshape(batch_shape + (bins, bins))


def _entropy(p: np.ndarray, axes) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axes)


def mutual_information(a, b, bins: int = 16, value_range=None) -> np.ndarray:
    """Mutual information I(A;B) = H(A) + H(B) - H(A,B) in nats, per sample."""
    p = joint_histogram(a, b, bins, value_range)
    ha = _entropy(p.sum(-1), -1)
    hb = _entropy(p.sum(-2), -1)
    return ha + hb - _entropy(p, (-2, -1))


def normalised_mutual_information(a, b, bins: int = 16, value_range=None) -> np.ndarray:
    """Studholme's NMI (H(A) + H(B)) / H(A,B), in [1, 2]; 1 when either input is constant."""
    p = joint_histogram(a, b, bins, value_range)
    ha = _entropy(p.sum(-1), -1)
    hb = _entropy(p.sum(-2), -1)
    hab = _entropy(p, (-2, -1))
    return np.where(hab > 0, (ha + hb) / np.where(hab > 0, hab, 1.0), 1.0)


def linear_correlation(a, b) -> np.ndarray:
    """Pearson linear correlation coefficient per sample, in [-1, 1]; 0 for constant inputs."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(-1)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), 0.0)
