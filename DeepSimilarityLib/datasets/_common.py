"""Helpers shared by the dataset loaders: locating folders and caching arrays."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..errors import InputError
from ..paths import data_root


def dataset_folder(sub: str, root=None) -> Path:
    """``root`` (or ``data_root()/sub``), which must exist.

    Raises:
        InputError: naming the folder, so that a user with no shared data
            sees which folder is expected and how to point at it.
    """
    folder = Path(root) if root is not None else data_root() / sub
    if not folder.is_dir():
        raise InputError(folder, "data folder not found (set DEEPSIM_DATA to the shared data folder)")
    return folder


def require_file(path: Path) -> Path:
    """``path`` if it exists, else an InputError naming its folder and file."""
    if not path.exists():
        raise InputError(path.parent, f"missing data file {path.name!r}")
    return path


def source_key(version: str, paths) -> str:
    """Cache key from a version string and each source file's name and content.

    Content, not modification time: a copy of the same data (a fresh
    checkout, a re-synced share) keeps its cache, and an edited file loses
    it. The sources are small images, so hashing them costs under a
    millisecond each.
    """
    h = hashlib.sha1(version.encode())
    for p in paths:
        h.update(f"|{Path(p).name}:".encode())
        h.update(hashlib.sha1(Path(p).read_bytes()).digest())
    return h.hexdigest()


def load_cached(path: Path, key: str) -> dict | None:
    """Arrays of the ``.npz`` at ``path`` if it was written with ``key``, else None.

    A stale, truncated or unreadable file counts as a miss (it is rewritten),
    never as an error: the cache only ever saves time.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return {k: f[k] for k in f.files if k != "key"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def save_cached(path: Path, key: str, compress: bool = True, **arrays) -> Path:
    """Write ``arrays`` and ``key`` to a (compressed) ``.npz`` atomically.

    ``compress=False`` suits large float stacks, which zlib shrinks little
    but slowly.

    The file is written under a temporary name in the same folder and renamed
    into place, so a concurrent reader or a crash never sees half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, key=np.array(key), **arrays)
    return path


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix averaging the input cells each output cell covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def resize_area(array: np.ndarray, size) -> np.ndarray:
    """Resize ``(H, W[, C])`` to ``size = (h, w)`` by area averaging, float32.

    Area averaging is the anti-aliased way to shrink photographs (like
    OpenCV's INTER_AREA) and, as two small matrix products, is several times
    faster than a Gaussian pre-filter plus interpolation. When enlarging it
    degrades to nearest-neighbour-like blocks.
    """
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise InputError("size", f"must be two positive integers, got {size}")
    a = np.asarray(array, dtype=np.float32)
    if a.shape[:2] == (h, w):
        return a
    rows, cols = _area_weights(a.shape[0], h), _area_weights(a.shape[1], w)
    out = np.tensordot(rows, a, axes=(1, 0))           # (h, W[, C])
    out = np.tensordot(cols, out, axes=(1, 1))         # (w, h[, C])
    return np.ascontiguousarray(np.swapaxes(out, 0, 1))
