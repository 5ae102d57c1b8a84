"""Brain MR: the VoxelMorph test scan, two OASIS-1 subjects, the ANTs slices.

All 3D volumes here share one grid: 160 x 192 x 224 voxels of 1 mm, read
as arrays ``(224, 192, 160)`` in ``(z, y, x)`` index order (like every
``Volume``), with the OASIS files' geometry (index x -> left, y -> inferior,
z -> anterior in LPS). Label maps are Volumes with integer arrays. Every
loader takes ``root``, the ``brain-mr`` folder (default under ``data_root()``).
"""

from __future__ import annotations

import csv
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from ..image_io import Volume, read_image
from ._common import dataset_folder, require_file

# Geometry of the OASIS ``aligned_*.nii.gz`` files (checked in the tests);
# the vxm scan is given it too, since it lies in the same affine space.
BRAIN_SPACING = (1.0, 1.0, 1.0)
BRAIN_ORIGIN = (-80.0, 112.0, 96.0)
BRAIN_DIRECTION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])


class OasisSubject(NamedTuple):
    """One OASIS subject; arrays ``(224, 192, 160)`` in 3D, ``(192, 160)`` in 2D.

    image: skull-stripped, aligned T1, float32 (about 0..1).
    seg: 35-structure labels (3D, ids 0..35) or 24-structure labels (2D), uint8.
    seg4: 4-tissue labels (ids 0..4), uint8.
    """

    image: Volume
    seg: Volume
    seg4: Volume


def load_vxm_scan(root=None) -> tuple[Volume, Volume]:
    """``(vol, seg)`` of the VoxelMorph test scan, on the OASIS 3D grid.

    The npz arrays are ``(160, 192, 224)`` in NIfTI ``(i, j, k)`` order; they
    are transposed to ``(224, 192, 160)`` ``(z, y, x)`` order, which matches
    the OASIS ``aligned_norm.nii.gz`` arrays as read by ``read_image``: no
    flip is needed (intensity correlation 0.87/0.92 with the two subjects;
    mapped-label Dice 0.49 unflipped against 0.05 with left/right flipped).

    ``vol``: float32 in [0, 1]. ``seg``: int32 FreeSurfer ids (0 and 45
    labels; see :func:`label_ids`), int32 because FreeSurfer ids can exceed 255.
    """
    path = require_file(dataset_folder("brain-mr", root) / "vxm_test_scan.npz")
    with np.load(path) as f:
        if "vol" not in f.files or "seg" not in f.files:
            raise InputError(path, f"expected keys 'vol' and 'seg', found {f.files}")
        vol = np.ascontiguousarray(f["vol"].transpose(2, 1, 0), dtype=np.float32)
        seg = np.ascontiguousarray(np.rint(f["seg"].transpose(2, 1, 0)), dtype=np.int32)
    geometry = (BRAIN_SPACING, BRAIN_ORIGIN, BRAIN_DIRECTION)
    return Volume(vol, *geometry), Volume(seg, *geometry)


def label_ids(seg) -> list[int]:
    """Sorted non-zero label ids present in ``seg`` (Volume or array)."""
    a = seg.array if isinstance(seg, Volume) else np.asarray(seg)
    return [int(v) for v in np.unique(a) if v != 0]


def _folder(sub: str, root=None):
    """``brain-mr/sub``; ``root`` overrides the ``brain-mr`` folder for every loader here."""
    folder = dataset_folder("brain-mr", root) / sub
    if not folder.is_dir():
        raise InputError(folder, "data folder not found")
    return folder


def _oasis_folder(dim: int, root=None):
    if dim not in (2, 3):
        raise InputError("dim", f"must be 2 or 3, not {dim!r}")
    return _folder(f"oasis/{dim}d", root)


def oasis_subjects(root=None) -> list[str]:
    """Subject folder names, e.g. ``['OASIS_OAS1_0001_MR1', 'OASIS_OAS1_0002_MR1']``."""
    folder = _oasis_folder(3, root)
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("OASIS_"))


def load_oasis(subject: str, dim: int = 3, root=None) -> OasisSubject:
    """``(image, seg35 | seg24, seg4)`` of one OASIS subject.

    3D: ``aligned_norm``/``aligned_seg35``/``aligned_seg4`` (the 160x192x224
    crop that the vxm scan shares), arrays ``(224, 192, 160)``.
    2D: ``slice_norm``/``slice_seg24``/``slice_seg4``, arrays ``(192, 160)``;
    this slice is the 3D array's ``[109]`` (a coronal plane), read as a plain
    2D image whose in-plane geometry is origin (-80, 0.5), unit direction.
    """
    folder = _oasis_folder(dim, root) / subject
    if not folder.is_dir():
        raise InputError(folder, f"unknown OASIS subject; found {oasis_subjects(root)}")
    names = (("aligned_norm", "aligned_seg35", "aligned_seg4") if dim == 3 else
             ("slice_norm", "slice_seg24", "slice_seg4"))
    image = read_image(require_file(folder / f"{names[0]}.nii.gz"), ndim=dim)
    # dtype=None keeps the files' uint8 labels (no float round trip).
    seg = read_image(require_file(folder / f"{names[1]}.nii.gz"), ndim=dim, dtype=None)
    seg4 = read_image(require_file(folder / f"{names[2]}.nii.gz"), ndim=dim, dtype=None)
    return OasisSubject(image, seg, seg4)


def seg35_to_freesurfer(root=None) -> dict[int, tuple[int, str]]:
    """``{seg35 id: (FreeSurfer id, structure name)}`` from ``seg35_to_freesurfer.csv``."""
    path = require_file(_folder("oasis", root) / "seg35_to_freesurfer.csv")
    with open(path, newline="") as f:
        return {int(r["seg35"]): (int(r["freesurfer_id"]), r["name"]) for r in csv.DictReader(f)}


def vxm_seg_as_seg35(seg, root=None):
    """Map FreeSurfer ids to OASIS seg35 ids (uint8); ids not in the table -> 0.

    Accepts a Volume (returns a Volume on the same grid) or an array. The
    vxm scan's CSF (24), 5th ventricle (72), white-matter and non-WM
    hypointensities (77, 80), optic chiasm (85) and corpus callosum
    (251-255) have no seg35 id and become 0.
    """
    a = seg.array if isinstance(seg, Volume) else np.asarray(seg)
    a = np.rint(a).astype(np.int64)
    table = {fs: k for k, (fs, _) in seg35_to_freesurfer(root).items()}
    lut = np.zeros(max(int(a.max()), max(table)) + 1, dtype=np.uint8)
    for fs, k in table.items():
        lut[fs] = k
    out = lut[np.clip(a, 0, None)]
    return seg.with_array(out) if isinstance(seg, Volume) else out


def load_ants_slices(root=None) -> dict[str, Volume]:
    """``{'ants_r16': Volume, ...}``: six 2D axial slices, arrays ``(256, 256)`` float32."""
    folder = _folder("ants-slices", root)
    files = sorted(folder.glob("ants_r*.nii.gz"))
    if not files:
        raise InputError(folder, "no ants_rNN.nii.gz slices found")
    return {p.name[: -len(".nii.gz")]: read_image(p, ndim=2) for p in files}
