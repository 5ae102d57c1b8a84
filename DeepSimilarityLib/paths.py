"""Where the project's data, weights and caches live."""

from __future__ import annotations

import os
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
    would no longer describe it.
    """
    import hashlib
    import json

    from .errors import InputError

    folder = weights_dir()
    path = folder / name
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        entry = next(e for e in manifest["models"] if e.get("file") == name)
    except (OSError, ValueError, KeyError, StopIteration):
        entry = None
    if not path.is_file():
        how = f"; train it with: {entry['command']}" if entry and entry.get("command") else ""
        raise InputError(path, f"shipped weight file is missing{how}")
    if entry is None:
        raise InputError(folder / "manifest.json", f"has no entry for {name}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry.get("sha256"):
        raise InputError(path, f"sha256 {digest[:12]}... does not match the manifest's {str(entry.get('sha256'))[:12]}...; "
                               "the file is damaged or was retrained without updating weights/manifest.json")
    return path
