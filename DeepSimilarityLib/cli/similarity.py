"""``deepsim similarity``: CT/MR patch similarity heat maps (and training, with the learned metric)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .common import add_resume_option, output_path, parse_point, resumable_training, write_json


def register_parser(sub):
    p = sub.add_parser("similarity", help="CT/MR patch similarity: heat maps over the MR")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    h = actions.add_parser("heatmap", help="score one CT patch against every MR patch around the same position")
    h.add_argument("--ct", required=True, help="CT image file (2D or 3D)")
    h.add_argument("--mr", required=True, help="MR image file, same dimension; resampled onto the CT grid if needed")
    where = h.add_mutually_exclusive_group(required=True)
    where.add_argument("--point", type=parse_point, help="patch centre in mm, 'x,y[,z]' (LPS unless --ras)")
    where.add_argument("--index", type=parse_point, help="patch centre as CT voxel index 'i,j[,k]'")
    h.add_argument("--ras", action="store_true", help="--point is in RAS (as Slicer shows it), not LPS")
    h.add_argument("--metric", default="nmi",
                   help="learned, nmi, lcc or mind, or names joined by '+' for the rank sum of their maps "
                        "(learned+nmi: robust to an MR contrast the network never saw) (default nmi)")
    h.add_argument("--weights", help="network file for the learned metric (default: the shipped weights)")
    h.add_argument("--cascade", help="second network (trained with --hard-negatives) cascaded with the first")
    h.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "int8"],
                   help="arithmetic of the learned metric: auto (default) times the others once and keeps the "
                        "fastest, so scores can differ in the third decimal between runs or machines; float32 "
                        "gives the same map every time")
    h.add_argument("--patch-size", type=int, default=17, help="odd patch edge in voxels (default 17)")
    h.add_argument("--neighbourhood", type=int, default=81, help="odd in-plane edge of the searched area (default 81)")
    h.add_argument("--depth", type=int, default=9, help="odd number of slices searched for 3D images (default 9)")
    h.add_argument("--out", required=True, help="heat map image to write (.nii.gz, .nrrd, .mha), on the MR's geometry")
    h.add_argument("--out-json", help="also write the best match and score range as JSON")
    h.set_defaults(func=run_heatmap)

    t = actions.add_parser("train", help="train the CT/MR similarity network (SDAE pre-training + fine-tuning)")
    t.add_argument("--out", required=True, help="network file to write (.pt); replaced atomically")
    source = t.add_mutually_exclusive_group()
    source.add_argument("--region", default="head", choices=["head", "body"],
                        help="train on every patient of this region of ../shared/data/ct-mr-slices (default head)")
    source.add_argument("--patients", help="comma-separated patients, e.g. Patient_01,Patient_02")
    source.add_argument("--phantom", action="store_true", help="train on phantom slices (no real data needed)")
    source.add_argument("--ct-image", help="train on this CT image file (2D or 3D) and --mr-image, registered to it")
    t.add_argument("--mr-image", help="MR image file registered to --ct-image (resampled onto its grid if needed)")
    t.add_argument("--mr", default="T1", choices=["T1", "T2", "T1,T2"],
                   help="MR sequence; T1,T2 trains on both sequences' pairs, for MR contrasts beyond T1 (default T1)")
    t.add_argument("--dim", type=int, default=2, choices=[2, 3],
                   help="2: 17x17 patches; 3: 17x17x17 patches from the 3D phantom, first layer 2 x 512 (default 2)")
    t.add_argument("--pairs", type=int, default=2000, help="positive pairs; as many negatives are added (default 2000)")
    t.add_argument("--patch-size", type=int, default=17, help="odd patch edge (default 17)")
    add_recipe_options(t)
    t.add_argument("--setting", default="modern", choices=["paper", "modern"],
                   help="paper: SGD lr 0.5, batch 5, 10+5 epochs (the reproduction); modern: Adam, faster and "
                        "better in benchmarks/results (default modern)")
    t.add_argument("--variant", default="deep", choices=["deep", "shallow"],
                   help="deep 578-578-300-100-2 or shallow (no L3)")
    t.add_argument("--pretraining", default="multimodal", choices=["multimodal", "unimodal", "none"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--hard-negatives", action="store_true",
                   help="draw negatives from dark MR regions: the second classifier of the cascade")
    t.add_argument("--downsample", type=int, default=2,
                   help="block-average the 512 px slices by this factor (default 2: ~0.9 mm)")
    t.add_argument("--max-outline-distance", type=float, default=3.0,
                   help="drop slice pairs whose body outlines lie farther apart after registration (512-px voxels, "
                        "default 3)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    add_resume_option(t)
    t.set_defaults(func=run_train)


def add_recipe_options(p):
    """Training-pair and input options beyond the paper's recipe (defaults: the paper's)."""
    p.add_argument("--negatives", type=int, default=1,
                   help="negatives per positive, drawn in the 81x81 neighbourhood (default 1, the paper's)")
    p.add_argument("--jitter", type=int, default=0,
                   help="positives' MR patch up to this many voxels off (default 0; 1 = the evaluation's 3x3 "
                        "tolerance)")
    p.add_argument("--patch-norm", default="image", choices=["image", "patch"],
                   help="image: patches of the [0,1] images (the paper's); patch: each patch rescaled to [0,1] "
                        "by its own min/max (robust to another scanner's grey values)")
    p.add_argument("--mr-augment", type=float, default=0.0,
                   help="fraction of training MR patches remapped by a random increasing grey-value curve "
                        "(default 0; teaches invariance to how bright one tissue is next to another)")
    p.add_argument("--mirror-augment", action="store_true",
                   help="mirror each training pair (CT and MR patch alike) at random: flips of every axis and "
                        "an in-plane transpose, so every edge is seen in every orientation")


def pair_kwargs(args) -> dict:
    """The recipe options that shape the training pairs (:func:`~DeepSimilarityLib.ctmr.patch_pairs.make_pairs`)."""
    return {"negatives_per_positive": args.negatives, "positive_jitter": args.jitter,
            "mr_intensity_augment": args.mr_augment, "mirror": args.mirror_augment}


def recipe_kwargs(args) -> dict:
    """Every recipe option: the pair options and the input normalisation of the network."""
    return {**pair_kwargs(args), "patch_norm": args.patch_norm}


def recipe_suffix(args) -> str:
    """File-name suffix naming a non-default recipe (empty for the paper's)."""
    parts = ([f"neg{args.negatives}"] if args.negatives != 1 else []) + ([f"jit{args.jitter}"] if args.jitter else []) \
        + (["patchnorm"] if args.patch_norm == "patch" else []) \
        + ([f"mraug{round(100 * args.mr_augment)}"] if args.mr_augment else []) \
        + (["mirror"] if args.mirror_augment else [])
    return "".join("_" + p for p in parts)


def describe_recipe(args) -> str:
    return (f"{args.negatives} negative(s) per positive, positive jitter {args.jitter}, "
            f"{args.patch_norm}-normalised patches" +
            (f", {args.mr_augment:.0%} of MR patches through a random increasing grey-value curve"
             if args.mr_augment else "")
            + (", pairs mirrored at random" if args.mirror_augment else ""))


def run_heatmap(args):
    from ..heatmap import similarity_heatmap
    from ..image_io import read_image, write_image

    out = output_path(args.out, "--out")
    out_json = output_path(args.out_json, "--out-json") if args.out_json else None
    ct = read_image(args.ct)
    mr = read_image(args.mr)
    if ct.ndim != mr.ndim:
        raise InputError(args.mr, f"is {mr.ndim}D but the CT {args.ct} is {ct.ndim}D")
    point = index = None
    if args.point is not None:
        point = np.array(args.point, dtype=float)
        if args.ras:
            point[:2] *= -1  # RAS -> LPS flips the first two axes
    else:
        index = args.index
    for name in ("patch_size", "neighbourhood", "depth"):
        value = getattr(args, name)
        if value < 1 or value % 2 == 0:
            raise InputError("--" + name.replace("_", "-"), f"must be a positive odd number, got {value}")
    from ..patch_metrics import get_metric

    for option in ("weights", "precision"):
        if getattr(args, option) not in (None, "auto") and "learned" not in args.metric.split("+"):
            raise InputError("--" + option, f"is for the learned metric, not {args.metric!r}")
    metric = get_metric(args.metric, weights=args.weights, precision=args.precision)
    if args.cascade:
        from ..ctmr.cascade import CascadePatchMetric

        if args.metric != "learned":
            raise InputError("--cascade", "needs --metric learned")
        metric = CascadePatchMetric(metric, get_metric("learned", weights=args.cascade, precision=args.precision))
    result = similarity_heatmap(ct, mr, point=point, index=index, metric=metric, patch_size=args.patch_size,
                                neighbourhood=args.neighbourhood, depth=args.depth)
    write_image(result.scores, out)
    centre_point = ct.index_to_physical(result.centre_index[::-1])
    shift = float(np.linalg.norm(result.best_point - centre_point))
    print(f"{result.metric} heat map {result.scores.size}: best match at LPS "
          f"{np.round(result.best_point, 2).tolist()} mm, {shift:.2f} mm from the CT point")
    print(f"wrote {out}")
    if out_json:
        scores = result.scores.array
        write_json({"metric": result.metric, "centre_lps": centre_point.tolist(),
                    "best_lps": result.best_point.tolist(), "best_index_xyz": list(result.best_index[::-1]),
                    "distance_mm": shift,
                    "score_min": float(scores.min()), "score_max": float(scores.max())}, out_json)
        print(f"wrote {out_json}")


def run_train(args):
    import datetime

    import torch
    from ..progress import progress_bar

    from ..ctmr import save_net, train_similarity_net
    from ..ctmr.experiment import training_slices
    from ..ctmr.patch_pairs import pairs_from_slices

    out = output_path(args.out, "--out")
    if args.pairs < 10:
        raise InputError("--pairs", f"needs at least 10 pairs, got {args.pairs}")
    if args.patch_size < 3 or args.patch_size % 2 == 0:
        raise InputError("--patch-size", f"must be an odd number >= 3, got {args.patch_size}")
    if bool(args.ct_image) != bool(args.mr_image):
        raise InputError("--ct-image", "give --ct-image and --mr-image together")
    if args.threads:
        torch.set_num_threads(args.threads)
    slices, source = training_slices(region=args.region, patients=args.patients, phantom=args.phantom, mr=args.mr,
                                     max_outline_distance=args.max_outline_distance, downsample=args.downsample,
                                     dim=args.dim, images=(args.ct_image, args.mr_image) if args.ct_image else None)
    if args.hard_negatives:
        from ..ctmr.cascade import hard_negative_pairs

        pairs = hard_negative_pairs(slices, n_positive=args.pairs, seed=args.seed, patch_size=args.patch_size)
    else:
        pairs = pairs_from_slices(slices, n_positive=args.pairs, seed=args.seed, patch_size=args.patch_size,
                                  **pair_kwargs(args))
    bar = progress_bar(total=100, desc="training", unit="%")

    def progress(stage, fraction):
        bar.set_postfix_str(stage)
        bar.update(round(fraction * 100) - bar.n)

    # 3D patches hold 4913 voxels per modality: a 9826-wide first layer would weigh 386 MB, so each
    # modality's code shrinks to 512 units (layer sizes stay the paper's from L2 on).
    layers = [1024, 300, 100] if args.dim == 3 else None
    with resumable_training(args) as checkpoint:
        net, history = train_similarity_net(pairs.ct, pairs.mr, pairs.labels, args.setting, variant=args.variant,
                                            pretraining=args.pretraining, seed=args.seed, progress=progress,
                                            layers=layers, patch_norm=args.patch_norm)
    history["seconds"] += checkpoint.earlier_seconds  # a resumed run times only its own part
    bar.close()
    metadata = dict(net.metadata, kind="ctmr-similarity", data=source, mr=args.mr, patch_size=args.patch_size,
                    downsample=1 if (args.phantom or args.ct_image or args.dim == 3) else args.downsample, dim=args.dim,
                    hard_negatives=args.hard_negatives, **recipe_kwargs(args),
                    pairs_positive=args.pairs, train_accuracy=history["train_accuracy"],
                    train_seconds=history["seconds"], date=datetime.date.today().isoformat())
    save_net(net, out, metadata)
    checkpoint.discard()
    print(f"trained in {history['seconds']:.1f} s on {len(pairs)} pairs ({source}); "
          f"training accuracy {history['train_accuracy']:.3f}")
    print(f"wrote {out}")
