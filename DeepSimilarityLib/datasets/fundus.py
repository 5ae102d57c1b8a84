"""Colour fundus photographs with diabetic-retinopathy grades (``fundus``).

600 JPEGs (300 patients x left/right eye, 343x512) listed in ``labels.csv``
with a 10-class label and a 5-grade DR label (0 none .. 4 proliferative).
"""

from __future__ import annotations

import csv
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from ..image_io import read_image
from ..paths import cache_dir
from ._common import dataset_folder, load_cached, require_file, resize_area, save_cached, source_key

CACHE_VERSION = "fundus-v1"
# Patient300's two images are byte-identical to Patient299's (same eyes) but
# carry conflicting labels (class 6 "severe DR", grade 3, against class 5
# "moderate DR with maculopathy", grade 2). Keeping both would put the same
# image in two classes and, split by patient, possibly in train and test.
# Patient300 is dropped (an arbitrary but fixed choice: the README says drop one).
DROPPED_PATIENTS = ("Patient300",)


class FundusSet(NamedTuple):
    """Fundus images in ``labels.csv`` row order, dropped patients removed.

    images: ``(N, H, W, 3)`` float32 RGB in [0, 1]; ``(598, 343, 512, 3)`` at native size.
    grades: ``(N,)`` int64 DR grade 0..4.
    patient_ids: N patient names (``PatientNNN``), for patient-level splits.
    eyes: N of 'L' / 'R'.
    """

    images: np.ndarray
    grades: np.ndarray
    patient_ids: list
    eyes: list


def load_fundus(size=(128, 128), root=None, cache: bool = True) -> FundusSet:
    """Load the fundus set, resized to ``size = (H, W)`` (area averaging) or native if None.

    Decoding and resizing 600 JPEGs takes ~5 s, so a resized stack is cached
    under ``cache_dir()/fundus/`` (keyed by ``size`` and the source files'
    sizes and mtimes); ``cache=False`` bypasses it. The native-size stack
    (1.3 GB) is never cached: decoding it is little slower than reading it back.
    """
    folder = dataset_folder("fundus", root)
    with open(require_file(folder / "labels.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["patient"] not in DROPPED_PATIENTS]
    if not rows:
        raise InputError(folder / "labels.csv", "lists no images")
    paths = [require_file(folder / "images" / r["file"]) for r in rows]
    grades = np.array([int(r["dr_grade5"]) for r in rows], dtype=np.int64)
    patients, eyes = [r["patient"] for r in rows], [r["eye"] for r in rows]
    tag = "native" if size is None else f"{int(size[0])}x{int(size[1])}"
    key = source_key(f"{CACHE_VERSION}|{tag}", [folder / "labels.csv"] + paths)
    cache_file = cache_dir() / "fundus" / f"images_{tag}.npz"
    cache = cache and size is not None
    hit = load_cached(cache_file, key) if cache else None
    if hit is not None:
        return FundusSet(hit["images"], grades, patients, eyes)
    images = []
    for p in paths:
        # color="keep" keeps RGB; dtype=None keeps uint8 so [0, 1] is a fixed /255.
        a = read_image(p, ndim=2, color="keep", dtype=None).array
        if a.ndim != 3 or a.shape[-1] != 3:
            raise InputError(p, f"expected an RGB image, got array shape {a.shape}")
        a = a.astype(np.float32) / np.float32(255.0)
        # Area averaging can overshoot 1 by float rounding.
        images.append(np.clip(resize_area(a, size), 0.0, 1.0) if size is not None else a)
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise InputError(folder / "images", f"images differ in size {sorted(shapes)[:3]}; pass size=(H, W)")
    images = np.stack(images)
    if cache:
        save_cached(cache_file, key, compress=False, images=images)
    return FundusSet(images, grades, patients, eyes)
