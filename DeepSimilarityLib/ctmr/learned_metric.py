"""The trained CT/MR network as a :class:`PatchMetric` ("learned"), fast enough for heat maps.

The first layer is linear in the concatenation ``[ct, mr]``, so its CT half
``W_ct ct + b`` is computed once per map and only the MR half runs for every
position: the region is unfolded into an ``(M, V)`` matrix and multiplied
once; the remaining layers then run on all M positions. In bfloat16 the big
matrix products run ~3.5x faster on CPUs with native bf16 (AVX512-BF16/AMX)
and far slower on others, so ``precision="auto"`` times both once and keeps
the faster. The last layer (to the two outputs) always runs in float32.

With per-patch normalisation (``patch_norm="patch"``) a window ``p`` enters
as ``(p - min) / span``; the subtraction is done before the product (no
cancellation in bfloat16) and the division after it, on the ``H1`` outputs.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..patch_metrics import PatchMetric
from .similarity_net import PatchSimilarityNet, load_net, minmax_rows

PRECISIONS = ("auto", "float32", "bfloat16")


def _row_blocks(shape: tuple, max_rows: int, prefix: tuple = ()):
    """Index tuples cutting a position grid ``shape`` into consecutive row-major blocks of <= max_rows.

    Whole slabs along the first axis when they fit, else recursing into single
    slices, so no block copies more than ``max_rows`` patches (beyond one row).
    """
    inner = math.prod(shape[1:])
    if inner <= max_rows or len(shape) == 1:
        step = max(1, max_rows // inner)
        for i in range(0, shape[0], step):
            yield prefix + (slice(i, i + step),)
    else:
        for i in range(shape[0]):
            yield from _row_blocks(shape[1:], max_rows, prefix + (i,))


class LearnedPatchMetric(PatchMetric):
    """Score map of a :class:`PatchSimilarityNet`: ``v1 - v2`` at every MR position.

    The weights are copied when the metric is made; later changes to ``net`` are not seen.
    ``chunk_elements`` bounds the floats held per block of positions (about 64 MB by default).
    """

    name = "learned"

    def __init__(self, net: PatchSimilarityNet, precision: str = "auto", chunk_elements: int = 2 ** 24):
        if precision not in PRECISIONS:
            raise InputError("precision", f"must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.chunk_elements = int(chunk_elements)
        self.patch_voxels = net.config["patch_voxels"]
        self.per_patch = net.config["patch_norm"] == "patch"
        with torch.no_grad():
            first = net.hidden[0]
            v = self.patch_voxels
            self._w_ct = first.weight[:, :v].detach().clone()  # (H1, V)
            self._b_first = first.bias.detach().clone()  # (H1,)
            self._half_row_sums = 0.5 * first.weight[:, v:].sum(1)  # (H1,): the first layer on a constant patch
            self._float = {"w_mr": first.weight[:, v:].detach().clone(),  # (H1, V)
                           "layers": [(l.weight.detach().clone(), l.bias.detach().clone()) for l in net.hidden[1:]]}
            # Only v1 - v2 is needed: the output layer collapses to one row.
            self._w_out = (net.out.weight[0] - net.out.weight[1]).detach().clone()  # (H_last,)
            self._b_out = (net.out.bias[0] - net.out.bias[1]).detach().clone()
        self._weights = {torch.float32: self._float}
        self._dtype: torch.dtype | None = None if precision == "auto" else getattr(torch, precision)

    @classmethod
    def from_file(cls, path, **kwargs) -> "LearnedPatchMetric":
        return cls(load_net(path), **kwargs)

    def _weights_in(self, dtype):
        if dtype not in self._weights:
            f = self._float
            self._weights[dtype] = {"w_mr": f["w_mr"].to(dtype),
                                    "layers": [(w.to(dtype), b.to(dtype)) for w, b in f["layers"]]}
        return self._weights[dtype]

    def _score_rows(self, mr: torch.Tensor, ct_part: torch.Tensor, dtype) -> torch.Tensor:
        """Scores ``(m,)`` float32 of MR patches ``(m, V)`` given the CT half ``(H1,)`` of layer 1."""
        w = self._weights_in(dtype)
        if self.per_patch:
            low = mr.amin(1, keepdim=True)
            span = (mr.amax(1, keepdim=True) - low).float()
            scale = torch.where(span > 0, 1.0 / span.clamp_min(1e-12), 0.0)  # (m, 1)
            h = F.linear((mr - low).to(dtype), w["w_mr"]).float().mul_(scale).add_(ct_part)
            constant = (span[:, 0] <= 0).nonzero()[:, 0]
            if constant.numel():  # rare: only these rows get the constant patch's input (0.5 everywhere)
                h[constant] += self._half_row_sums
            h = torch.sigmoid_(h).to(dtype)
        else:
            h = torch.sigmoid_(F.linear(mr.to(dtype), w["w_mr"], ct_part.to(dtype)))
        for weight, bias in w["layers"]:
            h = torch.sigmoid_(F.linear(h, weight, bias))
        return torch.addmv(self._b_out.expand(h.shape[0]), h.float(), self._w_out)

    def resolved_precision(self) -> str:
        """The precision in use; ``"auto"`` is settled here by timing both on a dummy input."""
        if self._dtype is None:
            with torch.inference_mode():
                gen = torch.Generator().manual_seed(0)
                # About 2**29 multiply-adds in the first layer: long enough to time, short for big 3D nets.
                rows = int(np.clip(2 ** 29 // (self.patch_voxels * self._b_first.shape[0]), 64, 4096))
                mr = torch.rand(rows, self.patch_voxels, generator=gen)
                ct_part = torch.zeros(self._b_first.shape)
                best = {}
                for dtype in (torch.float32, torch.bfloat16):
                    times = []
                    for _ in range(3):  # the first run warms up kernels and weight copies
                        start = time.perf_counter()
                        self._score_rows(mr, ct_part, dtype)
                        times.append(time.perf_counter() - start)
                    best[dtype] = min(times[1:])
            self._dtype = torch.bfloat16 if best[torch.bfloat16] < best[torch.float32] else torch.float32
        return str(self._dtype).removeprefix("torch.")

    def score_map(self, ct_patch: np.ndarray, mr_region: np.ndarray) -> np.ndarray:
        """Scores ``(*N)`` float32 of CT patch ``P`` against every patch of ``mr_region`` ``(N + P - 1)``."""
        ct_patch, mr_region = self._check(ct_patch, mr_region)
        if ct_patch.size != self.patch_voxels:
            raise InputError("ct_patch", f"has shape {ct_patch.shape} ({ct_patch.size} voxels) but the network "
                                         f"was trained on patches of {self.patch_voxels} voxels")
        dtype = getattr(torch, self.resolved_precision())
        scores = np.empty(tuple(r - p + 1 for r, p in zip(mr_region.shape, ct_patch.shape)), dtype=np.float32)
        rows = max(1, self.chunk_elements // max(self.patch_voxels, self._b_first.shape[0]))
        with torch.inference_mode():
            ct_flat = torch.from_numpy(ct_patch.ravel())
            if self.per_patch:
                ct_flat = minmax_rows(ct_flat[None])[0]
            ct_part = torch.addmv(self._b_first, self._w_ct, ct_flat)
            # Unfold the region in the compute precision: each block of patches is copied once, already converted.
            windows = torch.from_numpy(mr_region).to(dtype)
            for axis, p in enumerate(ct_patch.shape):
                windows = windows.unfold(axis, p, 1)  # -> (*positions, *patch)
            for index in _row_blocks(scores.shape, rows):
                block = windows[index].reshape(-1, self.patch_voxels)
                scores[index] = self._score_rows(block, ct_part, dtype).numpy().reshape(scores[index].shape)
        return scores
