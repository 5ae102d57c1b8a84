"""Malformed inputs for the readers and the command line, generated as (damaged file) x (consumer) cases.

Used by ``test_fuzz_inputs.py`` (one pytest case each) and by
``benchmarks/fuzz_inputs.py`` (runs them all, records the outcomes). A case
passes when the library raises an ``InputError`` / ``ValueError`` naming the
file, or the command line exits with code 2 and one ``deepsim: error:``
line naming it, no traceback, and none of its output files exist; and the
damaged file is left unchanged.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from DeepSimilarityLib.errors import InputError

RNG_SEED = 0


def _random_bytes(n: int, seed: int = RNG_SEED) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _image(shape=(64, 64), seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 200).astype(np.float32)


def _write(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write_sitk(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


# -- damaged images -------------------------------------------------------------------------------

def _valid(ext):
    return lambda d: _write(_image().astype(np.uint8) if ext == ".png" else _image(), d / f"valid{ext}")


def _nrrd_header(d: Path, name: str, header: str, data: bytes = b"\0" * 16) -> Path:
    path = d / name
    path.write_bytes(f"NRRD0004\n{header}\nencoding: raw\nendian: little\n\n".encode() + data)
    return path


def _nifti_with_dims(d: Path, name: str, dims, datatype: int = 16, bitpix: int = 32, data: bytes = b"\0" * 64) -> Path:
    """A NIfTI-1 file declaring ``dims``, followed by ``data``: huge or zero sizes, raw values (NaN)."""
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    dim = [len(dims)] + list(dims) + [1] * (7 - len(dims))
    struct.pack_into("<8h", hdr, 40, *dim)
    struct.pack_into("<hh", hdr, 70, datatype, bitpix)
    struct.pack_into("<8f", hdr, 76, *([1.0] * 8))
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    hdr[344:348] = b"n+1\0"
    path = d / name
    with gzip.open(path, "wb") as f:
        f.write(bytes(hdr) + b"\0" * 4 + data)
    return path


def _complex_nifti(d: Path) -> Path:
    return _write((_image() + 1j * _image(seed=1)).astype(np.complex64), d / "complex.nii.gz")


def _nan(ext):
    def make(d):
        a = _image()
        a[10, 10] = np.nan if ext != ".mha" else np.inf
        return _write(a, d / f"nonfinite{ext}")
    return make


IMAGES: dict[str, Callable[[Path], Path]] = {}
for _ext in (".nii.gz", ".nrrd", ".png", ".mha"):
    _key = _ext.strip(".").replace(".", "")
    IMAGES[f"{_key}-truncated"] = (lambda e: lambda d: _truncate(_valid(e)(d), 0.5))(_ext)
    IMAGES[f"{_key}-header-only"] = (lambda e: lambda d: _truncate(_valid(e)(d), 0.02))(_ext)
    IMAGES[f"{_key}-random-bytes"] = (lambda e: lambda d: _put(d / f"random{e}", _random_bytes(4096)))(_ext)
    IMAGES[f"{_key}-empty"] = (lambda e: lambda d: _put(d / f"empty{e}", b""))(_ext)
IMAGES.update({
    # (no NIfTI NaN case: SimpleITK's NIfTI reader turns NaN voxels into 0 before the library sees them)
    "nrrd-nan": _nan(".nrrd"),
    "mha-inf": _nan(".mha"),
    "nii-4d": lambda d: _write_sitk(sitk.JoinSeries([sitk.GetImageFromArray(_image((3, 16, 16)))] * 2), d / "4d.nii.gz"),
    "nii-16-components": lambda d: _write(_image((3, 16, 16)), d / "multi.nii.gz") and _write_sitk(
        sitk.GetImageFromArray(_image((3, 16, 16, 16)), isVector=True), d / "multi.nii.gz"),
    "nrrd-1d": lambda d: _nrrd_header(d, "1d.nrrd", "type: float\ndimension: 1\nsizes: 4", b"\0" * 16),
    "nrrd-zero-size": lambda d: _nrrd_header(d, "zero.nrrd", "type: float\ndimension: 2\nsizes: 0 4"),
    "nrrd-huge-size": lambda d: _nrrd_header(d, "huge.nrrd", "type: float\ndimension: 3\nsizes: 100000 100000 100000"),
    "nii-huge-size": lambda d: _nifti_with_dims(d, "huge.nii.gz", (30000, 30000, 30000)),
    "nii-zero-size": lambda d: _nifti_with_dims(d, "zero.nii.gz", (0, 16)),
    "nii-complex": _complex_nifti,
    "nrrd-bad-type": lambda d: _nrrd_header(d, "badtype.nrrd", "type: string\ndimension: 2\nsizes: 2 2"),
    "png-text": lambda d: _put(d / "text.png", "not an image\n".encode()),
    "folder-without-dicom": lambda d: _folder(d / "nodicom"),
})


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _good_pair(d: Path) -> tuple[Path, Path]:
    return _write(_image(), d / "good_ct.nii.gz"), _write(_image(seed=1), d / "good_mr.nii.gz")


def image_consumers():
    from DeepSimilarityLib.image_io import read_image

    def library(bad, d):
        return ("lib", lambda: read_image(bad), [])

    def info(bad, d):
        return ("cli", ["info", str(bad)], [])

    def heatmap(bad, d):
        _, mr = _good_pair(d)
        outs = [d / "heat.nii.gz", d / "heat.json"]
        return ("cli", ["similarity", "heatmap", "--ct", str(bad), "--mr", str(mr), "--index", "20,20", "--patch-size",
                        "5", "--neighbourhood", "9", "--out", str(outs[0]), "--out-json", str(outs[1])], outs)

    def register(bad, d):
        ct, _ = _good_pair(d)
        outs = [d / "warped.nii.gz", d / "t.tfm"]
        return ("cli", ["register", "--fixed", str(ct), "--moving", str(bad), "--out-warped", str(outs[0]),
                        "--out-transform", str(outs[1])], outs)

    return {"read_image": library, "info": info, "heatmap": heatmap, "register": register}


# `deepsim info` shows an image's values, NaN included (that is what it is for).
# Database damage that an operation does not touch must not stop it: `index info` counts rows without
# decoding codes, and a query whose matches avoid the damaged row answers.
ACCEPTED = {("nrrd-nan", "info"), ("mha-inf", "info"), ("short-codes", "info"), ("labels-not-json", "query")}


# -- damaged weight files -------------------------------------------------------------------------

def _shipped(name: str) -> Path:
    from DeepSimilarityLib.paths import weights_dir

    return weights_dir() / name


WEIGHT_FILES = {"ctmr": "ctmr_similarity.pt", "features": "deepsim_features_seg_2d.pt",
                "registration": "registration_deepsim_seg_2d.pt", "retrieval": "siamese_fundus.pt"}


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _torch_save(obj, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


class _Foreign:  # a pickled object that weights_only loading must refuse, not execute
    pass


def _wrong_architecture(kind: str, d: Path) -> Path:
    """The shipped file of ``kind`` with its config changed so that the weights no longer fit."""
    import torch

    blob = torch.load(_shipped(WEIGHT_FILES[kind]), map_location="cpu", weights_only=True)
    config = blob["config"]
    if kind == "ctmr":
        config["layers"] = [100, 50, 20]
    elif kind == "retrieval":
        config["width"] = 8
    else:
        config["channels"] = [8] * len(config["channels"])
    return _torch_save(blob, d / f"arch_{kind}.pt")


def weight_damage(kind: str) -> dict:
    other = {"ctmr": "retrieval", "features": "registration", "registration": "features", "retrieval": "ctmr"}[kind]
    return {
        "truncated": lambda d: _truncate(_copy(_shipped(WEIGHT_FILES[kind]), d / "trunc.pt"), 0.5),
        "random-bytes": lambda d: _put(d / "random.pt", _random_bytes(2048)),
        "empty": lambda d: _put(d / "empty.pt", b""),
        "plain-tensor": lambda d: _torch_save(__import__("torch").zeros(3), d / "tensor.pt"),
        "pickled-object": lambda d: _put(d / "obj.pt", pickle.dumps(_Foreign())),
        "wrong-architecture": lambda d: _wrong_architecture(kind, d),
        "other-kind": lambda d: _copy(_shipped(WEIGHT_FILES[other]), d / f"other_{other}.pt"),
    }


def weight_consumers():
    from DeepSimilarityLib.ctmr.similarity_net import load_net
    from DeepSimilarityLib.registration.feature_net import load_feature_net
    from DeepSimilarityLib.registration.network import load_registration_net
    from DeepSimilarityLib.retrieval.models_io import load_retrieval_model

    loaders = {"ctmr": load_net, "features": load_feature_net, "registration": load_registration_net,
               "retrieval": load_retrieval_model}

    def library(kind):
        return lambda bad, d: ("lib", lambda: loaders[kind](bad), [])

    def heatmap(bad, d):
        ct, mr = _good_pair(d)
        out = d / "heat.nii.gz"
        return ("cli", ["similarity", "heatmap", "--ct", str(ct), "--mr", str(mr), "--index", "20,20", "--metric",
                        "learned", "--weights", str(bad), "--out", str(out)], [out])

    def deformable(bad, d):
        ct, mr = _good_pair(d)
        out = d / "warped.nii.gz"
        return ("cli", ["register", "--method", "deformable", "--fixed", str(ct), "--moving", str(mr), "--net",
                        str(bad), "--out-warped", str(out)], [out])

    def index_create(bad, d):
        db = d / "new.db"
        return ("cli", ["index", "create", "--db", str(db), "--model", str(bad)], [db])

    return {"ctmr": {"load": library("ctmr"), "heatmap": heatmap},
            "features": {"load": library("features")},
            "registration": {"load": library("registration"), "register": deformable},
            "retrieval": {"load": library("retrieval"), "index-create": index_create}}


# -- damaged case databases and exports -----------------------------------------------------------

def _thumbnail_db(d: Path, n: int = 300) -> Path:
    from DeepSimilarityLib.retrieval.case_database import CaseDatabase
    from DeepSimilarityLib.retrieval.case_store import NewCase
    from DeepSimilarityLib.retrieval.encoders import ThumbnailEncoder, save_thumbnail_model

    enc = ThumbnailEncoder()
    model = save_thumbnail_model(d / "model.json")
    path = d / "valid.db"
    db = CaseDatabase.create(path, enc.model_id, enc.kind, enc.size, model=str(model))
    images = np.random.default_rng(0).random((n, 16, 16)).astype(np.float32)
    db.add([NewCase(f"case{i:04d}", image=images[i], labels=["A"]) for i in range(n)], enc, progress=False)
    db._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


def _sql(d: Path, statements: list[str], name: str, base: bool = True) -> Path:
    path = _thumbnail_db(d) if base else d / name
    with contextlib.closing(sqlite3.connect(path)) as c:
        for s in statements:
            c.execute(s)
        c.commit()
    if base:
        path = path.rename(d / name)
    return path


DATABASES = {
    "truncated": lambda d: _truncate(_thumbnail_db(d), 0.5).rename(d / "trunc.db") or d / "trunc.db",
    "header-only": lambda d: _truncate(_thumbnail_db(d), 0.01).rename(d / "head.db") or d / "head.db",
    "random-bytes": lambda d: _put(d / "random.db", _random_bytes(8192)),
    "empty": lambda d: _put(d / "empty.db", b""),
    "other-schema": lambda d: _sql(d, ["CREATE TABLE foo (x INTEGER)"], "other.db", base=False),
    "schema-version-99": lambda d: _sql(d, ["UPDATE info SET value = '99' WHERE key = 'schema_version'"], "v99.db"),
    "info-without-model": lambda d: _sql(d, ["DELETE FROM info WHERE key = 'model_id'"], "nomodel.db"),
    "bad-size": lambda d: _sql(d, ["UPDATE info SET value = 'many' WHERE key = 'size'"], "badsize.db"),
    "no-cases-table": lambda d: _sql(d, ["DROP TABLE cases"], "nocases.db"),
    "short-codes": lambda d: _sql(d, ["UPDATE cases SET code = x'00' WHERE id = 5"], "shortcode.db"),
    "labels-not-json": lambda d: _sql(d, ["UPDATE cases SET labels = '[oops' WHERE id = 7"], "badlabels.db"),
}


def database_consumers():
    from DeepSimilarityLib.retrieval.databases import open_database

    def library(bad, d):
        def call():
            with open_database(bad) as db:
                db.info()
                db.query_images(np.zeros((1, 16, 16), np.float32), _thumbnail_encoder(), k=3)
        return ("lib", call, [])

    def info(bad, d):
        out = d / "info.json"
        return ("cli", ["index", "info", "--db", str(bad), "--out-json", str(out)], [out])

    def query(bad, d):
        image = _write(_image((16, 16)).astype(np.uint8), d / "q.png")
        out = d / "q.json"
        return ("cli", ["query", "--db", str(bad), "--image", str(image), "--model", str(_thumbnail_model(d)),
                        "--out-json", str(out)], [out])

    return {"open": library, "info": info, "query": query}


def _thumbnail_encoder():
    from DeepSimilarityLib.retrieval.encoders import ThumbnailEncoder

    return ThumbnailEncoder()


def _thumbnail_model(d: Path) -> Path:
    from DeepSimilarityLib.retrieval.encoders import save_thumbnail_model

    return save_thumbnail_model(d / "model.json")


def _export(d: Path) -> Path:
    from DeepSimilarityLib.retrieval.databases import open_database
    from DeepSimilarityLib.retrieval.portable import write_export

    with open_database(_thumbnail_db(d, 20)) as db:
        write_export(db, d / "valid.npz")
    return d / "valid.npz"


def _npz(d: Path, name: str, **arrays) -> Path:
    """An export with some arrays replaced (``None`` drops one)."""
    with np.load(_export(d), allow_pickle=False) as f:
        content = {k: f[k] for k in f.files}
    content.update(arrays)
    content = {k: v for k, v in content.items() if v is not None}
    path = d / name
    with open(path, "wb") as f:
        np.savez(f, **content)
    return path


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


EXPORTS = {
    "truncated": lambda d: _truncate(_export(d), 0.5),
    "random-bytes": lambda d: _put(d / "random.npz", _random_bytes(4096)),
    "empty": lambda d: _put(d / "empty.npz", b""),
    "missing-codes": lambda d: _npz(d, "nocodes.npz", codes=None),
    "object-array": lambda d: _pickled_npz(d),
    "string-codes": lambda d: _npz(d, "strcodes.npz", codes=np.array(["a"] * 20)),
    "complex-codes": lambda d: _npz(d, "cplx.npz", codes=np.zeros((20, 32), np.complex64)),
    "bool-codes": lambda d: _npz(d, "bool.npz", codes=np.zeros((20, 32), bool)),
    "codes-wrong-width": lambda d: _npz(d, "width.npz", codes=np.zeros((20, 3), np.uint8)),
    "records-mismatch": lambda d: _npz(d, "fewrec.npz", records=_json_bytes([["a", [], {}]])),
    "records-not-triples": lambda d: _npz(d, "badrec.npz", records=_json_bytes([1] * 20)),
    "info-without-kind": lambda d: _npz(d, "nokind.npz", info=_json_bytes(
        {"format": "deepsim-case-export", "schema_version": 1, "size": 256, "model_id": "x"})),
    "info-not-json": lambda d: _npz(d, "badinfo.npz", info=np.frombuffer(b"{nope", np.uint8)),
}


def _pickled_npz(d: Path) -> Path:
    path = d / "pickled.npz"
    with open(path, "wb") as f:
        np.savez(f, codes=np.array([_Foreign()], dtype=object), records=_json_bytes([]), info=_json_bytes({}))
    return path


def export_consumers():
    from DeepSimilarityLib.retrieval.portable import read_export

    def library(bad, d):
        return ("lib", lambda: read_export(bad), [])

    def import_cli(bad, d):
        db = d / "imported.db"
        return ("cli", ["index", "import", "--db", str(db), "--file", str(bad)], [db])

    return {"read_export": library, "import": import_cli}


# -- the cases and how each is judged -------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    make_input: Callable[[Path], Path]
    consumer: Callable  # (bad path, folder) -> ("lib", callable, outputs) or ("cli", argv, outputs)
    accepted: bool = False  # a valid use of an odd input (e.g. `info` on NaN voxels): must succeed


def all_cases() -> list[Case]:
    cases = []
    for consumer_name, consumer in image_consumers().items():
        for name, make in IMAGES.items():
            cases.append(Case(f"image/{name}/{consumer_name}", make, consumer,
                              accepted=(name, consumer_name) in ACCEPTED))
    for kind, consumers in weight_consumers().items():
        for consumer_name, consumer in consumers.items():
            for name, make in weight_damage(kind).items():
                cases.append(Case(f"weights-{kind}/{name}/{consumer_name}", make, consumer))
    for consumer_name, consumer in database_consumers().items():
        for name, make in DATABASES.items():
            cases.append(Case(f"database/{name}/{consumer_name}", make, consumer,
                              accepted=(name, consumer_name) in ACCEPTED))
    for consumer_name, consumer in export_consumers().items():
        for name, make in EXPORTS.items():
            cases.append(Case(f"export/{name}/{consumer_name}", make, consumer))
    return cases


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """``(outcome, detail)``: outcome ``"ok"`` when the case behaved, else ``"accepted"``, ``"unclear"`` or ``"crash"``.

    Whatever the outcome, the damaged input itself must be left as it was.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bad = case.make_input(folder)
    how, call, outputs = case.consumer(bad, folder)
    before = bad.read_bytes() if bad.is_file() else None
    outcome, detail = _judge(case, bad, how, call, outputs)
    if outcome == "ok" and before is not None and bad.read_bytes() != before:
        return "unclear", f"{bad.name} was modified by a failed read"
    return outcome, detail


