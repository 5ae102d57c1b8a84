"""Saving and loading retrieval models, and wrapping them as database :class:`Encoder` s.

A model file is a torch ``dict`` ``{"format", "version", "config", "state_dict",
"metadata"}`` written atomically. ``config["kind"]`` is ``siamese``,
``classifier`` (dense embeddings of the penultimate layer) or ``hashing``
(binary codes). The encoder's ``model_id`` is the sha256 of the file, so
retrained weights never mix with old codes in a database.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..torch_files import load_torch_file, save_torch_file
from .backbone import as_batch
from .encoder import pack_bits
from ..weights_manifest import file_sha256  # noqa: F401  (model ids; re-exported)

FILE_FORMAT = "deepsim-retrieval-model"
KINDS = ("siamese", "classifier", "hashing")


def _net_class(kind: str):
    from .hashing import HashingNet
    from .siamese import ClassifierNet, EmbeddingNet

    return {"siamese": EmbeddingNet, "classifier": ClassifierNet, "hashing": HashingNet}[kind]


def save_model(net, path, metadata: dict | None = None) -> Path:
    """Write ``net`` (config, weights, metadata) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FILE_FORMAT, "version": 1, "config": dict(net.config),
               "state_dict": {k: t.detach().cpu().clone() for k, t in net.state_dict().items()},
               "metadata": dict(metadata or {})}
    save_torch_file(payload, path)
    return path


def load_model(path):
    """``(net, metadata)`` from ``path`` in eval mode; InputError for a missing, foreign or mismatched file."""
    path = Path(path)
    payload = load_torch_file(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise InputError(path, "not a DeepSimilarity retrieval model file")
    config = payload.get("config")
    if not isinstance(config, dict) or config.get("kind") not in KINDS:
        raise InputError(path, f"config kind must be one of {KINDS}")
    try:
        net = _net_class(config["kind"])(config)
    except (KeyError, TypeError, InputError) as err:
        raise InputError(path, f"config {config} does not describe a network ({err})") from None
    state, wanted = payload.get("state_dict") or {}, net.state_dict()
    if set(state) != set(wanted):
        missing, extra = sorted(set(wanted) - set(state))[:3], sorted(set(state) - set(wanted))[:3]
        raise InputError(path, f"weights do not match the {config['kind']} architecture "
                               f"(missing {missing}, extra {extra})")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(wanted[key].shape):
            raise InputError(path, f"weight {key} has shape {tuple(tensor.shape)}, the config needs "
                                   f"{tuple(wanted[key].shape)}")
    net.load_state_dict(state)
    return net.eval(), dict(payload.get("metadata") or {})


class _NetEncoder:
    """Shared part of the encoders: batching, shape checks, no gradients."""

    batch = 256

    def __init__(self, net, model_id: str, metadata: dict | None = None):
        self.net = net.eval()
        self.model_id = model_id
        self.image_shape = tuple(net.config["image_size"])
        self.metadata = dict(metadata or {})

    @torch.no_grad()
    def _run(self, fn, images: np.ndarray) -> np.ndarray:
        x = as_batch(images, self.image_shape)
        return torch.cat([fn(x[i:i + self.batch]) for i in range(0, len(x), self.batch)]).numpy() if len(x) else \
            np.zeros((0, self.size), np.float32)


class DenseEncoder(_NetEncoder):
    """Siamese embeddings or the classifier's penultimate layer: ``(N, size)`` float32, Euclidean."""

    kind = "dense"

    def __init__(self, net, model_id: str, metadata: dict | None = None):
        super().__init__(net, model_id, metadata)
        with torch.no_grad():  # the embedding width, from one blank image (the net is in eval mode)
            self.size = int(net.embed(torch.zeros((1, 1) + self.image_shape)).shape[1])

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self._run(self.net.embed, images).astype(np.float32)


class BinaryEncoder(_NetEncoder):
    """Hash codes ``sign(z)`` packed to ``(N, k / 8)`` uint8 (bit 1 where z > 0)."""

    kind = "binary"

    def __init__(self, net, model_id: str, metadata: dict | None = None):
        super().__init__(net, model_id, metadata)
        self.size = int(net.config["n_bits"])

    def encode(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.size // 8), np.uint8)
        return pack_bits(self._run(self.net, images))


def as_encoder(net, model_id: str, metadata: dict | None = None):
    """Wrap a trained network as an :class:`~.encoder.Encoder` (binary for hashing nets, dense otherwise)."""
    return (BinaryEncoder if net.config["kind"] == "hashing" else DenseEncoder)(net, model_id, metadata)


def load_retrieval_model(path):
    """The model at ``path`` as an Encoder whose ``model_id`` is the file's sha256."""
    net, metadata = load_model(path)
    return as_encoder(net, file_sha256(path), metadata)


def _register_with_case_database():
    # The database's command line finds model files by their format key (see .encoders).
    from .encoders import register_format

    register_format(FILE_FORMAT)(lambda header, path: load_retrieval_model(path))


_register_with_case_database()
