"""Visible Male head CT and MR (``head-ct-mr-3d``), with their real geometry."""

from __future__ import annotations

from ..image_io import Volume, read_image
from ._common import dataset_folder, require_file


def load_visible_male(root=None) -> tuple[Volume, Volume]:
    """``(ct, mr)`` of the Visible Male head, float32, geometry as in the files.

    ``ct``: array ``(8, 512, 512)`` (z, y, x), spacing ~(0.49, 0.49, 1) mm.
    ``mr``: array ``(33, 256, 256)``, spacing ~(1.02, 1.02, 5) mm.
    The two are NOT registered: their origins differ by centimetres, so
    any voxel-wise comparison needs ``register_affine`` first.
    """
    folder = dataset_folder("head-ct-mr-3d", root)
    ct = read_image(require_file(folder / "vm_head_ct.mha"), ndim=3)
    mr = read_image(require_file(folder / "vm_head_mri.mha"), ndim=3)
    return ct, mr
