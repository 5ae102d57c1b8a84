"""The CT/MR patch similarity network of Cheng, Zhang & Zheng 2016, its training and its files.

A fully connected sigmoid network takes a CT patch and an MR patch (each
flattened to ``patch_voxels`` = 289 for 17x17) and outputs two values
``(v1, v2)``; v1 belongs to the class "same position", so the similarity
score is ``v1 - v2``. Layers are ``2V -> 578 -> 300 -> 100 -> 2`` ("deep") or
``2V -> 578 -> 300 -> 2`` ("shallow", L3 removed). Hidden layers start from
a stacked denoising autoencoder (:mod:`.sdae`) and the whole network is then
fine-tuned with softmax cross-entropy on matching / non-matching pairs.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..torch_files import load_torch_file, save_torch_file
from .sdae import (TrainSettings, _StageReporter, as_settings, pretrain_multimodal, pretrain_unimodal,
                   run_epochs, sigmoid_init)

VARIANTS = ("deep", "shallow")
PATCH_NORMS = ("image", "patch")
PRETRAININGS = ("multimodal", "unimodal", "none")
FILE_FORMAT = "DeepSimilarity/ctmr PatchSimilarityNet"


def __getattr__(name):
    # LearnedPatchMetric lives in .learned_metric, which imports this module: re-export it lazily.
    if name == "LearnedPatchMetric":
        from .learned_metric import LearnedPatchMetric
        return LearnedPatchMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_config(config: dict | None = None, name: str = "config") -> dict:
    """A complete, validated copy of a network config; missing keys take the paper's values.

    Keys: ``patch_voxels`` (289), ``layers`` (``[2 * patch_voxels, 300, 100]``),
    ``variant`` (``"deep"``; ``"shallow"`` drops the last hidden layer),
    ``pretraining`` (``"multimodal"``, ``"unimodal"`` or ``"none"``; recorded, not used by the layers),
    ``patch_norm`` (``"image"``: patches as cut from the [0, 1] images, the paper's input;
    ``"patch"``: every patch rescaled to [0, 1] by its own minimum and maximum, see :func:`minmax_rows`).
    """
    config = dict(config or {})
    unknown = set(config) - {"patch_voxels", "layers", "variant", "pretraining", "patch_norm"}
    if unknown:
        raise InputError(name, f"unknown keys {sorted(unknown)}")
    try:
        v = int(config.get("patch_voxels", 289))
        layers = [int(n) for n in config.get("layers", [2 * v, 300, 100])]
    except (TypeError, ValueError) as err:
        raise InputError(name, f"patch_voxels and layers must be integers ({err})") from None
    out = {"patch_voxels": v, "layers": layers, "variant": config.get("variant", "deep"),
           "pretraining": config.get("pretraining", "multimodal"), "patch_norm": config.get("patch_norm", "image")}
    if v < 1 or len(layers) != 3 or min(layers) < 1:
        raise InputError(name, f"needs patch_voxels >= 1 and three positive layer sizes, got {v} and {layers}")
    if out["variant"] not in VARIANTS:
        raise InputError(name, f"variant must be one of {VARIANTS}, got {out['variant']!r}")
    if out["patch_norm"] not in PATCH_NORMS:
        raise InputError(name, f"patch_norm must be one of {PATCH_NORMS}, got {out['patch_norm']!r}")
    if out["pretraining"] not in PRETRAININGS:
        raise InputError(name, f"pretraining must be one of {PRETRAININGS}, got {out['pretraining']!r}")
    return out


def minmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of ``(N, V)`` rescaled to [0, 1] by its own min and max; constant rows become 0.5.

    Why: the windowing of the CT/MR PNGs differs between patients (one head
    patient's MR tissue sits at 0.8 where the others' sit at 0.3-0.4), and a
    network on image-normalised patches learns absolute grey values that do
    not transfer; per-patch rescaling keeps only the local structure, which
    NMI and LCC rely on too.
    """
    low = x.amin(1, keepdim=True)
    span = x.amax(1, keepdim=True) - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), torch.full_like(x, 0.5))


def hidden_sizes(config: dict) -> list[int]:
    return config["layers"] if config["variant"] == "deep" else config["layers"][:2]


