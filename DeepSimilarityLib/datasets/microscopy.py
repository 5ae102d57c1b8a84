"""ISBI 2012 serial-section electron microscopy (``microscopy/``): consecutive 512x512 sections.

``train`` has 30 sections with membrane labels (label PNG 0 = membrane, 255 = cell interior);
``test`` has 30 unlabelled sections. Section ``N.png`` follows ``N-1.png`` in the stack.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..image_io import read_image
from ._common import dataset_folder


def load_em_sections(split: str = "train", root=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, membranes)``: ``(N, 512, 512)`` float32 in [0, 1] in section order, and for ``train``
    ``(N, 512, 512)`` uint8 with 1 on membrane pixels (``None`` for ``test``).

    ``root``: the ``microscopy`` folder (default under ``data_root()``).
    """
    if split not in ("train", "test"):
        raise InputError("split", f"must be 'train' or 'test', not {split!r}")
    folder = dataset_folder("microscopy", root) / split
    files = sorted((folder / "image").glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    if not files or not all(p.stem.isdigit() for p in files):
        raise InputError(folder / "image", "expected sections named 0.png, 1.png, ...")
    images = np.stack([_grey(read_image(p, ndim=2).array) for p in files]) / np.float32(255)
    if split == "test":
        return images.astype(np.float32), None
    label_files = [folder / "label" / p.name for p in files]
    missing = [p.name for p in label_files if not p.exists()]
    if missing:
        raise InputError(folder / "label", f"missing labels {missing[:3]}")
    membranes = np.stack([(_grey(read_image(p, ndim=2).array) < 128) for p in label_files]).astype(np.uint8)
    return images.astype(np.float32), membranes


def _grey(a: np.ndarray) -> np.ndarray:
    """One channel of a possibly RGB(A) PNG array."""
    a = np.asarray(a, dtype=np.float32)
    return a[..., 0] if a.ndim == 3 else a
