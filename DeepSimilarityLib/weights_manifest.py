"""The weights manifest (``manifest.json`` beside the weight files): writing it and checking files against it.

One format for the writer (``deepsim train all``) and the reader
(:func:`DeepSimilarityLib.paths.shipped_weights`):
``{"models": [{"file", "kind", "architecture", "training_data",
"hyper_parameters", "date", "sha256", "size_bytes", "command", "evaluation",
...}]}``. A file whose sha256 differs from its entry is refused, since the
entry's evaluation numbers would no longer describe it.

No torch at import: the reader runs before any network is loaded.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from .atomic import atomic_output
from .errors import InputError

MANIFEST = "manifest.json"
MAX_BYTES = 10 * 2 ** 20  # shipped weights stay small: the repository carries them
# Metadata keys that describe a run rather than its recipe (kept out of "hyper_parameters").
_NOT_HYPER = {"data", "date", "kind", "train_seconds", "train_accuracy", "held_out_scores", "label_names",
              "train_images", "held_out_images", "pairs", "settings", "final_loss"}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder) -> dict:
    """The manifest of ``folder`` (``{"models": []}`` when there is none); InputError when it is damaged."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {"models": []}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), list):
            raise ValueError("no 'models' list")
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a weights manifest ({exc})") from None
    return manifest


def entry_for(folder, name: str) -> dict | None:
    """The manifest entry of file ``name`` in ``folder``, or None (also for a missing or damaged manifest)."""
    try:
        models = read_manifest(folder)["models"]
    except InputError:
        return None
    return next((e for e in models if isinstance(e, dict) and e.get("file") == name), None)


def verified_weights(folder, name: str) -> Path:
    """``folder/name`` after checking it against the manifest: present, listed, same sha256, under 10 MB.

    A missing file names the command that trains it.
    """
    folder = Path(folder)
    path = folder / name
    entry = entry_for(folder, name)
    if not path.is_file():
        how = f"; train it with: {entry['command']}" if entry and entry.get("command") else ""
        raise InputError(path, f"shipped weight file is missing{how}")
    if entry is None:
        raise InputError(folder / MANIFEST, f"has no entry for {name}")
    digest = file_sha256(path)
    if digest != entry.get("sha256"):
        raise InputError(path, f"sha256 {digest[:12]}... does not match the manifest's "
                               f"{str(entry.get('sha256'))[:12]}...; "
                               f"the file is damaged or was retrained without updating {MANIFEST}")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(path, f"is {path.stat().st_size / 2 ** 20:.1f} MB, over the {MAX_BYTES // 2 ** 20} MB limit")
    return path


def describe_model_file(path) -> tuple[dict, dict]:
    """``(config, metadata)`` of a weight file written by any of the project's trainers."""
    from .torch_files import load_torch_file

    blob = load_torch_file(path, "weight file")
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict):
        raise InputError(path, "not a DeepSimilarity weight file (no config)")
    return dict(blob["config"]), dict(blob.get("metadata") or {})


def model_entry(path, kind: str, command: str, training_folder: str, evaluation: dict | None = None,
                **extra) -> dict:
    """The manifest entry of a freshly trained weight file, from its config and metadata.

    ``training_folder``: the shared-data folder it was trained on; ``extra``
    keys (e.g. ``usage``) are added as they are. A file over 10 MB is an error.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise InputError(path, f"is {size / 2 ** 20:.1f} MB, over the {MAX_BYTES // 2 ** 20} MB limit for "
                               f"shipped weights")
    config, metadata = describe_model_file(path)
    hyper = dict(metadata.get("settings") or {})
    hyper.update({k: v for k, v in metadata.items() if k not in _NOT_HYPER})
    if hyper.get("features"):
        names = [Path(p).name for p in (hyper["features"] if isinstance(hyper["features"], list) else
                                         [hyper["features"]])]
        hyper["features"] = names[0] if len(names) == 1 else names  # the files beside it, not this machine's paths
    training_data = {"folder": training_folder, "description": metadata.get("data")}
    training_data.update({k: metadata[k] for k in ("train_images", "held_out_images", "pairs") if k in metadata})
    entry = {"file": path.name, "kind": kind, "architecture": config, "training_data": training_data,
             "hyper_parameters": hyper, "date": metadata.get("date") or datetime.date.today().isoformat(),
             "sha256": file_sha256(path), "size_bytes": size, "command": command,
             "train_seconds": metadata.get("train_seconds")}
    if "final_loss" in metadata:
        entry["final_training_loss"] = metadata["final_loss"]
    if metadata.get("held_out_scores"):
        entry["held_out_scores"] = metadata["held_out_scores"]
    entry["evaluation"] = evaluation or {}
    entry.update(extra)
    return entry


def write_manifest(folder, entries: list[dict], **header) -> Path:
    """Write ``folder/manifest.json`` atomically: ``entries`` replace those of the same file, others stay.

    Every entry is checked against its file first (sha256, size), so a
    manifest never describes a file other than the one beside it.
    """
    folder = Path(folder)
    for e in entries:
        path = folder / e["file"]
        if not path.is_file() or file_sha256(path) != e["sha256"]:
            raise InputError(path, "does not match the entry about to be written")
        if path.stat().st_size > MAX_BYTES:
            raise InputError(path, f"is over the {MAX_BYTES // 2 ** 20} MB limit for shipped weights")
    new = {e["file"] for e in entries}
    kept = [e for e in read_manifest(folder)["models"] if e.get("file") not in new]
    manifest = dict(read_manifest(folder), **header)
    manifest["models"] = kept + list(entries)
    target = folder / MANIFEST
    with atomic_output(target) as tmp, open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, default=float)
        f.write("\n")
    return target
