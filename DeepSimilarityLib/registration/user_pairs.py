"""Training pairs from the user's own images, for ``deepsim train registration --images``.

The shipped nets learned brain MR slices; a user with other anatomy or another contrast trains
on their own images. Every image is put on the network grid exactly as
:func:`~.apply.register_deformable` will put it there at application time
(:func:`~.apply.to_network_grid`): the first image is the reference, every other one is
pre-aligned to it (affine by default, Mattes MI), all are resampled onto a coarser grid
over the reference's field of view and scaled by the same intensity rule. The net's metadata
records that grid and rule, so ``deepsim register --net`` repeats them. A DeepSim feature net for
such images (``deepsim train features --dims 3``) learns from one of them put on its grid the
same way (:func:`feature_training_volume`), so the features see what the loss will show them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..affine_registration import register_affine
from ..errors import InputError
from ..image_io import Volume, check_overlap, check_volume, resample_to
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


def renumbered_labels(array: np.ndarray) -> np.ndarray:
    """Label ids as 0..K in the order of their values (0 stays background when present): a segmentation
    net has one output per id, so ids like 2, 41, 1024 must become 1, 2, 3."""
    ids, inverse = np.unique(np.rint(array).astype(np.int64), return_inverse=True)
    return inverse.reshape(array.shape) + (0 if ids[0] == 0 else 1)


def feature_training_volume(image: Volume, labels: Volume | None, downsample: int, name: str = "--image",
                            labels_name: str = "--labels", multiple: int = 8,
                            intensity: dict = TRAINING_INTENSITY) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One image (and its label map) on the network grid :func:`user_training_set` would give it as the
    reference: ``(1, 1, ...)`` float in [0, 1] and ``(1, ...)`` int64 ids renumbered 0..K (or None).

    The label map is resampled by nearest neighbour onto the same grid, through physical space, so it
    only needs to cover the image; ``multiple`` is the registration net's (8), which the feature net's
    (4) divides. Errors name ``name`` / ``labels_name``.
    """
    check_volume(image, name)
    shape = network_shape(image, multiple, downsample)
    grid = network_grid(image, shape)
    array = torch.from_numpy(to_network_grid(image, grid, intensity, name=name))[None, None]
    if labels is None:
        return array, None
    if labels.ndim != image.ndim:
        raise InputError(labels_name, f"is {labels.ndim}D but {name} is {image.ndim}D")
    check_overlap(image, labels, name, labels_name)
    ids = renumbered_labels(resample_to(labels, grid, interpolation="nearest").array)
    if ids.max() < 1:
        raise InputError(labels_name, "has no labelled voxel on the image's grid (only background)")
    return array, torch.from_numpy(ids)[None]
