"""The one way the project writes and reads its torch files (networks, training checkpoints).

Writes go to a temporary file that is flushed to disk before it replaces the
destination, so a crash or a kill leaves the old file or the new one, never
half of one. Reads load on the CPU with ``weights_only`` (a file cannot run
code) and turn the many exception types torch raises for a damaged or foreign
file into one :class:`~.errors.InputError` that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .atomic import atomic_output
from .errors import InputError, first_line


def save_torch_file(payload, path, suffix: str = "") -> Path:
    """Write ``payload`` (tensors, dicts, lists, numbers, strings) to ``path`` atomically and durably."""
    path = Path(path)
    with atomic_output(path, suffix=suffix) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_torch_file(path, what: str, hint: str = ""):
    """What :func:`save_torch_file` wrote at ``path``.

    ``what`` names the kind of file in the errors ("network file", "training checkpoint"); ``hint``
    is appended to them (e.g. "; delete it to start over"). Structure checks stay with the caller.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated, foreign or pickled-code file
        raise InputError(path, f"not a readable {what} ({type(exc).__name__}: {first_line(exc)}){hint}") from None
