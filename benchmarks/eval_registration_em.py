"""DeepSim registration in the electron-microscopy setting: consecutive ISBI 2012 sections, every loss.

Sections 0..13 of ../shared/data/microscopy/train train the DeepSim feature nets (membrane
segmentation / autoencoding); consecutive pairs among the held-out sections 16..29 are registered
by per-pair instance optimisation on the 2x block-averaged 256x256 grid (coarse to fine from
128x128; lambda per loss by a label-free folding rule on the first pair) and scored by the Dice of the warped membrane mask on
the full 512x512 grid; folding on the optimisation grid; SimpleITK B-spline MI on the same images.
One thread. Protocol details: DeepSimilarityLib/registration/experiment_em.py.

    python benchmarks/eval_registration_em.py [--quick] [--losses mse,ncc,deepsim-seg] [--both-directions]
      -> benchmarks/results/registration_em.{json,md,png}   (--quick: registration_em_quick.*)

Lambda factors 0.25..16 of the shared centres: a quick run folded 2-5% at the centre on these sections.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from DeepSimilarityLib.paths import has_shared_data

RESULTS = Path(__file__).parent / "results"
DEFAULT_LOSSES = "mse,ncc,nmi,mind,deepsim-seg,deepsim-ae"


def main(argv=None):
    from DeepSimilarityLib.registration.experiment_em import run_comparison_em
    from DeepSimilarityLib.registration.report import write_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 steps, one lambda, 3 feature epochs, no B-spline")
    p.add_argument("--losses", default=DEFAULT_LOSSES, help="comma-separated subset of " + DEFAULT_LOSSES)
    p.add_argument("--steps", type=int, default=100, help="Adam steps per pair and loss")
    p.add_argument("--feature-epochs", type=int, default=30)
    p.add_argument("--levels", type=int, default=2, help="coarse-to-fine levels of the optimisation (1: single grid)")
    p.add_argument("--both-directions", action="store_true", help="also register section k -> k+1 (26 pairs)")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if not has_shared_data("microscopy/train"):
        print("needs ../shared/data/microscopy (see its README); nothing to evaluate", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    losses = [s.strip() for s in args.losses.split(",")]
    t0 = time.perf_counter()
    kw = dict(steps=20, lambda_factors=(1.0,), feature_epochs=3, bspline=False) if args.quick else \
        dict(steps=args.steps, feature_epochs=args.feature_epochs, lambda_factors=(0.25, 1.0, 4.0, 16.0))
    result = run_comparison_em(losses, both_directions=args.both_directions, levels=args.levels, **kw)
    s = result["setup"]
    s["minutes_total"] = (time.perf_counter() - t0) / 60
    g = "x".join(str(n) for n in s["network_grid"])
    header = (f"Serial-section EM registration (ISBI 2012), {len(s['pairs'])} consecutive pairs of held-out sections "
              f"16..29, per-pair instance optimisation\n\nDisplacement optimised on the {g} grid ({s['factor']}x "
              f"block-averaged, {s['levels']} coarse-to-fine level(s) of {s['steps']} Adam steps, lr {s['lr']}); "
              f"lambda per loss from "
              f"{len(s['lambda_factors'])} values, the smallest with folding < 1% on the first pair "
              f"{s['calibration_pair']} (no labels read). DeepSim feature nets trained on sections 0..13 "
              f"({s['feature_epochs']} epochs). 'mean Dice' = Dice of the warped membrane mask vs the fixed "
              f"section's membranes on the full {'x'.join(str(n) for n in s['grid'])} grid; 'affine only' = "
              f"identity (the stack is pre-aligned); folding on the optimisation grid; time per pair on one CPU "
              f"thread. {s['minutes_total']:.1f} min in all.")
    stem = "registration_em_quick" if args.quick else "registration_em"
    title = f"ISBI 2012 EM, {len(s['pairs'])} consecutive held-out pairs: membrane Dice per pair (triangle: mean)"
    print(write_report(result, args.out_dir, stem, header, title, paper=False))
    print(f"identity {np.mean(result['affine_only']['dice']):.3f}; wrote {Path(args.out_dir) / stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
