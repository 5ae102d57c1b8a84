"""``deepsim evaluate``: the papers' evaluations, writing tables and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import write_json, write_text
from .similarity import add_recipe_options, describe_recipe, recipe_kwargs, recipe_suffix


def register_parser(sub):
    p = sub.add_parser("evaluate", help="reproduce an evaluation (rank-error, registration, retrieval)")
    kinds = p.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    r = kinds.add_parser("rank-error", help="Cheng et al. 3.2: rank of the true match in 81x81, leave-patient-out")
    r.add_argument("--region", default="head", choices=["head", "body"], help="patients of ../shared/data/ct-mr-slices")
    r.add_argument("--mr", default="T1", choices=["T1", "T2"])
    r.add_argument("--also-train-on", choices=["T1", "T2"],
                   help="another MR sequence whose CT/MR pairs join the training slices (the training patients' "
                        "only; testing stays on --mr): more than one MR contrast to learn from")
    r.add_argument("--also-train-on-region", choices=["head", "body"],
                   help="the other region's patients (never tested) join every fold's training slices, same --mr")
    r.add_argument("--n-test", type=int, default=300, help="test skull patches over all folds (default 300)")
    r.add_argument("--pairs", type=int, default=2000, help="positive training pairs per fold (default 2000)")
    r.add_argument("--setting", default="modern", choices=["paper", "modern"],
                   help="training preset: paper (SGD lr 0.5, batch 5) or modern (Adam; default)")
    r.add_argument("--variants", default="all", help="'all' or comma-separated: deep, unimodal, shallow")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--cascade", action="store_true",
                   help="also evaluate the cascade with a dark-MR hard-negative classifier")
    r.add_argument("--rank-sum-nmi", action="store_true",
                   help="also evaluate the multimodal deep network and NMI combined by the sum of their ranks in "
                        "the map")
    add_recipe_options(r)
    r.add_argument("--downsample", type=int, default=2,
                   help="block-average the 512 px slices by this factor (default 2: ~0.9 mm)")
    r.add_argument("--max-outline-distance", type=float, default=3.0,
                   help="drop slice pairs whose body outlines lie farther apart after registration, in 512-px "
                        "voxels (default 3)")
    r.add_argument("--train-outline-distance", type=float,
                   help="training slices may lie this far apart (default: --max-outline-distance); the pairs between "
                        "the two limits train the other folds and are never tested")
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    r.add_argument("--out-dir", default="benchmarks/results", help="folder for the table, JSON and Psi plot")
    r.set_defaults(func=run_rank_error)
    g = kinds.add_parser("registration", help="DeepSim paper's comparison: Dice, folding and time per loss, "
                                              "B-spline MI reference, table + box plot")
    g.add_argument("--data", default="slices", choices=["slices", "brain3d", "brain3d-net", "em"],
                   help="slices: learned 2D networks on OASIS coronal slices (21 min); brain3d: the six directed "
                        "3D brain pairs, em: ISBI EM section pairs, both by per-pair instance optimisation "
                        "(37 and 16 min); brain3d-net: trained 3D networks, 3-fold cross-validated over the three "
                        "subjects so that each directed pair is held out once (~30 min per fold at 1000 steps)")
    g.add_argument("--losses", default="all", help="'all' or comma-separated: mse, ncc, ncc-sup (slices only), nmi, "
                                                 "mind, deepsim-seg, deepsim-ae")
    g.add_argument("--epochs", type=int, default=10, help="slices: training epochs per loss and lambda (default 10)")
    g.add_argument("--steps", type=int, default=None,
                   help="brain3d/em: Adam steps per pair and loss (default 100); brain3d-net: training steps per "
                        "network (default 1000)")
    g.add_argument("--fold", default="all", choices=["all", "0", "1", "2"],
                   help="brain3d-net: which hub subject's fold to run (default all three, then one merged table)")
    g.add_argument("--quick", action="store_true", help="smoke run: fewer epochs/steps, one lambda, fewer or no "
                                                        "B-spline pairs")
    g.add_argument("--save-weights", help="folder for the chosen deepsim-seg net and its feature net")
    g.add_argument("--velocity", action="store_true",
                   help="slices and brain3d-net: the nets output a stationary velocity field (scaling and squaring); "
                        "writes registration_2d_velocity.* or registration_3d_net_folds_velocity*")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    g.add_argument("--out-dir", default="benchmarks/results",
                   help="folder for registration_{2d,3d,3d_net_folds,em}.{json,md,png}")
    g.set_defaults(func=run_registration)
    k = kinds.add_parser("retrieval", help="MAP/MRR (Siamese vs supervised) and NDCG/ACG/weighted mAP (hashing)",
                         description="Trains and evaluates the retrieval models with queries held out by patient; "
                                     "writes tables, JSON and plots (benchmarks/eval_retrieval.py, eval_hashing.py).")
    k.add_argument("--task", default="both", choices=["siamese", "hashing", "both"])
    k.add_argument("--quick", action="store_true", help="1 fold, fewer epochs (and 16/64 bits only): minutes")
    k.add_argument("--folds", type=int, default=3, help="patient folds (default 3: every patient a query once)")
    k.add_argument("--dataset", default="nih", choices=["nih", "vxm"], help="multi-label set for hashing (default nih)")
    k.add_argument("--epochs", type=int, default=15, help="hashing training epochs (default 15)")
    k.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    k.add_argument("--out-dir", default="benchmarks/results", help="folder for tables, JSON and plots")
    k.set_defaults(func=run_retrieval)


SHORT_VARIANTS = {"deep": "multimodal SDAE + deep NN", "unimodal": "uni-modal SDAE + deep NN",
                  "shallow": "multimodal SDAE + shallow NN"}


def run_registration(args):
    import torch

    from ..paths import data_root, has_shared_data
    from .train_registration import LOSS_NAMES

    for name in ("out_dir", "save_weights"):
        folder = getattr(args, name)
        if folder and not Path(folder).is_dir():
            raise InputError("--" + name.replace("_", "-"), f"folder {folder} does not exist")
    # The instance-optimisation protocols compare only label-free losses (kept here: --help imports no torch).
    allowed = LOSS_NAMES if args.data == "slices" else [n for n in LOSS_NAMES if n != "ncc-sup"]
    losses = allowed if args.losses == "all" else [v.strip() for v in args.losses.split(",")]
    unknown = [v for v in losses if v not in allowed]
    if unknown:
        raise InputError("--losses", f"unknown for --data {args.data}: {unknown}; choose from {allowed}")
    if args.fold != "all" and args.data != "brain3d-net":
        raise InputError("--fold", f"applies to --data brain3d-net only, not {args.data}")
    if args.velocity and args.data not in ("slices", "brain3d-net"):
        raise InputError("--velocity", f"applies to trained networks (--data slices or brain3d-net), not {args.data}")
    if args.steps is None:
        args.steps = 1000 if args.data == "brain3d-net" else 100
    for name in ("epochs", "steps"):
        if getattr(args, name) < 1:
            raise InputError("--" + name, f"must be >= 1, got {getattr(args, name)}")
    if args.save_weights and args.data != "slices":
        raise InputError("--save-weights", "only --data slices trains registration networks")
    needed = "microscopy/train" if args.data == "em" else "brain-mr/oasis"
    if not has_shared_data(needed):
        raise InputError(data_root() / needed.split("/")[0], "the data for --data " + args.data + " is needed and "
                                                              "was not found")
    torch.set_num_threads(max(1, args.threads))
    if args.data == "brain3d":
        from ..registration.experiment3d import run_and_report_3d

        run_and_report_3d(losses, args.quick, args.out_dir, args.steps)
    elif args.data == "brain3d-net":
        from ..registration.experiment3d_net import run_and_report_3d_net_folds

        folds = (0, 1, 2) if args.fold == "all" else (int(args.fold),)
        run_and_report_3d_net_folds(losses, args.quick, args.out_dir, args.steps, folds=folds, velocity=args.velocity)
    elif args.data == "em":
        from ..registration.experiment_em import run_and_report_em

        run_and_report_em(losses, args.quick, args.out_dir, args.steps)
    else:
        from ..registration.report import run_and_report

        run_and_report(losses, args.quick, args.epochs, args.out_dir, args.save_weights, args.velocity)


# Positive pair counts the result names leave out: the paper's 2000 (the default) and the improved
# recipe's 10000, which the older results were run with; any other count is named in the file.
UNTAGGED_PAIRS = (2000, 10000)


def training_outline_limit(args) -> float:
    """Outline distance up to which slices train: ``--train-outline-distance``, else ``--max-outline-distance``."""
    return args.max_outline_distance if args.train_outline_distance is None else args.train_outline_distance


def rank_error_stem(args) -> str:
    """File name (no suffix) of a rank-error result: every option that changes the numbers is in it."""
    train_limit = training_outline_limit(args)
    return f"rank_error_{args.region}_{args.mr}_{args.setting}" + recipe_suffix(args) \
        + ("_cascade" if args.cascade else "") + ("_ranksumnmi" if args.rank_sum_nmi else "") \
        + (f"_plus{args.also_train_on}" if args.also_train_on else "") \
        + (f"_plus{args.also_train_on_region}" if args.also_train_on_region else "") \
        + (f"_train{train_limit:g}px" if train_limit > args.max_outline_distance else "") \
        + (f"_pairs{args.pairs}" if args.pairs not in UNTAGGED_PAIRS else "") \
        + (f"_seed{args.seed}" if args.seed else "")


def run_rank_error(args):
    import torch

    from ..ctmr.experiment import (VARIANTS, leave_patient_out, load_region, per_patient_table, results_table,
                                   select_slices)
    from ..ctmr.rank_error import plot_curves
    from ..datasets import CTMRSlices

    out = Path(args.out_dir)
    if not out.is_dir():
        raise InputError("--out-dir", f"folder {out} does not exist")
    if args.variants == "all":
        variants = tuple(VARIANTS)
    else:
        names = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in names if v not in SHORT_VARIANTS]
        if unknown:
            raise InputError("--variants", f"unknown {unknown}; choose from {sorted(SHORT_VARIANTS)}")
        variants = tuple(SHORT_VARIANTS[v] for v in names)
    if args.also_train_on == args.mr:
        raise InputError("--also-train-on", f"{args.mr} is already the tested sequence (--mr)")
    if args.also_train_on_region == args.region:
        raise InputError("--also-train-on-region", f"{args.region} is already the tested region (--region)")
    train_limit = training_outline_limit(args)
    if train_limit < args.max_outline_distance:
        raise InputError("--train-outline-distance", f"must be at least --max-outline-distance "
                                                     f"({args.max_outline_distance}), got {train_limit}")
    if args.threads:
        torch.set_num_threads(args.threads)
    all_slices = load_region(CTMRSlices(), args.region, mr=args.mr)
    slices = select_slices(all_slices, args.max_outline_distance, args.downsample)
    kept = {p: f"{len(slices[p])}/{len(all_slices[p])}" for p in sorted(all_slices)}
    looser = train_limit > args.max_outline_distance  # pairs between the two limits: training only
    extra = {}
    if looser:
        extra = select_slices(all_slices, train_limit, args.downsample, above=args.max_outline_distance)
    if args.also_train_on:
        more = select_slices(load_region(CTMRSlices(), args.region, mr=args.also_train_on), train_limit,
                             args.downsample)
        extra = {p: extra.get(p, []) + more.get(p, []) for p in {**extra, **more}}
    if args.also_train_on_region:
        extra.update(select_slices(load_region(CTMRSlices(), args.also_train_on_region, mr=args.mr), train_limit,
                                   args.downsample))
    result = leave_patient_out(slices, n_test=args.n_test, n_pairs=args.pairs, setting=args.setting,
                               variants=variants, seed=args.seed, cascade=args.cascade,
                               rank_sum_nmi=args.rank_sum_nmi, extra_train=extra, **recipe_kwargs(args))
    stem = rank_error_stem(args)
    train_s = {k: round(float(np.mean(v)), 1) for k, v in result["train_seconds"].items()}
    table = results_table(result["psi"]) + "\n\nMean psi per held-out patient:\n\n" + \
        per_patient_table(result["psi"], result["patient"])
    header = (f"Rank error psi_3 on {args.region} patients ({args.mr}), leave-one-patient-out over "
              f"{len(result['folds'])} folds, {args.pairs}+{args.pairs * args.negatives} training pairs per fold, "
              f"setting {args.setting}, "
              f"{describe_recipe(args)}"
              + (f", training slices also the training patients' CT/{args.also_train_on} pairs"
                 if args.also_train_on else "")
              + (f", training slices also the {args.also_train_on_region} patients' (never tested)"
                 if args.also_train_on_region else "")
              + (f", training slices also those with body outlines {args.max_outline_distance:g}-{train_limit:g} px "
                 "apart (never tested)" if looser else "")
              + (f" ({sum(map(len, extra.values()))} extra training slices)" if extra else "") + ".\n"
              f"Slices kept (body outlines within {args.max_outline_distance} px after registration): {kept}; "
              f"downsampled x{args.downsample}. Mean training seconds per fold: {train_s}.")
    write_text(header + "\n\n" + table + "\n", out / f"{stem}.md")
    write_json({"region": args.region, "mr": args.mr, "setting": args.setting, "folds": result["folds"],
                "seed": args.seed, "pairs_positive": args.pairs, **recipe_kwargs(args),
                "rank_sum_nmi": args.rank_sum_nmi,
                "also_train_on": args.also_train_on, "also_train_on_region": args.also_train_on_region,
                "slices_kept": kept, "downsample": args.downsample, "max_outline_distance": args.max_outline_distance,
                "train_outline_distance": train_limit,
                "extra_train_slices": {p: len(v) for p, v in sorted(extra.items())},
                "psi": {k: v.tolist() for k, v in result["psi"].items()}, "patient": result["patient"].tolist(),
                "train_seconds": result["train_seconds"]},
               out / f"{stem}.json")
    plot_curves(result["psi"], out / f"{stem}.png", title=f"Psi(n), {args.region} ({args.mr}), leave-patient-out")
    print(header)
    print(table)
    print(f"wrote {out / stem}.md, .json and .png")


def run_retrieval(args):
    import torch

    from ..retrieval.benchmark import run_hashing_benchmark, run_siamese_benchmark

    out = Path(args.out_dir)
    if not out.is_dir():
        raise InputError("--out-dir", f"folder {out} does not exist")
    if args.folds < 1 or args.epochs < 1:
        raise InputError("--folds", f"--folds and --epochs must be >= 1, got {args.folds}, {args.epochs}")
    torch.set_num_threads(max(1, args.threads))
    if args.task in ("siamese", "both"):
        run_siamese_benchmark(out, args.quick, args.folds)
    if args.task in ("hashing", "both"):
        run_hashing_benchmark(out, args.quick, args.dataset, args.folds, args.epochs)
