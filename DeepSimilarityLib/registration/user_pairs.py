"""Training pairs from the user's own images, for ``deepsim train registration --images``.

The shipped nets learned brain MR slices; a user with other anatomy or another contrast trains
on their own images. Every image is put on the network grid exactly as
:func:`~.apply.register_deformable` will put it there at application time
(:func:`~.apply.to_network_grid`): the first image is the reference, every other one is
pre-aligned to it (affine by default, Mattes MI), all are resampled onto a coarser grid
over the reference's field of view and scaled by the same intensity rule. The net's metadata
records that grid and rule, so ``deepsim register --net`` repeats them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..affine_registration import register_affine
from ..errors import InputError
from ..image_io import check_overlap, check_volume
from .apply import network_grid, network_shape, to_network_grid
from .experiment import TRAINING_INTENSITY


def user_training_set(volumes: list, names: list, downsample: int, pre_align: str | None = "affine",
                      multiple: int = 8, intensity: dict = TRAINING_INTENSITY, log=None):
    """``(images (N, 1, ...) in [0, 1], pairs (N*(N-1), 2) long, network shape)`` from N >= 2 images.

    ``volumes``: :class:`~DeepSimilarityLib.image_io.Volume` s of one dimensionality; ``names`` name
    them in errors. All directed pairs are returned as ``(moving, fixed)`` indices. ``intensity``: the
    shipped nets' rule by default, so that every registration net in the project reads its input alike.
    """
    if len(volumes) < 2:
        raise InputError("--images", f"need at least two images to make pairs, got {len(volumes)}")
    reference = volumes[0]
    for v, name in zip(volumes, names):
        check_volume(v, name)
        if v.ndim != reference.ndim:
            raise InputError(name, f"is {v.ndim}D but {names[0]} is {reference.ndim}D")
    shape = network_shape(reference, multiple, downsample)
    grid = network_grid(reference, shape)
    arrays = []
    for i, (v, name) in enumerate(zip(volumes, names)):
        if i:
            check_overlap(reference, v, names[0], name)
        transform = register_affine(reference, v, kind=pre_align).transform if i and pre_align else None
        arrays.append(to_network_grid(v, grid, intensity, transform, name))
        if log:
            log(f"{name}: on the {'x'.join(map(str, shape))} network grid"
                + (f" after {pre_align} pre-alignment" if i and pre_align else ""))
    images = torch.from_numpy(np.stack(arrays))[:, None]
    n = len(volumes)
    pairs = torch.tensor([(m, f) for m in range(n) for f in range(n) if m != f], dtype=torch.long)
    return images, pairs, shape
