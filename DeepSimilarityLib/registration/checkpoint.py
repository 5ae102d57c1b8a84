"""Saving and loading the registration package's networks: weights plus the config that rebuilds them."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..torch_files import load_torch_file, save_torch_file

FORMAT = 1


def save_checkpoint(path, kind: str, config: dict, state_dict: dict, metadata: dict | None = None) -> Path:
    """Write ``{kind, config, state_dict, metadata}`` atomically; ``config`` rebuilds the network."""
    path = Path(path)
    if not path.parent.exists():
        raise InputError(path, f"folder {path.parent} does not exist")
    blob = {"format": FORMAT, "kind": kind, "config": dict(config),
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "metadata": dict(metadata or {})}
    return save_torch_file(blob, path, suffix=".pt")


def load_checkpoint(path, kind: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; errors name the file when it is not a ``kind``."""
    blob = load_torch_file(path, "weights file")
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


def load_network(path, kind: str, build, what: str) -> torch.nn.Module:
    """A frozen network in eval mode, rebuilt by ``build(**config)`` from the ``kind`` checkpoint at ``path``.

    ``net.metadata`` holds the file's metadata; ``what`` names the network in the error for a config
    that ``build`` rejects.
    """
    blob = load_checkpoint(path, kind)
    try:
        net = build(**blob["config"])
    except TypeError as exc:
        raise InputError(path, f"config does not describe a {what} ({exc})") from None
    net = load_state(net, blob, path)
    net.metadata = blob["metadata"]
    return net.requires_grad_(False)
