"""Synthetic CT/MR patch pairs for tests and timings (no real data needed).

The "CT" is a smooth two-scale random texture with uniform intensities in
[0, 1]; the "MR" is an inverted, non-linear intensity map of it plus a little
noise, so intensities alone do not match and the network has to learn the
relation. Positives pair patches at the same position; negatives pair the CT
patch with the MR patch at another random position at least 8 pixels away.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def synthetic_images(size: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like texture and its MR-like counterpart, both ``(size, size)`` float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    ct = ndimage.gaussian_filter(rng.standard_normal((size, size)), 6.0) * 4.0
    ct += ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    # Rank transform: uniform intensities over [0, 1], like a histogram-equalised image.
    ct = (np.argsort(np.argsort(ct.ravel())).reshape(ct.shape) + 0.5) / ct.size
    mr = 0.9 - 0.8 * ct ** 2 + 0.03 * rng.standard_normal(ct.shape)
    return ct.astype(np.float32), np.clip(mr, 0, 1).astype(np.float32)


def synthetic_pairs(n: int, patch: int = 17, seed: int = 0, size: int = 192):
    """``n`` pairs: ``ct``, ``mr`` ``(n, patch**2)`` float32 and ``labels`` ``(n,)`` int64 (even rows 1 = match)."""
    rng = np.random.default_rng(seed)
    ct_img, mr_img = synthetic_images(size, seed)
    half = patch // 2
    centres = rng.integers(half, size - half, (n, 2))
    labels = (np.arange(n) % 2 == 0).astype(np.int64)
    others = centres.copy()
    for i in np.flatnonzero(labels == 0):
        while np.abs(others[i] - centres[i]).max() < 8:
            others[i] = rng.integers(half, size - half, 2)

    def cut(img, c):
        return img[c[0] - half:c[0] + half + 1, c[1] - half:c[1] + half + 1].ravel()

    return (np.stack([cut(ct_img, c) for c in centres]), np.stack([cut(mr_img, c) for c in others]), labels)
