"""The portable export of a case database: one ``.npz`` that any backend can import.

Arrays (no pickled objects, so loading needs no ``allow_pickle``):
``codes`` ``(N, width)`` uint8 or float32; ``records`` UTF-8 JSON of
``[[source, labels, metadata], ...]``; ``info`` UTF-8 JSON with ``model_id``,
``kind``, ``size``, ``created``, ``format`` and ``schema_version``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..errors import InputError
from .case_store import SCHEMA_VERSION, check_kind, dumps, now

FORMAT = "deepsim-case-export"


def _json_array(value) -> np.ndarray:
    return np.frombuffer(dumps(value).encode("utf-8"), dtype=np.uint8)


def write_export(store, path) -> dict:
    """Write every case of ``store`` to ``path`` (temporary file, then rename); returns the info written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(path, f"folder {path.parent} does not exist")
    codes, records = [], []
    for sources, labels, metadata, chunk in store._rows():
        codes.append(chunk)
        records.extend([s, l, m] for s, l, m in zip(sources, labels, metadata))
    codes = np.concatenate(codes) if codes else np.empty((0, store.code_width), store.code_dtype)
    info = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "model_id": store.model_id, "kind": store.kind,
            "size": store.size, "model": getattr(store, "model", ""), "created": store.created, "exported": now(),
            "cases": len(records)}
    with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, codes=codes, records=_json_array(records), info=_json_array(info))
    return info


def read_export(path):
    """``(info, sources, codes, labels, metadata)`` of an export; InputError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            info = json.loads(f["info"].tobytes().decode("utf-8"))
            records = json.loads(f["records"].tobytes().decode("utf-8"))
            codes = f["codes"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a case database export ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InputError(path, "not a case database export (no format marker)")
    if info.get("schema_version") != SCHEMA_VERSION:
        raise InputError(path, f"export schema version {info.get('schema_version')}; this version reads "
                               f"{SCHEMA_VERSION}")
    try:
        check_kind(info["kind"], info["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"damaged export info ({type(exc).__name__}: {exc})") from None
    # checked here, before an import creates a database: the codes of this kind and size, one record per code
    width, dtype = (info["size"] // 8, np.uint8) if info["kind"] == "binary" else (info["size"], np.float32)
    if codes.dtype != dtype or codes.ndim != 2 or codes.shape[1] != width:
        raise InputError(path, f"codes of dtype {codes.dtype} and shape {codes.shape}; a {info['kind']} export of "
                               f"size {info['size']} holds (N, {width}) {np.dtype(dtype).name}")
    if not isinstance(records, list) or not all(
            isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and isinstance(r[1], list)
            and isinstance(r[2], dict) for r in records):
        raise InputError(path, "damaged: records are not [source, labels, metadata] triples")
    if len(records) != len(codes):
        raise InputError(path, f"{len(records)} records for {len(codes)} codes: the file is damaged")
    sources = [r[0] for r in records]
    return info, sources, codes, [r[1] for r in records], [r[2] for r in records]
