"""The contract between retrieval models and the case database.

A model that fills a database is wrapped as an :class:`Encoder`: it turns a
batch of images into binary codes (hashing models) or dense embeddings
(Siamese models). The database stores ``model_id`` with every code and
refuses to mix codes of different models, so ``model_id`` must change
whenever the weights do (e.g. the sha256 of the weight file).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

KINDS = ("binary", "dense")


@runtime_checkable
class Encoder(Protocol):
    """Images ``(N, H, W)`` float32 in [0, 1] (grey) -> codes.

    ``kind == "binary"``: ``encode`` returns packed bits ``(N, n_bits // 8)`` uint8
    (``np.packbits`` order, bit 1 = positive hash activation) and ``size`` is n_bits.
    ``kind == "dense"``: ``encode`` returns ``(N, size)`` float32 embeddings compared by
    Euclidean distance.
    """

    model_id: str
    kind: str
    size: int
    image_shape: tuple  # (H, W) the encoder resizes to; inputs of other sizes are resized by the caller

    def encode(self, images: np.ndarray) -> np.ndarray: ...


def pack_bits(signs: np.ndarray) -> np.ndarray:
    """``(N, k)`` real activations or {0, 1} bits -> packed ``(N, k // 8)`` uint8 (bit set where > 0)."""
    signs = np.asarray(signs)
    if signs.ndim != 2 or signs.shape[1] % 8:
        raise ValueError(f"codes must be (N, k) with k a multiple of 8, got {signs.shape}")
    return np.packbits(signs > 0, axis=1)


def unpack_bits(codes: np.ndarray, n_bits: int) -> np.ndarray:
    """Packed ``(N, n_bits // 8)`` uint8 -> ``(N, n_bits)`` uint8 of 0/1."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=n_bits)
