"""DeepSim registration on 2D brain MR (Czolbe, Krause & Feragen 2021): every loss trained the same way.

Coronal slices of the three brain volumes of ../shared/data/brain-mr (OASIS 0001, 0002 and the
VoxelMorph scan, one 160x192x224 grid): registration nets trained on vxm <-> OASIS slice pairs,
lambda chosen per loss on validation slices of the OASIS pair, Dice / folding / time on held-out
slices of the OASIS pair 0001 <-> 0002 (both directions); DeepSim feature nets trained on the vxm
scan alone (see DeepSimilarityLib/registration/data.py). Networks run on the 2x downsampled
96x80 grid; displacements are upsampled and the labels warped and scored on the full 192x160 grid.
SimpleITK B-spline Mattes MI on the full-resolution pairs is the classical reference. One thread.

    python benchmarks/eval_registration.py [--quick] [--save-weights weights/]
      -> benchmarks/results/registration_2d.{json,md,png}
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from DeepSimilarityLib.paths import has_shared_data

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    from DeepSimilarityLib.registration.experiment import LAMBDA_FACTORS, run_comparison, save_trained
    from DeepSimilarityLib.registration.losses import LOSSES
    from DeepSimilarityLib.registration.report import write_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 epochs, one lambda, 8 B-spline pairs: a smoke run (~3 min)")
    p.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset of " + ", ".join(LOSSES))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--save-weights", help="folder to write the chosen deepsim-seg net and its feature net into")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if not has_shared_data("brain-mr/oasis"):
        print("needs ../shared/data/brain-mr (see its README); nothing to evaluate", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    losses = [s.strip() for s in args.losses.split(",")]
    epochs = 2 if args.quick else args.epochs
    t0 = time.perf_counter()
    result = run_comparison(losses, epochs=epochs, lambda_factors=(1.0,) if args.quick else LAMBDA_FACTORS,
                            feature_epochs=3 if args.quick else 20, bspline_pairs=8 if args.quick else None)
    minutes = (time.perf_counter() - t0) / 60
    result["setup"]["minutes_total"] = minutes
    stem = "registration_2d_quick" if args.quick else "registration_2d"
    s = result["setup"]
    header = (f"Learned 2D registration of held-out coronal brain MR slices (OASIS 0001 <-> 0002, {s['test_pairs']} "
              f"directed pairs)\n\nNetworks on the {s['network_grid'][0]}x{s['network_grid'][1]} grid (2x downsampled), "
              f"Dice scored on the full {s['grid'][0]}x{s['grid'][1]} grid over the seg35 labels present; "
              f"{s['train_pairs']} training pairs (vxm <-> OASIS), {epochs} epochs, lambda from "
              f"{len(s['lambda_factors'])} values per loss by validation Dice ({s['val_pairs']} pairs); "
              f"feature nets trained on the vxm scan only. One CPU thread, {minutes:.1f} min in all. "
              f"Paper column: the paper's 3D brain MRI Dice, for ordering only.")
    print(write_report(result, args.out_dir, stem, header))
    print(f"wrote {Path(args.out_dir) / stem}.json, .md and .png")
    if args.save_weights:
        for path in save_trained(result, args.save_weights):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
