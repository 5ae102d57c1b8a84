"""Paired CT / T1 / T2 axial slices (``ct-mr-slices``), registered on load.

Layout: ``Patient_NN/{CT,T1,T2}/KKK.png`` (512x512 8-bit PNG, RGB/RGBA with
equal channels) and ``patients.csv`` (patient, region head|body, slices).
Slice KKK of CT, T1 and T2 shows the same level but is not pixel-aligned, so
:meth:`CTMRSlices.load_pair` registers the MR onto the CT grid (2D affine,
Mattes MI, single-threaded so it is reproducible) and caches the result, as
registration takes ~3 s per slice.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..affine_registration import register_affine
from ..errors import InputError
from ..image_io import Volume, normalise_intensity, read_image
from ..paths import cache_dir
from ._common import dataset_folder, load_cached, require_file, save_cached, source_key

# Bump when the registration or normalisation changes: old cache files then
# stop matching their key and are recomputed.
CACHE_VERSION = "ctmr-v1"
MR_MODALITIES = ("T1", "T2")
REGIONS = ("head", "body")


@dataclass
class SlicePair:
    """One CT slice and one MR slice on the CT's grid.

    Attributes:
        ct: CT slice, array ``(512, 512)`` float32 in [0, 1] (percentile-normalised).
        mr: MR slice registered onto ``ct``'s grid, same shape and geometry,
            float32 in [0, 1]; 0 where the MR does not cover the CT.
        patient, slice_id, region, modality: which slice (``modality`` is T1 or T2).
        metric_before, metric_after: Mattes MI of the registration after
            initialisation and at the end (negative; lower is better).
        transform: maps CT physical points to original MR points.
        cached: True when the registered MR came from the cache.
    """

    ct: Volume
    mr: Volume
    patient: str
    slice_id: int
    region: str
    modality: str
    metric_before: float
    metric_after: float
    transform: sitk.Transform
    cached: bool = False


class CTMRSlices:
    """Index of the paired slices; registers and caches pairs on demand.

    Args:
        root: the ``ct-mr-slices`` folder (default ``data_root()/ct-mr-slices``).
        cache: read and write registered MR slices under
            ``cache_dir()/ct-mr-slices/`` (looked up at load time, so
            ``DEEPSIM_CACHE`` may change between loads).
    """

    def __init__(self, root=None, cache: bool = True):
        self.root = dataset_folder("ct-mr-slices", root)
        self.cache = cache
        table = require_file(self.root / "patients.csv")
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        self._region = {r["patient"]: r["region"] for r in rows}

    def patients(self, region: str | None = None) -> list[str]:
        """Patient names (``Patient_NN``), sorted; only ``region`` ('head'/'body') if given."""
        if region is not None and region not in REGIONS:
            raise InputError("region", f"must be one of {REGIONS} or None, not {region!r}")
        return sorted(p for p, r in self._region.items() if region is None or r == region)

    def region(self, patient: str) -> str:
        self._check_patient(patient)
        return self._region[patient]

    def slice_ids(self, patient: str) -> list[int]:
        """Slice numbers KKK that exist for CT, T1 and T2 of ``patient``, sorted."""
        self._check_patient(patient)
        folder = self.root / patient
        sets = [{int(p.stem) for p in (folder / m).glob("*.png")} for m in ("CT",) + MR_MODALITIES]
        return sorted(set.intersection(*sets))

    def slice_path(self, patient: str, slice_id: int, modality: str) -> Path:
        return self.root / patient / modality / f"{int(slice_id):03d}.png"

    def load_pair(self, patient: str, slice_id: int, mr: str = "T1") -> SlicePair:
        """CT slice and MR slice registered onto it (from the cache when valid).

        The registration runs on one thread with seeded metric sampling, so a
        cache miss recomputes the same transform; the cache only saves the
        ~2 s per slice.
        """
        self._check_patient(patient)
        if mr not in MR_MODALITIES:
            raise InputError("mr", f"must be one of {MR_MODALITIES}, not {mr!r}")
        ct_path = require_file(self.slice_path(patient, slice_id, "CT"))
        mr_path = require_file(self.slice_path(patient, slice_id, mr))
        # read_image(ndim=2) takes one channel of the equal-channel RGB(A) PNGs.
        ct = read_image(ct_path, ndim=2)
        ct = ct.with_array(normalise_intensity(ct.array))
        key = source_key(CACHE_VERSION, [ct_path, mr_path])
        cache_file = cache_dir() / "ct-mr-slices" / patient / f"{int(slice_id):03d}_{mr}.npz"
        hit = load_cached(cache_file, key) if self.cache else None
        if hit is not None and hit["mr"].shape == ct.array.shape:
            transform = sitk.AffineTransform(2)
            transform.SetFixedParameters(hit["fixed_params"].tolist())
            transform.SetParameters(hit["params"].tolist())
            before, after = (float(v) for v in hit["metrics"])
            warped, cached = ct.with_array(hit["mr"]), True
        else:
            moving = read_image(mr_path, ndim=2)
            moving = moving.with_array(normalise_intensity(moving.array))
            result = register_affine(ct, moving, kind="affine")
            transform, before, after = result.transform, result.metric_before, result.metric_after
            warped, cached = result.warped, False
            warped.array = np.clip(warped.array, 0.0, 1.0).astype(np.float32)
            if self.cache:
                save_cached(cache_file, key, mr=warped.array, params=np.array(transform.GetParameters()),
                            fixed_params=np.array(transform.GetFixedParameters()),
                            metrics=np.array([before, after]))
        return SlicePair(ct, warped, patient, int(slice_id), self._region[patient], mr,
                         before, after, transform, cached)

    def iter_pairs(self, patients=None, mr: str = "T1", progress: bool = True):
        """Yield :class:`SlicePair` for every slice of ``patients`` (default all).

        Registering all 309 slice triplets (``patients.csv``; the data README
        says 332) takes ~15 minutes per MR modality on a first pass; later
        passes read the cache. ``progress`` shows a tqdm bar over slices.
        """
        from ..progress import progress_bar

        patients = self.patients() if patients is None else [patients] if isinstance(patients, str) else list(patients)
        jobs = [(p, k) for p in patients for k in self.slice_ids(p)]
        for p, k in progress_bar(jobs, desc=f"CT/{mr} slices", unit="slice", disable=not progress):
            yield self.load_pair(p, k, mr=mr)

    def _check_patient(self, patient: str) -> None:
        if patient not in self._region:
            raise InputError(self.root / str(patient), f"unknown patient; patients.csv lists {self.patients()}")
