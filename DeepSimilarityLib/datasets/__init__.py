"""Loaders for the shared real data sets (``paths.data_root()``).

Every loader reads through :func:`DeepSimilarityLib.image_io.read_image`,
takes an optional ``root`` folder overriding the default under
``data_root()``, and raises :class:`~DeepSimilarityLib.errors.InputError`
naming the folder when data is missing. Slow derived data (registered
CT/MR slices, resized fundus images) is cached under ``paths.cache_dir()``.
Train/test splits are by patient (:mod:`.splits`).
"""

from .brain_mr import (OasisSubject, label_ids, load_ants_slices, load_oasis, load_vxm_scan, oasis_subjects,
                       seg35_to_freesurfer, vxm_seg_as_seg35)
from .chest_xray import (CHESTXRAY14_LABELS, MultiLabelSet, load_multilabel_csv, load_nih1000,
                         load_pneumoniamnist)
from .ct_mr_slices import CTMRSlices, SlicePair
from .fundus import DROPPED_PATIENTS, FundusSet, load_fundus
from .microscopy import load_em_sections
from .splits import check_patient_split, split_by_patient, split_indices_by_patient
from .visible_male import load_visible_male

__all__ = [
    "CHESTXRAY14_LABELS", "CTMRSlices", "DROPPED_PATIENTS", "FundusSet", "MultiLabelSet", "OasisSubject",
    "SlicePair", "check_patient_split", "label_ids", "load_ants_slices", "load_em_sections", "load_fundus",
    "load_multilabel_csv",
    "load_nih1000", "load_oasis", "load_pneumoniamnist", "load_visible_male", "load_vxm_scan", "oasis_subjects",
    "seg35_to_freesurfer", "split_by_patient", "split_indices_by_patient", "vxm_seg_as_seg35",
]
