"""DeepSim registration on 2D brain MR (Czolbe, Krause & Feragen 2021): every loss trained the same way.

Coronal slices of the three brain volumes of ../shared/data/brain-mr (OASIS 0001, 0002 and the
VoxelMorph scan, one 160x192x224 grid): registration nets trained on vxm <-> OASIS slice pairs,
lambda chosen per loss on validation slices of the OASIS pair, Dice / folding / time on held-out
slices of the OASIS pair 0001 <-> 0002 (both directions); DeepSim feature nets trained on the vxm
scan alone (see DeepSimilarityLib/registration/data.py). Networks run on the 2x downsampled
96x80 grid; displacements are upsampled and the labels warped and scored on the full 192x160 grid.
SimpleITK B-spline Mattes MI on the full-resolution pairs is the classical reference. One thread.
The same run: ``deepsim evaluate registration``.

    python benchmarks/eval_registration.py [--quick] [--save-weights weights/] [--velocity [--regularise velocity]]
        [--losses mse,ncc]
        [--lambda-factors 0.25,1,4] [--stem NAME]
      -> benchmarks/results/registration_2d.{json,md,png}   (--quick: registration_2d_quick.*;
         --velocity: registration_2d_velocity.*; --stem: NAME.*)
"""

import argparse
import sys
from pathlib import Path

import torch

from DeepSimilarityLib.paths import missing_shared_data

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    from DeepSimilarityLib.cli.common import positive_numbers
    from DeepSimilarityLib.registration.losses import CROSS_MODALITY, LOSSES
    from DeepSimilarityLib.errors import InputError
    from DeepSimilarityLib.registration.report import run_and_report
    from DeepSimilarityLib.registration.train import REGULARISED, check_regularise

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 epochs, one lambda, 8 B-spline pairs: a smoke run (~3 min)")
    brain = [name for name in LOSSES if name not in CROSS_MODALITY]
    p.add_argument("--losses", default=",".join(brain), help="comma-separated subset of " + ", ".join(brain))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--velocity", action="store_true",
                   help="nets output a stationary velocity field (scaling and squaring) -> registration_2d_velocity.*")
    p.add_argument("--regularise", default="displacement", choices=REGULARISED,
                   help="the field the diffusion regulariser acts on; 'velocity' needs --velocity "
                        "(-> registration_2d_velreg.*)")
    p.add_argument("--lambda-factors", type=positive_numbers, default=None,
                   help="comma-separated factors on each loss's lambda centre (default 0.25,1,4); validation picks one")
    p.add_argument("--stem", default="", help="result file name without extension (default from the options)")
    p.add_argument("--save-weights", help="folder to write the chosen deepsim-seg net and its feature net into")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    try:
        check_regularise(args.regularise, args.velocity, "--regularise")
    except InputError as e:
        p.error(str(e))
    if missing_shared_data("brain-mr/oasis"):
        return 2
    torch.set_num_threads(1)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)  # before the run: a missing folder would lose it at the end
    run_and_report([s.strip() for s in args.losses.split(",")], args.quick, args.epochs, args.out_dir,
                   args.save_weights, args.velocity, args.lambda_factors, args.stem or None, args.regularise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
