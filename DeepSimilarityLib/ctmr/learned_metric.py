"""The trained CT/MR network as a :class:`PatchMetric` ("learned"), fast enough for heat maps.

The first layer is linear in the concatenation ``[ct, mr]``, so its CT half
``W_ct ct + b`` is computed once per map and only the MR half runs for every
position: the region is unfolded into an ``(M, V)`` matrix and multiplied
once; the remaining layers then run on all M positions. In bfloat16 the big
matrix products run ~3.5x faster on CPUs with native bf16 (AVX512-BF16/AMX)
and far slower on others, so ``precision="auto"`` times both once and keeps
the faster. ``precision="int8"`` runs the hidden layers through oneDNN's
quantised linear (:mod:`.int8_layers`), faster again on CPUs with AVX512-VNNI
at a small cost in accuracy; ``"auto"`` considers it where the build has it.
The last layer (to the two outputs) always runs in float32.

With per-patch normalisation (``patch_norm="patch"``) a window ``p`` enters
as ``(p - min) / span``, computed in float32 before rounding to the compute
precision; the windows' minima and maxima are taken one axis at a time over
the region (separable), not per unfolded row.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import InputError
from ..patch_metrics import PatchMetric
from .int8_layers import Int8SigmoidLayers, int8_layers_work, quantise_unit_interval
from .similarity_net import PatchSimilarityNet, load_net, minmax_rows

PRECISIONS = ("auto", "float32", "bfloat16", "int8")


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


_FUSED_WORKS: dict = {}  # dtype -> whether oneDNN's fused linear + sigmoid runs here and matches the plain ops


def fused_linear_sigmoid_works(dtype) -> bool:
    """Whether oneDNN's fused linear + sigmoid runs in this PyTorch build and matches the plain ops (checked once)."""
    if dtype not in _FUSED_WORKS:
        _FUSED_WORKS[dtype] = False
        try:
            gen = torch.Generator().manual_seed(0)
            a, w, b = (torch.rand(s, generator=gen).to(dtype) for s in ((5, 7), (3, 7), (3,)))
            fused = torch.ops.mkldnn._linear_pointwise(a, w, b, "sigmoid", [], "")
            plain = torch.sigmoid(torch.addmm(b, a, w.t()))
            _FUSED_WORKS[dtype] = bool(fused.shape == plain.shape
                                       and (fused.float() - plain.float()).abs().max() < 0.01)
        except (AttributeError, RuntimeError, TypeError):
            pass
    return _FUSED_WORKS[dtype]


