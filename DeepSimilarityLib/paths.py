"""Where the project's data, weights and caches live."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The shared real-data folder: ``$DEEPSIM_DATA`` or ``../shared/data`` beside the project.

    In an installed Slicer extension the library sits beside the module
    script, so the environment variable is the way to point at the data.
    """
    env = os.environ.get("DEEPSIM_DATA")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


def has_shared_data(sub: str = "") -> bool:
    return (data_root() / sub).exists()


def missing_shared_data(sub: str) -> bool:
    """True, after saying on stderr which folder is missing, when the shared data lack ``sub``.

    For scripts that need the data to do anything at all (benchmarks, evaluations): they exit 2.
    """
    if has_shared_data(sub):
        return False
    print(f"needs {data_root() / sub} (see the shared data README; $DEEPSIM_DATA moves the folder); "
          "nothing to do", file=sys.stderr)
    return True


def cache_dir() -> Path:
    """Cache for derived data (e.g. registered slice pairs): ``$DEEPSIM_CACHE`` or ``~/.cache/deepsimilarity``."""
    env = os.environ.get("DEEPSIM_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "deepsimilarity"
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_dir() -> Path:
    """Shipped weights: ``$DEEPSIM_WEIGHTS`` or ``weights/`` in the project (or beside the installed library)."""
    env = os.environ.get("DEEPSIM_WEIGHTS")
    if env:
        return Path(env)
    for candidate in (PROJECT_ROOT / "weights", Path(__file__).resolve().parent / "weights"):
        if candidate.exists():
            return candidate
    return PROJECT_ROOT / "weights"


def shipped_weights(name: str) -> Path:
    """Path of a shipped weight file, checked against ``manifest.json`` in :func:`weights_dir`.

    A missing file raises :class:`InputError` with the command that trains it;
    a file whose sha256 differs from the manifest's (damaged, or replaced
    without updating the manifest) is refused, since its evaluation numbers
    would no longer describe it. The format and the check live in
    :mod:`.weights_manifest`, beside the writer (``deepsim train all``).
    """
    from .weights_manifest import verified_weights

    return verified_weights(weights_dir(), name)
