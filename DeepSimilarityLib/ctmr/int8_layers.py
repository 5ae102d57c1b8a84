"""A stack of sigmoid layers run in int8 through oneDNN, for the learned heat map.

Why: on CPUs with AVX512-VNNI an int8 matrix product does twice the
multiply-adds per instruction of bfloat16, and the heat map is two large
matrix products. Every input of these layers lies in [0, 1] (normalised patch
voxels, then sigmoid outputs), so one fixed step of 1/255 quantises them all
(uint8, zero point 0): the resolution bfloat16 has near 1. Weights are int8
with one scale per output unit.

oneDNN fuses tanh, not sigmoid, into its quantised linear, so every layer is
rewritten exactly with ``sigmoid(z) = (1 + tanh(z / 2)) / 2``: weights and
biases are halved, and the uint8 output code of ``tanh`` (scale 1/127.5,
zero point 128) is ``255 * sigmoid + 0.5``, read by the next layer as
``code / 255`` with the half-step folded into its bias. The only changes to
the float network are the roundings of weights and activations.

The operators (``torch.ops.onednn.qlinear_*``) are internal to PyTorch, so
:func:`int8_layers_work` checks once that they exist and agree with the
float computation; callers fall back to other precisions otherwise.
"""

from __future__ import annotations

import torch

STEP = 1.0 / 255  # value of one input code
_HALF_STEP = 0.5 / 255  # offset of the tanh output code: code / 255 = sigmoid + 0.5 / 255

_WORKS: list = []  # [bool] once checked


def quantise_unit_interval(x: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``round(255 x)`` of values ``x`` in [0, 1] (clipped), any shape."""
    return torch.clamp(x * 255.0, 0.0, 255.0).round_().to(torch.uint8)


class Int8SigmoidLayers:
    """``sigmoid(W_k ... sigmoid(W_1 x + b_1) ... + b_k)`` for uint8 codes ``x (m, n_in)`` of [0, 1] inputs.

    ``layers``: float ``(weight (n_out, n_in), bias (n_out,))``; the first layer's bias
    (unused here, e.g. ``None``) is given per call instead, since it carries the CT patch.
    Returns the last layer's sigmoid outputs ``(m, n_last)`` float32.
    """

    def __init__(self, layers: list):
        self._layers = []
        for k, (weight, bias) in enumerate(layers):
            weight = weight.detach().float()
            # Inputs after the first layer are read as code / 255 = sigmoid + half a step: folded into the bias.
            half = weight / 2
            scale = (half.abs().amax(1) / 127).clamp_min(1e-12)  # (n_out,)
            codes = torch.round(half / scale[:, None]).clamp_(-127, 127).to(torch.int8)
            self._layers.append({
                "packed": torch.ops.onednn.qlinear_prepack(codes, None),
                "scale": scale, "zero": torch.zeros(weight.shape[0], dtype=torch.long),
                "bias": None if k == 0 else (bias.detach().float() - _HALF_STEP * weight.sum(1)) / 2})

    def __call__(self, codes: torch.Tensor, first_bias: torch.Tensor) -> torch.Tensor:
        h = codes
        last = len(self._layers) - 1
        for k, layer in enumerate(self._layers):
            bias = first_bias.float() / 2 if k == 0 else layer["bias"]
            h = torch.ops.onednn.qlinear_pointwise(
                h, STEP, 0, layer["packed"], layer["scale"], layer["zero"], bias,
                1.0 if k == last else 1 / 127.5, 0 if k == last else 128,
                torch.float32 if k == last else torch.uint8, "tanh", [], "")
        return h.add_(1.0).mul_(0.5)  # tanh(z / 2) -> sigmoid(z)


def int8_layers_work() -> bool:
    """Whether this PyTorch build runs :class:`Int8SigmoidLayers` and matches float32 (checked once)."""
    if not _WORKS:
        ok = False
        try:
            gen = torch.Generator().manual_seed(0)
            layers = [(torch.randn(24, 16, generator=gen) * 0.3, None), (torch.randn(8, 24, generator=gen) * 0.3,
                                                                          torch.randn(8, generator=gen) * 0.3)]
            first_bias = torch.randn(24, generator=gen) * 0.3
            x = torch.rand(37, 16, generator=gen)
            got = Int8SigmoidLayers(layers)(quantise_unit_interval(x), first_bias)
            want = torch.sigmoid(torch.sigmoid(x @ layers[0][0].t() + first_bias) @ layers[1][0].t() + layers[1][1])
            ok = got.shape == want.shape and float((got - want).abs().max()) < 0.02
        except (AttributeError, RuntimeError, TypeError):
            pass
        _WORKS.append(ok)
    return _WORKS[0]
