"""The instance-optimisation comparison protocol, shared by the 3D brain and the microscopy benchmarks.

For every loss: lambda = ``centre[loss]`` x each factor, run on a calibration pair; the smallest
lambda whose folding there is below ``folding_limit`` is used on every pair (the rule reads no
labels, so Dice stays a held-out measure). Results come in the layout :mod:`.report` reads
(per-pair lists of ``dice``, ``dice_per_label``, ``folding``; ``lambda``, ``sweep``, ``seconds_per_pair``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..image_io import Volume
from .bspline import register_bspline, transform_to_displacement
from .instance import optimise_displacement
from .losses import make_loss

FOLDING_LIMIT = 0.01
# Centre of the lambda grid per loss (the losses' scales differ by orders of magnitude), for the 2D network
# benchmark and instance optimisation alike; a pilot on the 3D calibration pair confirmed it as a usable middle.
LAMBDA_CENTRE = {"mse": 0.01, "ncc": 1.0, "ncc-sup": 1.0, "nmi": 0.3, "mind": 1.0, "deepsim-seg": 0.3,
                 "deepsim-ae": 0.3}
LAMBDA_FACTORS = (0.25, 1.0, 4.0)
# The losses instance optimisation compares: every label-free one (NCC_sup needs the labels it is scored on).
INSTANCE_LOSSES = ("mse", "ncc", "nmi", "mind", "deepsim-seg", "deepsim-ae")


def collect(per_pair: list[dict]) -> dict:
    """Per-pair score dicts -> lists per key."""
    return {"dice": [r["dice"] for r in per_pair], "dice_per_label": [r["dice_per_label"] for r in per_pair],
            "folding": [r["folding"] for r in per_pair]}


def smallest_lambda_under(folding: dict, folding_limit: float = FOLDING_LIMIT) -> float:
    """The smallest lambda of ``{lambda: folding fraction}`` folding under the limit (else the largest).

    The label-free rule of the lambda sweeps: the weakest regulariser that keeps the field nearly invertible.
    """
    ok = [lam for lam, f in folding.items() if f < folding_limit]
    return min(ok) if ok else max(folding)


def compare_losses(losses, images, pairs, score, feature_net_for, lambda_centre: dict, lambda_factors,
                   steps: int, lr: float, calibration: int = 0, folding_limit: float = FOLDING_LIMIT,
                   levels: int = 1, log=print) -> dict:
    """``{loss name: result}`` for instance optimisation of every pair with every loss.

    Args:
        images: list of ``(1, 1, H, W[, D])`` tensors; ``pairs``: ``[(moving idx, fixed idx), ...]``.
        score: ``score(ddf, pair) -> {"dice", "dice_per_label", "folding"}``.
        feature_net_for: ``(mode, pair) -> FeatureNet``, the DeepSim net allowed for that pair.
        calibration: index into ``pairs`` of the pair the lambda sweep runs on.
        levels: coarse-to-fine levels of :func:`~.instance.optimise_displacement`.
    """
    if any(name == "ncc-sup" for name in losses):
        raise ValueError("ncc-sup needs the pair's labels during optimisation; it has no place in instance "
                         "optimisation evaluated by those labels")
    dims = images[0].ndim - 2

    def run(name, lam, pair):
        mode = name.split("-")[1] if name.startswith("deepsim") else None
        loss = make_loss(name, dims, feature_net_for(mode, pair) if mode else None)
        ddf, hist = optimise_displacement(images[pair[0]], images[pair[1]], loss, lam, steps, lr, levels=levels)
        return dict(score(ddf, pair), seconds=hist["seconds"])

    out = {}
    for name in losses:
        sweep, runs = [], {}
        for k in lambda_factors:
            lam = lambda_centre[name] * k
            runs[lam] = r = run(name, lam, pairs[calibration])
            sweep.append({"lambda": lam, "calibration_dice": r["dice"], "calibration_folding": r["folding"],
                          "seconds": r["seconds"]})
            log(f"{name:12s} lambda {lam:<7g} calibration pair: Dice {r['dice']:.3f} folding "
                f"{100 * r['folding']:.2f}% ({r['seconds']:.0f} s)")
        lam = smallest_lambda_under({s["lambda"]: s["calibration_folding"] for s in sweep}, folding_limit)
        per_pair = [runs[lam] if i == calibration else run(name, lam, pair) for i, pair in enumerate(pairs)]
        result = collect(per_pair)
        result.update({"lambda": lam, "sweep": sweep,
                       "seconds_per_pair": float(np.mean([r["seconds"] for r in per_pair]))})
        out[name] = result
        log(f"{name:12s} mean Dice {np.mean(result['dice']):.3f} folding {100 * np.mean(result['folding']):.3f}% "
            f"({result['seconds_per_pair']:.1f} s per pair)")
    return out


def bspline_runs(images, pairs, score, shrink=(2, 1), log=print, **options) -> dict:
    """SimpleITK B-spline Mattes MI (:func:`~.bspline.register_bspline`, ``options`` passed on) on the same
    images and pairs."""
    per_pair = []
    for pair in pairs:
        fixed, moving = Volume(images[pair[1]][0, 0].numpy()), Volume(images[pair[0]][0, 0].numpy())
        t0 = time.perf_counter()
        transform = register_bspline(fixed, moving, shrink=shrink, **options)
        seconds = time.perf_counter() - t0
        ddf = torch.from_numpy(transform_to_displacement(transform, fixed).astype(np.float32))[None]
        per_pair.append(dict(score(ddf, pair), seconds=seconds))
        log(f"b-spline MI pair {pair}: Dice {per_pair[-1]['dice']:.3f} ({seconds:.0f} s)")
    out = collect(per_pair)
    out.update(seconds_per_pair=float(np.mean([r["seconds"] for r in per_pair])), pairs=len(pairs))
    return out
