"""2D training and evaluation pairs cut from the three brain MR volumes of ``brain-mr``.

The OASIS subjects 0001 and 0002 and the VoxelMorph scan share one 160x192x224 grid.
Coronal slices ``array[z]`` (``(192, 160)``; the OASIS 2D release is ``z = 109``) give
many inter-subject pairs. The slices are split by ``z`` so that evaluated slices, validation
slices and training slices never coincide, with one-slice gaps between them:

* test: ``z % 10 == 9`` (this includes 109), pairs OASIS 0001 <-> 0002 only;
* validation: ``z % 10 == 4``, pairs OASIS 0001 <-> 0002;
* training: ``z % 10 in {1, 2, 6, 7}``, pairs vxm <-> OASIS (either direction, also with a
  +-1 slice offset); the evaluated pair 0001 <-> 0002 is never a training pair.

The DeepSim feature nets learn from the vxm scan alone (all its slices, its FreeSurfer
labels mapped to seg35), so no OASIS label enters them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import load_oasis, load_vxm_scan, oasis_subjects, vxm_seg_as_seg35

Z_RANGE = (30, 190)
SPLIT_Z = {"train": (1, 2, 6, 7), "val": (4,), "test": (9,)}


@dataclass
class BrainVolumes:
    """The three volumes as arrays ``(224, 192, 160)``: ``images`` float32, ``labels`` seg35 uint8."""

    names: list
    images: list
    labels: list


def load_brain_volumes(root=None) -> BrainVolumes:
    """``['vxm', 'OASIS_OAS1_0001_MR1', 'OASIS_OAS1_0002_MR1']`` with seg35 labels (vxm mapped)."""
    vol, seg = load_vxm_scan(root)
    names, images, labels = ["vxm"], [vol.array], [vxm_seg_as_seg35(seg.array, root)]
    for subject in oasis_subjects(root):
        s = load_oasis(subject, 3, root)
        names.append(subject)
        images.append(s.image.array.astype(np.float32))
        labels.append(s.seg.array.astype(np.uint8))
    return BrainVolumes(names, images, labels)


def split_slices(split: str, z_range=Z_RANGE) -> list[int]:
    return [z for z in range(*z_range) if z % 10 in SPLIT_Z[split]]


def downsample(images: np.ndarray, factor: int) -> torch.Tensor:
    """``(N, H, W[, D])`` float -> ``(N, 1, H/f, W/f[, D/f])`` tensor by block averaging (f = 1 keeps the grid)."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    pool = F.avg_pool2d if t.ndim == 4 else F.avg_pool3d
    return pool(t, factor) if factor > 1 else t


def volume_pairs(vols: BrainVolumes) -> list[tuple[int, int]]:
    """The six directed 3D pairs ``(moving idx, fixed idx)`` between the three subjects."""
    n = len(vols.names)
    return [(m, f) for m in range(n) for f in range(n) if m != f]


def third_subject(pair, n: int = 3) -> int:
    """The subject in neither image of ``pair``: the only one whose labels may train the pair's feature net."""
    rest = [s for s in range(n) if s not in pair]
    if len(rest) != 1:
        raise ValueError(f"pair {pair} of {n} subjects leaves {len(rest)} subjects, not one")
    return rest[0]


def slice_pairs(vols: BrainVolumes, split: str, offsets=(0,)) -> list[tuple]:
    """``[(moving subject idx, moving z, fixed subject idx, fixed z), ...]`` of one split.

    train: vxm (index 0) <-> each OASIS subject, both directions, fixed slice at ``z + offset``
    when that slice is a training slice too; val/test: OASIS 0001 <-> 0002 at equal ``z``.
    """
    zs = split_slices(split)
    if split != "train":
        return [(a, z, b, z) for z in zs for a, b in ((1, 2), (2, 1))]
    allowed = set(zs)
    pairs = []
    for z in zs:
        for o in offsets:
            if z + o not in allowed:
                continue
            for s in range(1, len(vols.names)):
                pairs += [(0, z, s, z + o), (s, z, 0, z + o)]
    return pairs


def stack_pairs(vols: BrainVolumes, pairs: list[tuple], factor: int = 2):
    """Unique slices of ``pairs`` as a stack and index pairs into it.

    Returns ``images (M, 1, H/f, W/f)``, ``labels (M, 1, H/f, W/f)`` (stride-f subsampled),
    ``labels_full (M, H, W)`` numpy uint8, ``index (P, 2)`` long.
    """
    keys = sorted({(s, z) for p in pairs for s, z in (p[:2], p[2:])})
    where = {k: i for i, k in enumerate(keys)}
    imgs = np.stack([vols.images[s][z] for s, z in keys])
    full = np.stack([vols.labels[s][z] for s, z in keys])
    labels = torch.from_numpy(full[:, ::factor, ::factor].astype(np.int64))[:, None]
    index = torch.tensor([[where[p[:2]], where[p[2:]]] for p in pairs], dtype=torch.long)
    return downsample(imgs, factor), labels, full, index
