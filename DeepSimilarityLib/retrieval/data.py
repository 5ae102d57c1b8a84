"""Image sets for retrieval: grey images, multi-hot labels, patient groups, split by patient.

Every set is a :class:`RetrievalSet`; single-label sets (fundus DR grades,
'any finding', pneumonia) have one-hot labels and ``classes``, multi-label
sets (NIH pathologies, brain-MR anatomy) have ``classes = None``. Queries are
held out by patient: the database (and the training set) never holds an
image of a query's patient.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..datasets import load_fundus, load_multilabel_csv, load_nih1000, load_pneumoniamnist, split_indices_by_patient
from ..errors import InputError

SETS = ("fundus", "nih", "nih-any", "pneumoniamnist", "vxm")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # as image_io reduces colour files to grey


class RetrievalSet(NamedTuple):
    """images ``(N, H, W)`` float32 [0, 1]; labels ``(N, L)`` uint8 multi-hot; groups: N patient ids."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    label_names: list
    groups: list
    classes: np.ndarray | None  # (N,) int class ids of a single-label set, else None

    def subset(self, idx) -> "RetrievalSet":
        idx = np.asarray(idx)
        return RetrievalSet(self.name, self.images[idx], self.labels[idx], self.label_names,
                            [self.groups[i] for i in idx], None if self.classes is None else self.classes[idx])


def one_hot(classes: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(classes), n), dtype=np.uint8)
    out[np.arange(len(classes)), classes] = 1
    return out


def single_label(name, images, classes, names, groups) -> RetrievalSet:
    classes = np.asarray(classes, dtype=np.int64)
    return RetrievalSet(name, images.astype(np.float32), one_hot(classes, len(names)), list(names), list(groups),
                        classes)


def vxm_slices(size=(64, 64), axis: int = 0, min_voxels: int = 20, slab: int = 8, root=None) -> RetrievalSet:
    """Slices of the VoxelMorph brain scan with the anatomical structures each shows as labels.

    A structure counts when it covers at least ``min_voxels`` voxels of the
    slice (before resizing). Neighbouring slices look alike, so ``slab``
    consecutive slices form one group ("patient") for splitting.
    """
    from ..datasets import label_ids, load_vxm_scan
    from ..datasets._common import resize_area

    vol, seg = load_vxm_scan(root)
    ids = label_ids(seg)
    v, s = np.moveaxis(vol.array, axis, 0), np.moveaxis(seg.array, axis, 0)
    keep = [k for k in range(v.shape[0]) if (s[k] > 0).sum() >= 50 * min_voxels]
    images = np.stack([np.clip(resize_area(v[k], size), 0, 1) for k in keep])
    labels = np.stack([[(s[k] == i).sum() >= min_voxels for i in ids] for k in keep]).astype(np.uint8)
    return RetrievalSet("vxm", images, labels, [str(i) for i in ids], [f"slab{k // slab}" for k in keep], None)


def load_retrieval_set(name: str, size=(64, 64), root=None) -> RetrievalSet:
    """One of :data:`SETS` at ``size`` (pneumoniamnist stays 28x28: its native size)."""
    if name == "fundus":
        f = load_fundus(size=size, root=root)
        return single_label(name, f.images @ LUMA, f.grades, [f"grade {g}" for g in range(5)], f.patient_ids)
    if name in ("nih", "nih-any"):
        s = load_nih1000(root)
        if name == "nih":
            return RetrievalSet(name, s.images, s.labels, list(s.label_names), list(s.patient_ids), None)
        return single_label(name, s.images, s.labels.any(1).astype(np.int64), ["no finding", "finding"], s.patient_ids)
    if name == "pneumoniamnist":
        parts = [load_pneumoniamnist(split, root) for split in ("train", "val", "test")]
        images = np.concatenate([p[0] for p in parts])
        classes = np.concatenate([p[1] for p in parts])
        # MedMNIST has no patient ids: each image is its own group (its own split is kept by split_set).
        groups = [f"{sp}{i}" for sp, p in zip(("train", "val", "test"), parts) for i in range(len(p[1]))]
        return single_label(name, images, classes, ["normal", "pneumonia"], groups)
    if name == "vxm":
        return vxm_slices(size, root=root)
    raise InputError("dataset", f"unknown set {name!r}; choose one of {SETS} or give a CSV")


def load_csv_set(image_folder, csv_path, image_column="image", label_column="labels", patient_column=None,
                 sep="|", size=(64, 64)) -> RetrievalSet:
    """Any folder of images with a multi-label CSV (see ``datasets.load_multilabel_csv``)."""
    s = load_multilabel_csv(image_folder, csv_path, image_column, label_column, sep=sep,
                            patient_column=patient_column, size=size)
    return RetrievalSet("csv", s.images, s.labels, list(s.label_names), list(s.patient_ids), None)


def split_set(data: RetrievalSet, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, query_idx)`` by patient; pneumoniamnist keeps MedMNIST's train+val / test split."""
    if data.name == "pneumoniamnist":
        is_test = np.array([g.startswith("test") for g in data.groups])
        return np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return split_indices_by_patient(data.groups, test_fraction=test_fraction, seed=seed)


def patient_folds(data: RetrievalSet, n_folds: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_idx, query_idx)] * n_folds``: every patient is a query in exactly one fold.

    A set with its own fixed split (pneumoniamnist) gives that one split.
    """
    if data.name == "pneumoniamnist" or n_folds == 1:
        return [split_set(data, seed=seed)]
    patients = sorted(set(data.groups), key=str)
    if not 2 <= n_folds <= len(patients):
        raise InputError("folds", f"must be between 2 and {len(patients)} patients, got {n_folds}")
    fold_of = {patients[i]: k % n_folds for k, i in enumerate(np.random.default_rng(seed).permutation(len(patients)))}
    fold = np.array([fold_of[g] for g in data.groups])
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds)]