def linear_sigmoid(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``sigmoid(x @ weight.T + bias)`` for ``x (m, n_in)``, ``weight (n_out, n_in)``.

    Why: oneDNN applies the sigmoid while the product's tiles are still in cache (about 15% of an
    81x81 map). That entry point is internal to PyTorch, so it is used only where
    :func:`fused_linear_sigmoid_works`; otherwise ``addmm`` + ``sigmoid_`` into the work space
    ``out (m, n_out)``, which is needed only then.
    """
    if fused_linear_sigmoid_works(x.dtype):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "sigmoid", [], "")
    return torch.sigmoid_(torch.addmm(bias, x, weight.t(), out=out))


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
            self._float = {"w_mr": first.weight[:, v:].detach().clone(),  # (H1, V)
                           "layers": [(l.weight.detach().clone(), l.bias.detach().clone()) for l in net.hidden[1:]]}
            # Only v1 - v2 is needed: the output layer collapses to one row.
            self._w_out = (net.out.weight[0] - net.out.weight[1]).detach().clone()  # (H_last,)
            self._b_out = (net.out.bias[0] - net.out.bias[1]).detach().clone()
        self._weights = {torch.float32: self._float}
        if precision == "int8" and not int8_layers_work():
            raise InputError("precision", "int8 needs PyTorch's oneDNN quantised linear, which this build lacks "
                                          "or which disagrees with float32 here; use bfloat16 or float32")
        self._dtype: torch.dtype | None = None if precision == "auto" else getattr(torch, precision)
        self._work: dict | None = None  # see _buffers

    @classmethod
    def from_file(cls, path, **kwargs) -> "LearnedPatchMetric":
        return cls(load_net(path), **kwargs)

    def _weights_in(self, dtype):
        if dtype not in self._weights:
            f = self._float
            self._weights[dtype] = Int8SigmoidLayers([(f["w_mr"], None)] + f["layers"]) if dtype == torch.int8 \
                else {"w_mr": f["w_mr"].to(dtype), "layers": [(w.to(dtype), b.to(dtype)) for w, b in f["layers"]]}
        return self._weights[dtype]

    def _buffers(self, m: int, dtype) -> dict:
        """Work tensors for ``m`` rows, kept between calls.

        Why: every fresh multi-megabyte tensor is new memory that the OS maps page by page on first
        touch, which cost about as much as the matrix products themselves for an 81x81 map.
        """
        have = self._work
        if have is None or have["dtype"] != dtype or have["x"].shape[0] < m:
            sizes = [self._b_first.shape[0]] + [b.shape[0] for _, b in self._float["layers"]]
            x = torch.empty(m, self.patch_voxels)
            # The hidden layers' outputs need work space only without a fused op (which allocates its own).
            fused = dtype == torch.int8 or fused_linear_sigmoid_works(dtype)
            h = [None] * len(sizes) if fused else [torch.empty(m, n, dtype=dtype) for n in sizes]
            coded = torch.uint8 if dtype == torch.int8 else dtype  # int8 mode: uint8 codes of [0, 1] inputs
            have = self._work = {"dtype": dtype, "x": x,
                                 "xq": x if dtype == torch.float32 else torch.empty(m, self.patch_voxels, dtype=coded),
                                 "h": h}
        return {"x": have["x"][:m], "xq": have["xq"][:m], "h": [None if h is None else h[:m] for h in have["h"]]}

    def _score_rows(self, mr: torch.Tensor, ct_part: torch.Tensor, dtype, low=None, span=None) -> torch.Tensor:
        """Scores ``(m,)`` float32 of MR patches ``(..., *patch)`` (m patches) given the CT half ``(H1,)`` of layer 1.

        With per-patch normalisation, ``low`` and ``span`` ``(m, 1)`` float32 are the patches' minimum
        and range when the caller has them (computed here otherwise).
        """
        w = self._weights_in(dtype)
        m = mr.numel() // self.patch_voxels
        buf = self._buffers(m, dtype)
        int8 = dtype == torch.int8
        if self.per_patch:
            x = buf["x"]
            x.view(mr.shape).copy_(mr)
            if low is None:
                low = x.amin(1, keepdim=True)
                span = x.amax(1, keepdim=True) - low
            # Normalised in float32 and rounded once: the same inputs as minmax_rows gives the net
            # (times 255 for int8 codes, so the rounding is the only extra step).
            top = 255.0 if int8 else 1.0
            x.sub_(low).mul_(torch.where(span > 0, top / span.clamp_min(1e-12), 0.0))
            constant = (span[:, 0] <= 0).nonzero()[:, 0]
            if constant.numel():
                x[constant] = 0.5 * top
            if int8:
                buf["xq"].copy_(x.round_())
            elif dtype != torch.float32:  # in float32 the two are one buffer
                buf["xq"].copy_(x)
        else:
            buf["xq"].view(mr.shape).copy_(quantise_unit_interval(mr) if int8 and mr.is_floating_point() else mr)
        if int8:
            return torch.addmv(self._b_out.expand(m), w(buf["xq"], ct_part), self._w_out)
        h = buf["xq"]
        for (weight, bias), out in zip([(w["w_mr"], ct_part.to(dtype))] + w["layers"], buf["h"]):
            h = linear_sigmoid(h, weight, bias, out)
        return torch.addmv(self._b_out.expand(m), h.float(), self._w_out)

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
                for dtype in (torch.float32, torch.bfloat16) + ((torch.int8,) if int8_layers_work() else ()):
                    times = []
                    for _ in range(5):  # the first runs warm up kernels, weight copies and the allocator
                        start = time.perf_counter()
                        self._score_rows(mr, ct_part, dtype)
                        times.append(time.perf_counter() - start)
                    best[dtype] = min(times[2:])
            self._dtype = min(best, key=best.get)
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
            region = torch.from_numpy(mr_region)
            # Per-patch: normalised before rounding. Otherwise the region is converted (int8: coded) once.
            windows = region if self.per_patch else \
                quantise_unit_interval(region) if dtype == torch.int8 else region.to(dtype)
            for axis, p in enumerate(ct_patch.shape):
                windows = windows.unfold(axis, p, 1)  # -> (*positions, *patch)
            lows = spans = None
            if self.per_patch:  # every window's min and max, one axis at a time: far cheaper than per row
                lows, highs = region, region
                for axis, p in enumerate(ct_patch.shape):
                    lows, highs = lows.unfold(axis, p, 1).amin(-1), highs.unfold(axis, p, 1).amax(-1)
                spans = highs - lows
            for index in _row_blocks(scores.shape, rows):
                extra = (lows[index].reshape(-1, 1), spans[index].reshape(-1, 1)) if self.per_patch else ()
                scores[index] = self._score_rows(windows[index], ct_part, dtype, *extra).numpy().reshape(
                    scores[index].shape)
        return scores
