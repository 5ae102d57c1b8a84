"""The classical reference in 3D: SimpleITK B-spline Mattes MI on the six directed brain pairs, two settings.

The settings registration_3d.md was run with (mesh 8 cells per axis, 2 image levels, L-BFGS-B, taken from
the 2D benchmark) beside a standard 3D multi-resolution recipe (3 image levels, the mesh doubled per level:
4, 8, 16 cells; gradient descent with line search), both in this process, on the same 4 mm images
(56x48x40) and scored as the instance benchmark scores its losses (Dice over seg35 on the full grid,
folding on the 4 mm grid). No label is read to set anything. One thread.

    python benchmarks/eval_bspline_3d.py [--pairs 6]
      -> benchmarks/results/registration_3d_bspline.{json,md,png}
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from DeepSimilarityLib.paths import missing_shared_data

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    from DeepSimilarityLib.registration.experiment3d import run_bspline_settings_3d
    from DeepSimilarityLib.registration.report import write_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=6, choices=range(1, 7), help="the first N of the six pairs")
    p.add_argument("--stem", default="registration_3d_bspline", help="result file name without extension")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if missing_shared_data("brain-mr/oasis"):
        return 2
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = run_bspline_settings_3d(pairs=args.pairs)
    s = result["setup"]
    s["minutes_total"] = (time.perf_counter() - t0) / 60
    header = (f"SimpleITK B-spline Mattes MI (32 bins, 20% random samples) on {len(s['pairs'])} directed brain pairs "
              f"({', '.join(s['pairs'])}), on the {'x'.join(map(str, s['network_grid']))} grid "
              f"({s['factor']}x block-averaged), two settings in one process; Dice over seg35 on the full "
              f"{'x'.join(map(str, s['grid']))} grid, folding on the 4 mm grid, ms / pair = the registration on one "
              f"CPU thread. {s['minutes_total']:.1f} min in all.")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    print(write_report(result, args.out_dir, args.stem, header, "3D brain MR: B-spline MI settings", paper=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
