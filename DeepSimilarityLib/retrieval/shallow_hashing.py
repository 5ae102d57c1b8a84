"""Unsupervised shallow hashing baselines on PCA features: ITQ and spectral hashing (numpy only).

* ITQ (Gong & Lazebnik 2011): project centred features on the top k
  principal directions, then learn an orthogonal rotation R minimising the
  quantisation loss ``||B - V R||_F^2`` by alternating ``B = sign(V R)`` and
  the orthogonal Procrustes solution for R.
* Spectral hashing (Weiss, Torralba & Fergus 2008): on the PCA projections,
  bits are thresholded sinusoids ``sin(pi / 2 + m pi (x - lo) / (hi - lo))``
  along single principal directions, choosing the k (direction, mode m)
  pairs of smallest Laplacian eigenvalue ``(m / (hi - lo))^2``.

Features ``(N, D)`` are flattened images (or any fixed feature); models are
fitted on the database/training features only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass
class PCA:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (D, k) orthonormal columns, largest variance first

    @classmethod
    def fit(cls, x: np.ndarray, k: int) -> "PCA":
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or k < 1 or k > min(x.shape):
            raise InputError("features", f"need (N, D) features with k <= min(N, D), got {x.shape} and k={k}")
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, vt[:k].T)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.components


@dataclass
class ITQ:
    pca: PCA
    rotation: np.ndarray  # (k, k) orthogonal

    @classmethod
    def fit(cls, x: np.ndarray, n_bits: int, iterations: int = 50, seed: int = 0) -> "ITQ":
        pca = PCA.fit(x, n_bits)
        v = pca.transform(x)
        rng = np.random.default_rng(seed)
        r, _ = np.linalg.qr(rng.standard_normal((n_bits, n_bits)))
        for _ in range(iterations):
            b = np.where(v @ r >= 0, 1.0, -1.0)
            # Procrustes: R maximising tr(B^T V R), from the SVD of V^T B = U S W^T, is U W^T.
            u, _, wt = np.linalg.svd(v.T @ b)
            r = u @ wt
        return cls(pca, r)

    def quantisation_loss(self, x: np.ndarray) -> float:
        vr = self.pca.transform(x) @ self.rotation
        return float(((np.where(vr >= 0, 1.0, -1.0) - vr) ** 2).sum())

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Features ``(N, D)`` -> ``(N, k)`` signs in {-1, 1}."""
        return np.where(self.pca.transform(x) @ self.rotation >= 0, 1.0, -1.0).astype(np.float32)


@dataclass
class SpectralHashing:
    pca: PCA
    lo: np.ndarray  # (p,) range of each principal direction on the training data
    hi: np.ndarray
    modes: np.ndarray  # (k, 2) int: (direction, mode m >= 1) of each bit

    @classmethod
    def fit(cls, x: np.ndarray, n_bits: int) -> "SpectralHashing":
        p = min(n_bits, *np.shape(x))
        pca = PCA.fit(x, p)
        v = pca.transform(x)
        lo, hi = v.min(0), v.max(0) + 1e-12
        span = hi - lo
        # Enough modes along the widest direction to hold every bit.
        m = np.arange(1, n_bits + 1)
        dirs, modes = np.meshgrid(np.arange(p), m, indexing="ij")
        eig = (modes / span[:, None]) ** 2
        order = np.argsort(eig.ravel(), kind="stable")[:n_bits]
        return cls(pca, lo, hi, np.stack([dirs.ravel()[order], modes.ravel()[order]], 1))

    def encode(self, x: np.ndarray) -> np.ndarray:
        v = self.pca.transform(x)
        d, m = self.modes[:, 0], self.modes[:, 1]
        phase = np.pi / 2 + m * np.pi * (v[:, d] - self.lo[d]) / (self.hi[d] - self.lo[d])
        return np.where(np.sin(phase) >= 0, 1.0, -1.0).astype(np.float32)


def fit_shallow(method: str, train_features: np.ndarray, n_bits: int, seed: int = 0):
    """``'itq'`` or ``'sh'`` fitted on ``(N, D)`` features; the result has ``encode(x) -> (M, k)`` signs."""
    if method == "itq":
        return ITQ.fit(train_features, n_bits, seed=seed)
    if method == "sh":
        return SpectralHashing.fit(train_features, n_bits)
    raise InputError("method", f"unknown shallow hashing method {method!r}; choose 'itq' or 'sh'")
