"""DeepSim registration in 3D on the three brain volumes: every loss by per-pair instance optimisation.

The six directed pairs between the VoxelMorph scan and OASIS 0001 / 0002 (../shared/data/brain-mr,
one affinely normalised 160x192x224 grid), block-averaged 4x (56x48x40, 4 mm); a displacement is
optimised per pair and loss (Adam, diffusion regulariser), lambda per loss chosen on one calibration
pair by a label-free rule (smallest lambda with folding < 1%); the DeepSim feature nets (3D) are
trained for each pair on the third subject alone. Dice over seg35 on the full grid, folding on the
optimisation grid, SimpleITK B-spline MI on the same 4 mm images. One thread. Protocol details:
DeepSimilarityLib/registration/experiment3d.py.

    python benchmarks/eval_registration_3d.py [--quick] [--losses mse,ncc,deepsim-seg]
      -> benchmarks/results/registration_3d.{json,md,png}   (--quick: registration_3d_quick.*)
"""

import argparse
import sys
from pathlib import Path

import torch

from DeepSimilarityLib.paths import missing_shared_data

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    from DeepSimilarityLib.registration.compare import INSTANCE_LOSSES
    from DeepSimilarityLib.registration.experiment3d import run_and_report_3d

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 steps, one lambda, 10 feature steps, no B-spline (smoke)")
    p.add_argument("--losses", default=",".join(INSTANCE_LOSSES), help="comma-separated subset of the default")
    p.add_argument("--steps", type=int, default=100, help="Adam steps per pair and loss")
    p.add_argument("--feature-steps", type=int, default=120, help="training steps of each 3D feature net")
    p.add_argument("--factor", type=int, default=4, help="block-averaging factor of the optimisation grid")
    p.add_argument("--levels", type=int, default=2, help="coarse-to-fine levels of the optimisation (1: single grid)")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if missing_shared_data("brain-mr/oasis"):
        return 2
    torch.set_num_threads(1)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    run_and_report_3d([s.strip() for s in args.losses.split(",")], args.quick, args.out_dir, args.steps,
                      args.feature_steps, args.factor, args.levels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
