"""A trained 3D registration network per loss on the brain volumes, tested on held-out OASIS 0001 <-> 0002.

Trained on the four directed pairs vxm <-> OASIS 0001 / 0002 (../shared/data/brain-mr, 4x block-averaged
to 56x48x40), batch 1 with a random flip + small affine applied to both images of a sample; lambda per
loss from the single-level 3D instance benchmark the committed results were made with
(benchmarks/results/registration_3d_1level.json; --instance picks another run), whose Dice on the same
two test pairs is tabled beside the networks'. DeepSim feature nets on the vxm subject only. One thread.
Protocol details: DeepSimilarityLib/registration/experiment3d_net.py.

    python benchmarks/eval_registration_3d_net.py [--quick] [--steps 1000] [--losses mse,ncc,deepsim-seg]
        [--feature-steps 120] [--feature-augment] [--feature-intensity] [--feature-encoder strided]
        [--deepsim-before-warp] [--deepsim-histogram-match] [--feature-channels 16,32,32]
        [--feature-dropout 0.2] [--feature-ensemble 3] [--feature-block-labels majority] [--feature-phases]
        [--feature-levels 2] [--feature-propagated-labels]
        [--seed 0] [--no-augment] [--velocity [--regularise velocity]]
        [--lambda-factors 1,4,16] [--lambda-rule validation] [--stem registration_3d_net]
      -> benchmarks/results/STEM.{json,md,png}   (--quick: STEM_quick.*)
    python benchmarks/eval_registration_3d_net.py --merge A.json,B.json --stem STEM
      -> one report from runs of disjoint --losses (e.g. one process per core)
    python benchmarks/eval_registration_3d_net.py --fold 1 ...   (hub OASIS 0001: test vxm <-> OASIS 0002)
    python benchmarks/eval_registration_3d_net.py --merge-folds F0.json,F1.json,F2.json --stem STEM
      -> one report over the test pairs of every fold (all six directed pairs for folds 0, 1, 2)
    python benchmarks/eval_registration_3d_net.py --report RESULT.json   -> its .md and .png again
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from DeepSimilarityLib.paths import missing_shared_data

RESULTS = Path(__file__).parent / "results"


def _channels(text: str) -> tuple:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated whole numbers: {text!r}") from None


def main(argv=None):
    from DeepSimilarityLib.cli.common import positive_numbers
    from DeepSimilarityLib.registration.compare import INSTANCE_LOSSES
    from DeepSimilarityLib.errors import InputError
    from DeepSimilarityLib.registration.experiment3d import BLOCK_LABELS
    from DeepSimilarityLib.registration.experiment3d_net import DeepSimVariant, run_and_report_3d_net
    from DeepSimilarityLib.registration.feature_net import ENCODERS
    from DeepSimilarityLib.registration.report_net3d import merge_3d_net_folds, merge_3d_net_results, report_3d_net
    from DeepSimilarityLib.registration.train import REGULARISED, check_regularise

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 steps, 5 feature steps, no ablation (smoke run)")
    p.add_argument("--losses", default=",".join(INSTANCE_LOSSES), help="comma-separated subset of the default")
    p.add_argument("--steps", type=int, default=1000, help="training samples per net (batch 1)")
    p.add_argument("--ablation", default="mse", help="losses trained once more without augmentation ('' for none)")
    p.add_argument("--instance", default=str(RESULTS / "registration_3d_1level.json"),
                   help="the 3D instance benchmark's JSON: lambdas and the comparison column")
    p.add_argument("--feature-steps", type=int, default=120, help="DeepSim feature-net training steps (default 120)")
    p.add_argument("--feature-augment", action="store_true",
                   help="train the DeepSim feature nets on a new random pose of the hub subject (image + labels) "
                        "every step")
    p.add_argument("--feature-intensity", action="store_true",
                   help="train the DeepSim feature nets on a new random contrast of the hub subject every step "
                        "(bias field, gamma, noise)")
    # The feature-net and DeepSim options are DeepSimVariant's fields, by name, with its defaults.
    p.add_argument("--feature-encoder", default=DeepSimVariant.feature_encoder, choices=ENCODERS,
                   help="DeepSim feature-net encoder: pooled (instance norm, first level at full resolution; "
                        "default) or strided (the paper's stride-2 stages without normalisation)")
    p.add_argument("--deepsim-before-warp", action="store_true",
                   help="DeepSim losses compare the moving image's feature maps warped by the displacement with the "
                        "fixed image's (extract before warp) instead of the features of the warped image")
    p.add_argument("--deepsim-histogram-match", action="store_true",
                   help="DeepSim losses map every image onto the hub subject's foreground intensity quantiles "
                        "before the feature net (which learned from the hub alone)")
    p.add_argument("--feature-channels", type=_channels, default=DeepSimVariant.feature_channels,
                   help="DeepSim feature-net channels per level, comma-separated (default 16,32,32)")
    p.add_argument("--feature-dropout", type=float, default=DeepSimVariant.feature_dropout,
                   help="dropout after every feature-net convolution while it trains (default 0)")
    p.add_argument("--feature-block-labels", default=DeepSimVariant.feature_block_labels, choices=sorted(BLOCK_LABELS),
                   help="segmentation targets of the DeepSim feature nets on the network grid: the label at each "
                        "block's corner voxel (default) or each block's most frequent label")
    p.add_argument("--feature-phases", action="store_true",
                   help="train the DeepSim feature nets on the hub block-averaged at every grid offset (64 exact "
                        "sub-voxel shifts at factor 4) instead of offset 0 alone; same number of steps")
    p.add_argument("--feature-ensemble", type=int, default=DeepSimVariant.feature_ensemble,
                   help="DeepSim feature nets per loss, from seeds seed, seed + 1, ...; the loss averages over them")
    p.add_argument("--feature-levels", type=int, default=DeepSimVariant.feature_levels,
                   help="DeepSim over each feature net's this many finest levels (default 0: all)")
    p.add_argument("--feature-propagated-labels", action="store_true",
                   help="train each DeepSim feature net on all three subjects: the hub with its labels, the other two "
                        "with the hub's labels carried onto them by NCC instance registration; same number of steps")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the feature nets, the registration nets' initialisation and the augmentation draws")
    p.add_argument("--no-augment", action="store_true",
                   help="train every registration net on the pairs as they are (no flip or affine)")
    p.add_argument("--velocity", action="store_true",
                   help="every net outputs a stationary velocity field integrated by scaling and squaring")
    p.add_argument("--regularise", default="displacement", choices=REGULARISED,
                   help="the field the diffusion regulariser acts on; 'velocity' (VoxelMorph's choice) needs "
                        "--velocity")
    p.add_argument("--lambda-factors", type=positive_numbers, default=[1.0],
                   help="comma-separated factors on each loss's lambda; with several, --lambda-rule picks one")
    p.add_argument("--lambda-rule", default="validation", choices=["validation", "folding"],
                   help="validation: best Dice on synthetic deformations of the hub subject (default); folding: "
                        "smallest lambda whose training-pair folding stays under 1%%")
    p.add_argument("--fold", type=int, default=0, choices=[0, 1, 2],
                   help="hub subject: 0 vxm (test OASIS 0001 <-> 0002; default), 1 OASIS 0001, 2 OASIS 0002; it "
                        "alone trains the feature nets and is in every training pair")
    p.add_argument("--merge", default="", help="comma-separated result JSONs of disjoint losses: write one report")
    p.add_argument("--merge-folds", default="",
                   help="comma-separated result JSONs of different --fold runs with the same losses: one report")
    p.add_argument("--report", default="", help="a result JSON of this script: rewrite its .md and .png from it")
    p.add_argument("--stem", default="registration_3d_net", help="result file name without extension")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    instance = json.loads(Path(args.instance).read_text()) if Path(args.instance).is_file() else None
    if instance is not None:
        instance["source"] = Path(args.instance).name
    if args.report:
        path = Path(args.report)
        report_3d_net(json.loads(path.read_text()), path.parent, path.stem, instance)
        return 0
    for files, merge in ((args.merge, merge_3d_net_results), (args.merge_folds, merge_3d_net_folds)):
        if files:
            runs = [json.loads(Path(f.strip()).read_text()) for f in files.split(",")]
            report_3d_net(merge(runs), args.out_dir, args.stem, instance)
            return 0
    if missing_shared_data("brain-mr/oasis"):
        return 2
    torch.set_num_threads(1)
    if instance is None:
        print(f"{args.instance} not found: lambdas 0.25 x LAMBDA_CENTRE, no instance column", file=sys.stderr)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    try:
        check_regularise(args.regularise, args.velocity, "--regularise")
        variant = DeepSimVariant(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DeepSimVariant)})
    except InputError as e:
        p.error(str(e))
    run_and_report_3d_net([s.strip() for s in args.losses.split(",")], quick=args.quick, out_dir=args.out_dir,
                          steps=args.steps, instance=instance,
                          ablation=[s.strip() for s in args.ablation.split(",") if s.strip()],
                          feature_steps=args.feature_steps, stem=args.stem, lambda_factors=args.lambda_factors,
                          lambda_rule=args.lambda_rule, fold=args.fold, seed=args.seed,
                          augment=not args.no_augment, variant=variant, velocity=args.velocity,
                          regularise=args.regularise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
