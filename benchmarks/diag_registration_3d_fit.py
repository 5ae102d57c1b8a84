"""How well can each loss fit the held-out 3D brain pair itself? A diagnostic, chooses nothing.

The trained 3D nets rank NCC above DeepSim_seg on held-out OASIS 0001 <-> 0002, while the 3D
instance benchmark (100 Adam steps per level) ranks DeepSim_seg first over six pairs. This script
asks whether that ranking is a property of the losses' optima or of the optimisation budget, on the
fold-0 test pair (both directions) with the fold-0 feature net (the vxm subject, 120 steps):

* instance optimisation (2 coarse-to-fine levels, lr 0.1 voxel) at 100, 400 and 1000 steps per level;
* a registration net trained on those two directed pairs alone (no augmentation), i.e. fitted to them.

Same lambdas as the benchmarks (0.25 x LAMBDA_CENTRE). Dice over seg35 on the full grid. It reads
the test pair's labels, so it is kept out of every choice; one thread, ~25 min.

    python benchmarks/diag_registration_3d_fit.py [--net-steps 600] [--budgets 100,400,1000] [--losses ...]
      -> benchmarks/results/registration_3d_fit.{json,md}
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from DeepSimilarityLib.cli.common import write_json, write_text
from DeepSimilarityLib.paths import missing_shared_data

RESULTS = Path(__file__).parent / "results"


def fit(losses, budgets, net_steps: int, log=print) -> dict:
    from DeepSimilarityLib.registration.data import load_brain_volumes
    from DeepSimilarityLib.registration.experiment3d import downsampled, feature_nets, score
    from DeepSimilarityLib.registration.experiment3d_net import INSTANCE_LAMBDA, fold_pairs
    from DeepSimilarityLib.registration.instance import optimise_displacement
    from DeepSimilarityLib.registration.losses import make_loss
    from DeepSimilarityLib.registration.train import train_registration

    torch.manual_seed(0)
    vols = load_brain_volumes()
    images = torch.cat(downsampled(vols, 4))
    nets, info = feature_nets(vols, list(images[:, None]), ["seg"], 120, 3e-3, 4, 0, log, subjects=(0,))
    _, pairs = fold_pairs(0)
    out = {"setup": {"pairs": [f"{vols.names[m]} -> {vols.names[f]}" for m, f in pairs], "grid": list(images.shape[2:]),
                     "levels": 2, "lr": 0.1, "budgets": list(budgets), "net_steps": net_steps, "net_lr": 3e-3,
                     "feature_net": "seg, the vxm subject, 120 steps (fold 0)", "feature_info": info},
           "losses": {}}
    for name in losses:
        loss = make_loss(name, 3, nets[("seg", 0)] if name.startswith("deepsim") else None)
        lam, row = INSTANCE_LAMBDA[name], {"lambda": INSTANCE_LAMBDA[name], "instance": {}}
        for steps in budgets:
            t0, dice = time.perf_counter(), []
            for m, f in pairs:
                u, _ = optimise_displacement(images[m:m + 1], images[f:f + 1], loss, lam, steps, 0.1, levels=2)
                dice.append(score(u, vols.labels[m], vols.labels[f])["dice"])
            row["instance"][str(steps)] = dice
            log(f"{name:12s} instance 2 x {steps:4d} steps: Dice {np.mean(dice):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
        net, hist = train_registration(images, torch.tensor(pairs), loss, lam, epochs=max(1, net_steps // len(pairs)),
                                       batch_size=1, lr=3e-3, loss_name=name, seed=0)
        with torch.no_grad():
            scores = [score(net.displacement(images[m:m + 1], images[f:f + 1]), vols.labels[m], vols.labels[f])
                      for m, f in pairs]
        row["net_fitted"] = {"dice": [s["dice"] for s in scores], "folding": [s["folding"] for s in scores],
                             "seconds": hist["seconds"]}
        log(f"{name:12s} net fitted to the pair ({net_steps} steps): Dice {np.mean(row['net_fitted']['dice']):.3f}, "
            f"folding {100 * np.mean(row['net_fitted']['folding']):.3f}% ({hist['seconds']:.0f} s)")
        out["losses"][name] = row
    return out


def table(result: dict) -> str:
    s = result["setup"]
    budgets = [str(b) for b in s["budgets"]]
    lines = [f"Fitting the held-out pair itself ({'; '.join(s['pairs'])}), mean Dice over both directions",
             "",
             f"Instance optimisation: {s['levels']} levels x N Adam steps, lr {s['lr']} voxel. Net: a registration "
             f"U-Net trained on these two directed pairs only, {s['net_steps']} steps, lr {s['net_lr']}, no "
             f"augmentation. Feature net: {s['feature_net']}. A diagnostic: it reads the test labels and chooses "
             "nothing.",
             "",
             "| loss | lambda | " + " | ".join(f"instance 2x{b}" for b in budgets) + " | net fitted to the pair |",
             "|---|---:|" + "---:|" * (len(budgets) + 1)]
    for name, r in result["losses"].items():
        cells = [f"{np.mean(r['instance'][b]):.3f}" for b in budgets] + [f"{np.mean(r['net_fitted']['dice']):.3f}"]
        lines.append(f"| {name} | {r['lambda']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--losses", default="mse,ncc,deepsim-seg", help="comma-separated label-free losses")
    p.add_argument("--budgets", default="100,400,1000", help="instance steps per level, comma-separated")
    p.add_argument("--net-steps", type=int, default=600, help="training steps of the net fitted to the pair")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if missing_shared_data("brain-mr/oasis"):
        return 2
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = fit([s.strip() for s in args.losses.split(",")], [int(b) for b in args.budgets.split(",")],
                 args.net_steps)
    result["setup"]["minutes_total"] = (time.perf_counter() - t0) / 60
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "registration_3d_fit.json")
    text = table(result)
    write_text(text, out / "registration_3d_fit.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
