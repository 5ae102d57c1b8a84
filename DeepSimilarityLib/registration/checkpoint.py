"""Saving and loading the registration package's networks: weights plus the config that rebuilds them."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_output
from ..errors import InputError

FORMAT = 1


def save_checkpoint(path, kind: str, config: dict, state_dict: dict, metadata: dict | None = None) -> Path:
    """Write ``{kind, config, state_dict, metadata}`` atomically; ``config`` rebuilds the network."""
    path = Path(path)
    if not path.parent.exists():
        raise InputError(path, f"folder {path.parent} does not exist")
    blob = {"format": FORMAT, "kind": kind, "config": dict(config),
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "metadata": dict(metadata or {})}
    with atomic_output(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)
    return path


def load_checkpoint(path, kind: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; errors name the file when it is not a ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise InputError(path, f"cannot read weights ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise InputError(path, "not a DeepSimilarity registration checkpoint")
    if blob.get("kind") != kind:
        raise InputError(path, f"holds a {blob.get('kind')!r} network, expected {kind!r}")
    return blob


def load_state(net: torch.nn.Module, blob: dict, path) -> torch.nn.Module:
    """Load weights into ``net``; a mismatch (another architecture) is an :class:`InputError`."""
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise InputError(path, f"weights do not fit the architecture in its config ({first})") from None
    return net.eval()