def _judge(case: Case, bad: Path, how: str, call, outputs) -> tuple[str, str]:
    from DeepSimilarityLib.cli import main

    if how == "lib":
        try:
            call()
        except InputError as exc:
            return ("ok", str(exc)) if bad.name in str(exc) else ("unclear", f"does not name {bad.name}: {exc}")
        except ValueError as exc:
            return ("ok", str(exc)) if bad.name in str(exc) else ("unclear", f"ValueError not naming the file: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other exception is what this hunts for
            return "crash", f"{type(exc).__name__}: {str(exc)[:200]}"
        return ("ok", "accepted as intended") if case.accepted else ("accepted", "no error")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(call)
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001
            return "crash", f"{type(exc).__name__}: {str(exc)[:200]}"
    text = err.getvalue().strip()
    left = [str(p) for p in outputs if os.path.exists(p)]
    if case.accepted:
        return ("ok", "accepted as intended") if code == 0 else ("unclear", f"exit {code}: {text[-200:]}")
    if code != 2:
        return ("accepted" if code == 0 else "crash"), f"exit {code}: {text[-200:]}"
    lines = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln]
    if left:
        return "unclear", f"left outputs {left}"
    if len(lines) != 1 or not lines[0].startswith("deepsim: error:") or "Traceback" in text:
        return "unclear", f"stderr not one error line: {text[-300:]}"
    if bad.name not in lines[0]:
        return "unclear", f"does not name {bad.name}: {lines[0]}"
    return "ok", lines[0]
