"""DeepSim's microscopy setting on ISBI 2012 serial-section EM: consecutive sections, instance optimisation.

Protocol:

* sections 0..13 of ``microscopy/train`` train the DeepSim feature nets (seg: membrane vs
  interior, ae: reconstruction); section 14..15 are a gap; consecutive pairs among sections
  16..29 are evaluated (``section k+1 -> section k``, 13 pairs; ``both_directions`` adds the reverse);
* images block-averaged by ``factor`` (2: 256x256); a displacement is optimised per pair and loss
  (:mod:`.compare`: lambda from a label-free folding rule on the first pair), with ``levels``
  coarse-to-fine levels (the benchmark: 2, i.e. 128x128 then 256x256);
* Dice of the nearest-warped **membrane** mask against the fixed section's membranes on the full
  512x512 grid (not of the cells' connected components); folding on the optimisation grid;
  "affine only" = identity (the stack is already aligned); B-spline MI on the same images.
"""

from __future__ import annotations

import numpy as np
import torch

from ..datasets.microscopy import load_em_sections
from .compare import (FOLDING_LIMIT, INSTANCE_LOSSES, LAMBDA_CENTRE, LAMBDA_FACTORS, bspline_runs, collect,
                      compare_losses)
from .data import downsample
from .evaluate import dice_scores, folding_fraction
from .feature_net import train_feature_net
from .network import resize_displacement, warp_nearest

FEATURE_SECTIONS = range(0, 14)
EVAL_SECTIONS = range(16, 30)


def em_pairs(both_directions: bool = False) -> list[tuple[int, int]]:
    """``[(moving section, fixed section), ...]`` of consecutive evaluated sections."""
    ks = list(EVAL_SECTIONS)
    pairs = [(k + 1, k) for k in ks[:-1]]
    return pairs + [(f, m) for m, f in pairs] if both_directions else pairs


def membrane_score(ddf: torch.Tensor, moving: np.ndarray, fixed: np.ndarray) -> dict:
    """Membrane Dice on the full grid (masks ``(H, W)`` 0/1) and folding on the ddf's grid ``(1, 2, h, w)``."""
    full = resize_displacement(ddf, fixed.shape)
    warped = warp_nearest(torch.from_numpy(moving.astype(np.int64))[None, None], full)[0, 0].numpy()
    per_label = dice_scores(warped, fixed, labels=[1])
    return {"dice": per_label.get(1, 0.0), "dice_per_label": per_label, "folding": folding_fraction(ddf[0].numpy())}


def run_comparison_em(losses, factor: int = 2, steps: int = 100, lr: float = 0.1, lambda_factors=LAMBDA_FACTORS,
                      feature_epochs: int = 30, feature_lr: float = 3e-3, both_directions: bool = False,
                      bspline: bool = True, levels: int = 1, seed: int = 0, log=print) -> dict:
    """Every loss on every evaluated pair; result dict in the layout :mod:`.report` reads."""
    torch.manual_seed(seed)
    sections, membranes = load_em_sections("train")
    images = list(downsample(sections, factor)[:, None])  # each (1, 1, h, w)
    pairs = em_pairs(both_directions)
    out = {"setup": {"grid": list(sections.shape[1:]), "network_grid": list(images[0].shape[2:]), "factor": factor,
                     "levels": levels,
                     "pairs": [f"{m} -> {f}" for m, f in pairs], "steps": steps, "lr": lr,
                     "lambda_factors": list(lambda_factors), "calibration_pair": f"{pairs[0][0]} -> {pairs[0][1]}",
                     "folding_limit": FOLDING_LIMIT, "feature_sections": list(FEATURE_SECTIONS),
                     "feature_epochs": feature_epochs, "feature_lr": feature_lr, "seed": seed,
                     "score": "Dice of the membrane mask"}, "losses": {}}

    def score_pair(ddf, p):
        return membrane_score(ddf, membranes[p[0]], membranes[p[1]])

    zero = torch.zeros((1, 2) + tuple(images[0].shape[2:]))
    out["affine_only"] = collect([score_pair(zero, p) for p in pairs])
    log(f"identity (no deformation): membrane Dice {np.mean(out['affine_only']['dice']):.3f}")
    train_images = downsample(sections[list(FEATURE_SECTIONS)], factor)
    train_labels = torch.from_numpy(membranes[list(FEATURE_SECTIONS)][:, ::factor, ::factor].astype(np.int64))
    nets, info = {}, {}
    for mode in sorted({n.split("-")[1] for n in losses if n.startswith("deepsim")}):
        nets[mode], hist = train_feature_net(train_images, train_labels if mode == "seg" else None, mode,
                                             epochs=feature_epochs, batch_size=2, lr=feature_lr, seed=seed)
        info[mode] = {"seconds": hist["seconds"], "first_loss": hist["loss"][0], "final_loss": hist["loss"][-1]}
        log(f"feature net {mode}: {hist['seconds']:.0f} s, loss {hist['loss'][0]:.3f} -> {hist['loss'][-1]:.3f}")
    out["setup"]["feature_nets"] = info
    out["losses"] = compare_losses(losses, images, pairs, score_pair, lambda mode, p: nets[mode], LAMBDA_CENTRE,
                                   lambda_factors, steps, lr, 0, levels=levels, log=log)
    if bspline:
        out["bspline_mi"] = bspline_runs(images, pairs, score_pair, log=log)
    return out


def run_and_report_em(losses=INSTANCE_LOSSES, quick: bool = False,
                      out_dir="benchmarks/results", steps: int = 100, feature_epochs: int = 30, levels: int = 2,
                      both_directions: bool = False, log=print) -> dict:
    """:func:`run_comparison_em` and its report ``registration_em.{json,md,png}`` (``_quick`` when ``quick``).

    ``quick``: 20 steps, one lambda, 3 feature epochs, no B-spline (a smoke run of a few minutes).
    """
    import time
    from pathlib import Path

    from .report import instance_protocol, write_report

    t0 = time.perf_counter()
    kw = dict(steps=20, lambda_factors=(1.0,), feature_epochs=3, bspline=False) if quick else \
        dict(steps=steps, feature_epochs=feature_epochs, lambda_factors=(0.25, 1.0, 4.0, 16.0))
    result = run_comparison_em(list(losses), both_directions=both_directions, levels=levels, log=log, **kw)
    s = result["setup"]
    s["minutes_total"] = (time.perf_counter() - t0) / 60
    header = (f"Serial-section EM registration (ISBI 2012), {len(s['pairs'])} consecutive pairs of held-out sections "
              f"16..29, per-pair instance optimisation\n\n{instance_protocol(s, 'the first pair')} "
              f"DeepSim feature nets trained on sections 0..13 "
              f"({s['feature_epochs']} epochs). 'mean Dice' = Dice of the warped membrane mask vs the fixed "
              f"section's membranes on the full {'x'.join(str(n) for n in s['grid'])} grid; 'affine only' = "
              f"identity (the stack is pre-aligned); folding on the optimisation grid; time per pair on one CPU "
              f"thread. {s['minutes_total']:.1f} min in all.")
    stem = "registration_em_quick" if quick else "registration_em"
    title = f"ISBI 2012 EM, {len(s['pairs'])} consecutive held-out pairs: membrane Dice per pair (triangle: mean)"
    log(write_report(result, out_dir, stem, header, title, paper=False))
    log(f"identity {np.mean(result['affine_only']['dice']):.3f}; wrote {Path(out_dir) / stem}.json, .md, .png")
    return result
