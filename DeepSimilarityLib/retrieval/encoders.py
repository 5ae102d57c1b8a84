"""Loading an :class:`~.encoder.Encoder` from a model file, by the file's ``format`` key.

A model file is either JSON (``{"format": "thumbnail-sign", "side": 16}``) or
a torch checkpoint holding a dict with a ``"format"`` key. Each format has a
loader ``loader(header: dict, path) -> Encoder`` registered with
:func:`register_format`; modules that define learned encoders register theirs
and are listed in ``FORMAT_MODULES`` so that :func:`load_encoder` imports them
on demand (no import cost for the command line otherwise).

Built in, usable without any trained model: the **thumbnail** encoders, a
content-free baseline for tests and demos. ``thumbnail-sign`` shrinks the
image to ``side x side`` by area averaging, subtracts its mean and keeps the
signs (``side**2`` bits, 256 for 16x16); ``thumbnail-dense`` keeps the
zero-mean thumbnail scaled to unit length (``side**2`` floats). They find
images of similar overall layout and brightness pattern, not similar
findings: use a learned model for retrieval by content.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .encoder import pack_bits

FORMAT_MODULES: list[str] = ["DeepSimilarityLib.retrieval.models_io"]  # learned Siamese / hashing models
_LOADERS: dict = {}


def register_format(name: str):
    """Decorator: ``@register_format("osdh")`` on ``loader(header, path) -> Encoder``."""

    def wrap(loader):
        _LOADERS[name] = loader
        return loader

    return wrap


class ThumbnailEncoder:
    """Content-free baseline: signs (``binary``) or unit vector (``dense``) of the zero-mean thumbnail.

    ``encode``: ``(N, side, side)`` float32 in [0, 1] (other sizes are area-resized) ->
    ``(N, side**2 // 8)`` uint8 or ``(N, side**2)`` float32.
    """

    def __init__(self, kind: str = "binary", side: int = 16):
        if kind not in ("binary", "dense"):
            raise InputError("kind", f"must be 'binary' or 'dense', got {kind!r}")
        if side < 2 or (side * side) % 8:
            raise InputError("side", f"side**2 must be a multiple of 8 and side >= 2, got {side}")
        self.kind, self.side, self.size = kind, int(side), int(side) ** 2
        self.image_shape = (self.side, self.side)
        self.model_id = f"thumbnail-{'sign' if kind == 'binary' else 'dense'}-{side}x{side}-v1"

    def encode(self, images: np.ndarray) -> np.ndarray:
        from ..datasets._common import resize_area

        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 3:
            raise InputError("images", f"expected (N, H, W), got shape {x.shape}")
        if x.shape[1:] != self.image_shape:
            x = np.stack([resize_area(a, self.image_shape) for a in x]) if len(x) else x.reshape(0, *self.image_shape)
        flat = x.reshape(len(x), -1)
        centred = flat - flat.mean(axis=1, keepdims=True)
        if self.kind == "binary":
            return pack_bits(centred)
        norm = np.linalg.norm(centred, axis=1, keepdims=True)
        return (centred / np.where(norm > 0, norm, 1.0)).astype(np.float32)

    def header(self) -> dict:
        return {"format": "thumbnail-sign" if self.kind == "binary" else "thumbnail-dense", "side": self.side}


@register_format("thumbnail-sign")
def _thumbnail_sign(header, path=None):
    return ThumbnailEncoder("binary", int(header.get("side", 16)))


@register_format("thumbnail-dense")
def _thumbnail_dense(header, path=None):
    return ThumbnailEncoder("dense", int(header.get("side", 16)))


def _read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        start = f.read(1)
    if start == b"{":
        try:
            header = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(path, f"model file is not valid JSON ({exc})") from None
    else:
        from ..torch_files import load_torch_file

        header = load_torch_file(path, "model file")
    if not isinstance(header, dict) or "format" not in header:
        raise InputError(path, "model file has no 'format' key")
    return header


def load_encoder(model):
    """The encoder of a model file, or of a built-in name ("thumbnail-sign", "thumbnail-dense")."""
    for module in FORMAT_MODULES:
        importlib.import_module(module)
    path = Path(str(model))
    if not path.exists():
        if str(model) in _LOADERS and str(model).startswith("thumbnail"):
            return _LOADERS[str(model)]({}, None)
        raise InputError(model, "model file not found (built-in encoders: thumbnail-sign, thumbnail-dense)")
    header = _read_header(path)
    loader = _LOADERS.get(header["format"])
    if loader is None:
        raise InputError(path, f"unknown model format {header['format']!r}; known: {sorted(_LOADERS)}")
    return loader(header, path)


def save_thumbnail_model(path, kind: str = "binary", side: int = 16) -> Path:
    """Write the JSON model file of a thumbnail encoder (atomically)."""
    from ..cli.common import write_json

    return write_json(ThumbnailEncoder(kind, side).header(), path)
