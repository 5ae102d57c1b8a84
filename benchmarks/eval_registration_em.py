"""DeepSim registration in the electron-microscopy setting: consecutive ISBI 2012 sections, every loss.

Sections 0..13 of ../shared/data/microscopy/train train the DeepSim feature nets (membrane
segmentation / autoencoding); consecutive pairs among the held-out sections 16..29 are registered
by per-pair instance optimisation on the 2x block-averaged 256x256 grid (coarse to fine from
128x128; lambda per loss by a label-free folding rule on the first pair) and scored by the Dice of the
warped membrane mask on the full 512x512 grid; folding on the optimisation grid; SimpleITK B-spline MI on
the same images. One thread. Protocol details: DeepSimilarityLib/registration/experiment_em.py.

    python benchmarks/eval_registration_em.py [--quick] [--losses mse,ncc,deepsim-seg] [--both-directions]
      -> benchmarks/results/registration_em.{json,md,png}   (--quick: registration_em_quick.*)

Lambda factors 0.25..16 of the shared centres: a quick run folded 2-5% at the centre on these sections.
"""

import argparse
import sys
from pathlib import Path

import torch

from DeepSimilarityLib.paths import missing_shared_data

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    from DeepSimilarityLib.registration.compare import INSTANCE_LOSSES
    from DeepSimilarityLib.registration.experiment_em import run_and_report_em

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 steps, one lambda, 3 feature epochs, no B-spline")
    p.add_argument("--losses", default=",".join(INSTANCE_LOSSES), help="comma-separated subset of the default")
    p.add_argument("--steps", type=int, default=100, help="Adam steps per pair and loss")
    p.add_argument("--feature-epochs", type=int, default=30)
    p.add_argument("--levels", type=int, default=2, help="coarse-to-fine levels of the optimisation (1: single grid)")
    p.add_argument("--both-directions", action="store_true", help="also register section k -> k+1 (26 pairs)")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if missing_shared_data("microscopy/train"):
        return 2
    torch.set_num_threads(1)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    run_and_report_em([s.strip() for s in args.losses.split(",")], args.quick, args.out_dir, args.steps,
                      args.feature_epochs, args.levels, args.both_directions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