class PatchSimilarityNet(nn.Module):
    """Sigmoid MLP on concatenated CT and MR patches ``(B, V)`` each, with 2 linear outputs.

    ``hidden[0]`` is the L0 -> L1 layer whose weight ``(layers[0], 2V)`` has the CT
    columns first; ``out`` gives ``(v1, v2)`` with v1 the "same position" class.
    """

    def __init__(self, config: dict | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.config = check_config(config)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        sizes = [2 * self.config["patch_voxels"]] + hidden_sizes(self.config)
        # skip_init: all weights are set below from `generator`, not the global RNG.
        self.hidden = nn.ModuleList(nn.utils.skip_init(nn.Linear, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.utils.skip_init(nn.Linear, sizes[-1], 2)
        self.metadata: dict = {}
        with torch.no_grad():
            for layer in self.hidden:
                layer.weight.copy_(sigmoid_init(*layer.weight.shape, generator))
                layer.bias.zero_()
            self.out.weight.copy_(0.01 * torch.randn(self.out.weight.shape, generator=generator))
            self.out.bias.zero_()

    @classmethod
    def from_sdae(cls, stack: list, config: dict | None = None,
                  generator: torch.Generator | None = None) -> "PatchSimilarityNet":
        """The network initialised from a pre-trained stack (see :mod:`.sdae`); the output layer stays random.

        A multimodal ``stack[0] = (ct_dae, mr_dae)`` fills the diagonal blocks of
        the L0 -> L1 weight; the cross-modality blocks start at zero and are
        learned in fine-tuning. ``stack[k]`` initialises hidden layer k.
        """
        net = cls(config, generator)
        if len(stack) != len(net.hidden):
            raise InputError("stack", f"has {len(stack)} layers but the network has {len(net.hidden)} hidden layers")
        with torch.no_grad():
            first = net.hidden[0]
            if isinstance(stack[0], (tuple, list)):
                ct_dae, mr_dae = stack[0]
                weight = torch.block_diag(ct_dae.weight, mr_dae.weight)
                bias = torch.cat([ct_dae.bias, mr_dae.bias])
            else:
                weight, bias = stack[0].weight, stack[0].bias
            pairs = [(first, weight, bias)] + [(l, d.weight, d.bias) for l, d in zip(net.hidden[1:], stack[1:])]
            for layer, weight, bias in pairs:
                if weight.shape != layer.weight.shape:
                    raise InputError("stack", f"weight of shape {tuple(weight.shape)} cannot initialise "
                                              f"a layer of shape {tuple(layer.weight.shape)}")
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        return net

    def forward(self, ct: torch.Tensor, mr: torch.Tensor) -> torch.Tensor:
        """Pre-activation outputs ``(B, 2)`` = ``(v1, v2)`` of patches ``ct``, ``mr`` ``(B, V)``."""
        if self.config["patch_norm"] == "patch":
            ct, mr = minmax_rows(ct), minmax_rows(mr)
        h = torch.cat([ct, mr], 1)
        for layer in self.hidden:
            h = torch.sigmoid(layer(h))
        return self.out(h)

    def score(self, ct: torch.Tensor, mr: torch.Tensor) -> torch.Tensor:
        """Similarity ``v1 - v2``, shape ``(B,)``; higher = more likely the same position."""
        v = self(ct, mr)
        return v[:, 0] - v[:, 1]


def _as_inputs(ct, mr, labels):
    """Float32 tensors ``(N, V)``, ``(N, V)`` and int64 ``(N,)``, checked."""
    ct, mr = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in (ct, mr))
    labels = torch.as_tensor(np.asarray(labels)).long()
    if ct.ndim != 2 or ct.shape != mr.shape or labels.shape != (ct.shape[0],) or ct.shape[0] == 0:
        raise InputError("pairs", f"need ct and mr of one shape (N, V) and labels (N,), got "
                                  f"{tuple(ct.shape)}, {tuple(mr.shape)}, {tuple(labels.shape)}")
    for name, a in (("ct", ct), ("mr", mr)):
        if not torch.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise InputError(name, "intensities must be finite and lie in [0, 1] (normalise the images first)")
    if not ((labels == 0) | (labels == 1)).all():
        raise InputError("labels", "must be 0 (non-matching) or 1 (matching)")
    return ct, mr, labels


def finetune(net: PatchSimilarityNet, ct, mr, labels, settings: TrainSettings | str = "paper",
             generator: torch.Generator | None = None, on_epoch=None, should_stop=None) -> dict:
    """Softmax cross-entropy fine-tuning of all layers on pairs ``(N, V)`` with labels 1 = match.

    Returns ``{"loss": [...], "accuracy": [...]}`` per epoch (accuracy on the training pairs).
    """
    settings = as_settings(settings)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    ct, mr, labels = _as_inputs(ct, mr, labels)
    target = 1 - labels  # output 0 (v1) is the "same position" class
    net.train()
    loss = run_epochs(lambda idx: F.cross_entropy(net(ct[idx], mr[idx]), target[idx]), ct.shape[0],
                      net, settings, settings.finetune_epochs, generator, on_epoch, should_stop,
                      settings.finetune_lr)
    net.eval()
    with torch.no_grad():
        accuracy = float(((net.score(ct, mr) > 0).long() == labels).float().mean())
    return {"loss": loss, "accuracy": accuracy}


def train_similarity_net(ct, mr, labels, settings: TrainSettings | str = "paper", variant: str = "deep",
                         pretraining: str = "multimodal", seed: int = 0, progress=None, should_stop=None,
                         layers=None, patch_norm: str = "image") -> tuple[PatchSimilarityNet, dict]:
    """Pre-trains (SDAE) and fine-tunes a network on pairs ``ct``, ``mr`` ``(N, V)`` in [0, 1], labels ``(N,)``.

    ``progress(stage, fraction)`` gets the overall fraction done; ``should_stop()``
    returning true raises :class:`TrainingCancelled`. The same seed gives identical weights.
    Returns ``(net, history)`` with per-epoch losses, the final training accuracy and the time taken.
    """
    start = time.perf_counter()
    settings = as_settings(settings)
    ct, mr, labels = _as_inputs(ct, mr, labels)
    v = ct.shape[1]
    config = check_config({"patch_voxels": v, "layers": layers or [2 * v, 300, 100], "variant": variant,
                           "pretraining": pretraining, "patch_norm": patch_norm})
    generator = torch.Generator().manual_seed(int(seed))
    hidden = hidden_sizes(config)
    n_stages = {"multimodal": len(hidden) + 1, "unimodal": len(hidden), "none": 0}[pretraining]
    pre_work = n_stages * settings.pretrain_epochs
    span = pre_work / max(pre_work + settings.finetune_epochs, 1)
    history: dict = {"pretrain_loss": {}}
    if pretraining == "none":
        net = PatchSimilarityNet(config, generator)
    else:
        pretrain = pretrain_multimodal if pretraining == "multimodal" else pretrain_unimodal
        # The autoencoders see the inputs the network's first layer will see.
        pre_ct, pre_mr = (minmax_rows(ct), minmax_rows(mr)) if patch_norm == "patch" else (ct, mr)
        stack, history["pretrain_loss"] = pretrain(pre_ct, pre_mr, hidden, settings, generator, progress,
                                                   should_stop, _span=(0.0, span))
        net = PatchSimilarityNet.from_sdae(stack, config, generator)
    tuned = finetune(net, ct, mr, labels, settings, generator,
                     _StageReporter(progress, 1, span, 1.0 - span).stage(0, "finetune"), should_stop)
    history.update(finetune_loss=tuned["loss"], train_accuracy=tuned["accuracy"], settings=asdict(settings),
                   seed=int(seed), seconds=time.perf_counter() - start)
    net.metadata = {"settings": asdict(settings), "seed": int(seed), "pairs": int(ct.shape[0])}
    if progress is not None:
        progress("done", 1.0)
    return net, history


def save_net(net: PatchSimilarityNet, path, metadata: dict | None = None) -> Path:
    """Writes config, weights and metadata (default ``net.metadata``) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FILE_FORMAT, "version": 1, "config": dict(net.config),
               "state_dict": {k: t.detach().cpu().clone() for k, t in net.state_dict().items()},
               "metadata": dict(net.metadata if metadata is None else metadata)}
    return save_torch_file(payload, path)


def load_net(path, expected: dict | None = None) -> PatchSimilarityNet:
    """The network saved at ``path`` (in eval mode, metadata in ``net.metadata``).

    Any key of ``expected`` (e.g. ``{"variant": "deep"}``) must equal the file's
    config. Raises :class:`InputError` naming ``path`` for a missing, corrupt or mismatched file.
    """
    path = Path(path)
    payload = load_torch_file(path, "network file")
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise InputError(path, "not a CT/MR similarity network file")
    config = check_config(payload.get("config"), name=str(path))
    for key, value in (expected or {}).items():
        if config.get(key) != value:
            raise InputError(path, f"network has {key}={config.get(key)!r} but {value!r} was expected")
    net = PatchSimilarityNet(config)
    state, wanted = payload.get("state_dict") or {}, net.state_dict()
    if set(state) != set(wanted):
        raise InputError(path, f"weights {sorted(state)} do not match the architecture's {sorted(wanted)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(wanted[key].shape):
            raise InputError(path, f"weight {key} has shape {tuple(tensor.shape)} but the config "
                                   f"{config} needs {tuple(wanted[key].shape)}")
    net.load_state_dict(state)
    net.metadata = dict(payload.get("metadata") or {})
    return net.eval()
