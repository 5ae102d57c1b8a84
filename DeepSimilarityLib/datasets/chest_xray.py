"""Chest X-rays: NIH ChestX-ray14 (1000 images, multi-label) and PneumoniaMNIST.

:func:`load_multilabel_csv` takes any folder of images with a CSV holding
one row per image and a separator-joined label column; the NIH loader is
that function with the ChestX-ray14 column names and label order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from ..image_io import read_image
from ._common import dataset_folder, require_file, resize_area

# The 14 pathologies in the order of the NIH release (Wang et al. 2017) and
# CheXNet, so label columns line up with published per-class results.
# 'No Finding' is not a class: such an image has an all-zero label row.
CHESTXRAY14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
PNEUMONIAMNIST_SPLITS = ("train", "val", "test")


class MultiLabelSet(NamedTuple):
    """Images with a multi-hot label matrix, in CSV row order.

    images: ``(N, H, W)`` float32 in [0, 1].
    labels: ``(N, L)`` uint8, ``labels[n, l] = 1`` when image n has ``label_names[l]``.
    label_names: the L label names (column order of ``labels``).
    patient_ids: N patient ids (strings, as in the CSV) for patient-level splits.
    image_ids: N image file names.
    """

    images: np.ndarray
    labels: np.ndarray
    label_names: list
    patient_ids: list
    image_ids: list


def _to_unit(array: np.ndarray, path) -> np.ndarray:
    # Integer pixels are scaled by their type's range (8-bit 0..255 -> 0..1),
    # not per image, so an image's brightness keeps its meaning.
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    a = array.astype(np.float32)
    top = float(a.max())
    if top <= 1.0:
        return a
    # read_image reduces an RGB file to float grey in the 8-bit range.
    if top <= 255.0:
        return a / np.float32(255.0)
    raise InputError(path, f"float pixels up to {top:g}: expected 8/16-bit or [0, 1] images")


def load_multilabel_csv(image_folder, csv_path, image_column: str, label_column: str, sep: str = "|",
                        none_label: str | None = "No Finding", patient_column: str | None = None,
                        label_names=None, size=None) -> MultiLabelSet:
    """Grey images listed in a CSV with ``sep``-joined labels per row.

    Args:
        image_folder: folder holding the files named in ``image_column``.
        csv_path: the CSV (header row; read with the csv module).
        none_label: label meaning "no label" (an all-zero row); None if unused.
        patient_column: column of patient ids; without it each image is its
            own patient (only safe when no patient has several images).
        label_names: fixed label order; unknown labels are then an error.
            Default: every label found, sorted.
        size: ``(H, W)`` to resize every image to (area averaging); needed
            when the files differ in size.
    """
    image_folder, csv_path = Path(image_folder), require_file(Path(csv_path))
    if not image_folder.is_dir():
        raise InputError(image_folder, "image folder not found")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    needed = [c for c in (image_column, label_column, patient_column) if c is not None]
    if not rows or any(c not in rows[0] for c in needed):
        raise InputError(csv_path, f"needs columns {needed}; has {list(rows[0]) if rows else 'no rows'}")
    sets = [{s.strip() for s in r[label_column].split(sep) if s.strip() and s.strip() != none_label} for r in rows]
    found = sorted(set().union(*sets))
    names = list(label_names) if label_names is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise InputError(csv_path, f"labels {unknown} are not in label_names")
    column = {name: i for i, name in enumerate(names)}
    labels = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for n, s in enumerate(sets):
        labels[n, [column[x] for x in s]] = 1
    images = []
    for r in rows:
        path = image_folder / r[image_column]
        a = _to_unit(read_image(path, ndim=2, dtype=None).array, path)
        images.append(resize_area(a, size) if size is not None else a)
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise InputError(image_folder, f"images differ in size {sorted(shapes)[:3]}; pass size=(H, W)")
    image_ids = [r[image_column] for r in rows]
    patients = [r[patient_column] for r in rows] if patient_column else list(image_ids)
    return MultiLabelSet(np.stack(images), labels, names, patients, image_ids)


def load_nih1000(root=None) -> MultiLabelSet:
    """The 1000 NIH ChestX-ray14 images: images ``(1000, 64, 64)``, labels ``(1000, 14)``.

    Labels follow :data:`CHESTXRAY14_LABELS`; 'No Finding' rows are all zero
    and 213 images carry two or more labels. The source's own split puts
    some patients in several splits: split with ``split_by_patient`` on
    ``patient_ids`` instead.
    """
    folder = dataset_folder("chest-xray/nih1000", root)
    return load_multilabel_csv(folder / "images", folder / "labels.csv", "image", "finding_labels",
                               sep="|", none_label="No Finding", patient_column="patient_id",
                               label_names=CHESTXRAY14_LABELS)


def load_pneumoniamnist(split: str = "train", root=None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) float32 in [0, 1], labels (N,) uint8)``; 0 normal, 1 pneumonia.

    ``split``: 'train' (2428), 'val' (270) or 'test' (468). ``root`` is the
    ``chest-xray`` folder. MedMNIST's splits hold no patient ids, so they
    cannot be checked for patient overlap.
    """
    if split not in PNEUMONIAMNIST_SPLITS:
        raise InputError("split", f"must be one of {PNEUMONIAMNIST_SPLITS}, not {split!r}")
    path = require_file(dataset_folder("chest-xray", root) / "pneumoniamnist.npz")
    with np.load(path) as f:
        images = f[f"{split}_images"].astype(np.float32) / np.float32(255.0)
        labels = f[f"{split}_labels"].reshape(-1).astype(np.uint8)
    return images, labels
