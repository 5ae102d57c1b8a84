"""Images for the case database: from files or arrays to the ``(N, H, W)`` [0, 1] batches encoders take,
and the cases of a folder with an optional labels CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..datasets._common import resize_area
from ..errors import InputError
from ..image_io import READABLE_EXTENSIONS, extension, normalise_intensity, read_image
from .case_store import NewCase


def to_unit(array: np.ndarray) -> np.ndarray:
    """Pixels -> float32 [0, 1]: 8/16-bit by their range (brightness keeps its meaning), else robust percentiles."""
    a = np.asarray(array)
    if a.dtype in (np.uint8, np.uint16):
        return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0.0 and hi <= 255.0 and np.all(a == np.round(a)):  # 8-bit values stored as floats (colour -> grey)
        return a / np.float32(255.0)
    return normalise_intensity(a)  # CT in HU, MR in arbitrary units


def prepare_image(image, shape, name=None) -> np.ndarray:
    """One image (a ``(H, W)`` array or a 2D image file) -> ``shape`` float32 in [0, 1]."""
    if isinstance(image, (str, Path)):
        name = name or image
        image = read_image(image, ndim=2, dtype=None).array
    a = np.asarray(image)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2 or a.size == 0:
        raise InputError(name or "image", f"expected a 2D image, got an array of shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(name or "image", "image has NaN or infinite pixels")
    return resize_area(to_unit(a), shape)


def prepare_images(images, shape, names=None) -> np.ndarray:
    """Images (arrays or files) -> ``(N, H, W)`` float32 in [0, 1] at ``shape = (H, W)``."""
    names = names or [None] * len(images)
    return np.stack([prepare_image(im, shape, n) for im, n in zip(images, names)]).astype(np.float32)


def image_files(folder) -> list[Path]:
    """The readable image files directly in ``folder`` (sorted; sub-folders are not searched)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and extension(p) in READABLE_EXTENSIONS)
    if not files:
        raise InputError(folder, f"holds no image files ({', '.join(READABLE_EXTENSIONS)})")
    return files


def read_labels_csv(path, image_column: str = "image", label_column: str = "labels", sep: str = "|",
                    none_label: str | None = "No Finding") -> dict:
    """``{file name: (labels, metadata)}`` from a CSV; columns other than image and labels become metadata."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "labels file not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or image_column not in rows[0] or label_column not in rows[0]:
        raise InputError(path, f"needs columns {[image_column, label_column]}; "
                               f"has {list(rows[0]) if rows else 'no rows'}")
    out = {}
    for r in rows:
        labels = [s.strip() for s in (r[label_column] or "").split(sep) if s.strip() and s.strip() != none_label]
        meta = {k: v for k, v in r.items() if k not in (image_column, label_column) and k is not None}
        out[r[image_column]] = (labels, meta)
    return out


def folder_cases(folder, labels_csv=None, **csv_options) -> list[NewCase]:
    """The images of ``folder`` as cases (source = absolute path), labelled from ``labels_csv`` if given.

    With a CSV only the images it lists are taken (its ``image`` column holds
    file names relative to the folder); a listed file that is missing is an error.
    """
    folder = Path(folder).resolve()
    if labels_csv is None:
        return [NewCase(str(p), image=p) for p in image_files(folder)]
    table = read_labels_csv(labels_csv, **csv_options)
    cases = []
    for name, (labels, meta) in table.items():
        p = folder / name
        if not p.is_file():
            raise InputError(p, f"listed in {labels_csv} but not found")
        cases.append(NewCase(str(p), image=p, labels=labels, metadata=meta))
    return cases
