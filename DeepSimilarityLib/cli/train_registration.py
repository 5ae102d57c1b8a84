"""``deepsim train registration`` and ``deepsim train features``: the DeepSim registration models."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import add_resume_option, output_path, resumable_training

# Default --epochs of 'train features': slices (2D) or whole-volume steps (3D, the 3D benchmark's recipe).
FEATURE_EPOCHS = {2: 20, 3: 120}


def add_parsers(kinds):
    """Adds the ``registration`` and ``features`` kinds to the ``deepsim train`` subparsers."""
    r = kinds.add_parser("registration",
                         help="DeepSim or baseline-loss registration network on brain MR slices or your images",
                         description="Trains the registration U-Net on coronal slice pairs vxm <-> OASIS of "
                                     "../shared/data/brain-mr (2x downsampled to 96x80), or on all pairs of "
                                     "--images, loss + lambda * diffusion.")
    r.add_argument("--loss", required=True, choices=LOSS_NAMES, help="similarity loss")
    r.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="diffusion regulariser weight (default: the loss's value chosen in benchmarks/results)")
    r.add_argument("--epochs", type=int, default=10,
                   help="passes over the training pairs (default 10; 512 brain slice pairs, or N*(N-1) for --images)")
    r.add_argument("--features", nargs="+", metavar="FEATURES",
                   help="trained feature net (.pt) for deepsim-seg / deepsim-ae (see 'deepsim train features'; "
                        "shipped: weights/deepsim_features_seg_2d.pt); several (e.g. trained with different --seed): "
                        "the loss is the mean of their DeepSim losses")
    r.add_argument("--images", nargs="+", metavar="IMAGE",
                   help="train on your own images instead (2 or more, 2D or 3D, one modality): all directed pairs, "
                        "each image pre-aligned to the first, on a grid --downsample times coarser than the first's, "
                        "with a small random affine for both images of a pair; label-free losses only")
    r.add_argument("--downsample", type=int, default=None,
                   help="with --images: network grid = first image's size / this, rounded up to a multiple of 8 "
                        "(default 2 in 2D, 4 in 3D)")
    r.add_argument("--pre-align", choices=["affine", "rigid", "none"], default="affine",
                   help="with --images: how the other images are first aligned to the first (default affine)")
    r.add_argument("--velocity", action="store_true",
                   help="integrate a stationary velocity field (scaling and squaring)")
    r.add_argument("--regularise", choices=REGULARISED, default="displacement",
                   help="the field the diffusion regulariser acts on (default displacement); 'velocity', as "
                        "VoxelMorph does, needs --velocity")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="weights file to write (.pt)")
    add_resume_option(r)
    r.set_defaults(func=run_train_registration)

    f = kinds.add_parser("features", help="DeepSim feature net: segmentation or autoencoder on the vxm brain scan")
    f.add_argument("--mode", required=True, choices=["seg", "ae"])
    f.add_argument("--dims", type=int, choices=[2, 3], default=2,
                   help="2: a net for 2D images, trained on slices (default); 3: a net for volumes, trained on "
                        "the whole volume, for 'train registration --images' with 3D images")
    f.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the training set (default {FEATURE_EPOCHS[2]} in 2D; in 3D one pass is one "
                        f"step on the volume, default {FEATURE_EPOCHS[3]})")
    f.add_argument("--image", help="train on this image file instead of the vxm scan (--dims 2: a 2D image or the "
                                   "axial slices of a 3D one; --dims 3: a 3D image)")
    f.add_argument("--labels", help="label map of --image (--dims 2: same grid; --dims 3: any grid covering it; "
                                    "ids are renumbered 1..K)")
    f.add_argument("--downsample", type=int, default=None,
                   help="--dims 3: the grid is the image's size / this, rounded up as 'train registration "
                        "--images --downsample' rounds it (default 4, as there)")
    f.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, help="weights file to write (.pt)")
    add_resume_option(f)
    f.set_defaults(func=run_train_features)


# The names of registration.losses.LOSSES less the CT/MR ones, which the brain slices cannot train (kept
# here so that --help does not import torch/MONAI; a test checks).
LOSS_NAMES = ["mse", "ncc", "ncc-sup", "nmi", "mind", "deepsim-seg", "deepsim-ae"]
# registration.train.REGULARISED, kept here for the same reason (checked by the same test).
REGULARISED = ("displacement", "velocity")
# lambda chosen on the validation slices in benchmarks/results/registration_2d.md
DEFAULT_LAMBDA = {"mse": 0.0025, "ncc": 0.25, "ncc-sup": 1.0, "nmi": 1.2, "mind": 4.0, "deepsim-seg": 0.075,
                  "deepsim-ae": 0.075}


def _progress_bar(total_desc):
    from ..progress import progress_bar

    bar = progress_bar(total=100, desc=total_desc, unit="%")

    def on_epoch(fraction):
        bar.update(round(fraction * 100) - bar.n)

    return bar, on_epoch


def run_train_registration(args):
    import datetime

    import torch

    from ..registration.augmentation import augment_pairs
    from ..registration.data import load_brain_volumes, slice_pairs, stack_pairs
    from ..registration.losses import make_loss
    from ..registration.network import save_registration_net
    from ..registration.train import check_regularise, train_registration

    out = output_path(args.out, "--out")
    if args.epochs < 1:
        raise InputError("--epochs", f"must be >= 1, got {args.epochs}")
    lam = DEFAULT_LAMBDA[args.loss] if args.lam is None else args.lam
    if lam < 0:
        raise InputError("--lambda", f"must be >= 0, got {lam}")
    check_regularise(args.regularise, args.velocity, "--regularise")
    features = None
    if args.loss.startswith("deepsim"):
        if not args.features:
            raise InputError("--features", f"the {args.loss} loss needs a feature net file")
        features = _feature_nets(args.features)
    elif args.features:
        raise InputError("--features", f"only the deepsim losses use a feature net, not {args.loss}")
    from ..registration.experiment import TRAINING_INTENSITY

    augment, batch = None, 8
    if args.images:
        images, index, labels, factor, data, dims = _user_images(args)
        if dims == 3:
            batch = 1  # a 3D pair fills the memory a batch of slices would
        generator = torch.Generator().manual_seed(args.seed + 1)
        # No flip: the left-right axis of the user's images is unknown.
        augment = (lambda m, f: augment_pairs(m, f, generator, flip_axis=None))  # noqa: E731
    else:
        if args.downsample is not None or args.pre_align != "affine":
            raise InputError("--downsample" if args.downsample is not None else "--pre-align", "needs --images")
        vols = load_brain_volumes()
        images, labels, _, index = stack_pairs(vols, slice_pairs(vols, "train", (-1, 0, 1)))
        factor, data, dims = 2, f"{len(index)} coronal slice pairs vxm <-> OASIS", 2
    if features is not None and features.dims != dims:
        raise InputError("--features", f"is a {features.dims}D feature net but the images are {dims}D")
    learned_at = (features.metadata or {}).get("downsample") if features is not None else None
    if learned_at and learned_at != factor:
        # Not an error: the net is fully convolutional. But its features learned structures of another size.
        print(f"note: the feature net learned on a {learned_at}x coarser grid, the registration runs on {factor}x")
    loss = make_loss(args.loss, dims, features)
    bar, on_epoch = _progress_bar(f"training {args.loss}")
    with resumable_training(args) as checkpoint:
        net, hist = train_registration(images, index, loss, lam, epochs=args.epochs, batch_size=batch, lr=3e-3,
                                       labels=labels, loss_name=args.loss, seed=args.seed, velocity=args.velocity,
                                       augment=augment, on_epoch=on_epoch, regularise=args.regularise)
    hist["seconds"] += checkpoint.earlier_seconds  # a resumed run times only its own part
    bar.close()
    regulariser = "diffusion" + (" of the velocity field" if args.regularise == "velocity" else "")
    meta = {"loss": args.loss, "lambda": lam, "regulariser": regulariser, "optimizer": "adam", "lr": 3e-3,
            "batch_size": batch, "final_loss": hist["loss"][-1], "train_seconds": hist["seconds"],
            "grid": list(images.shape[2:]), "downsample": factor, "epochs": args.epochs,
            "intensity": TRAINING_INTENSITY,
            "features": _feature_paths(args.features), "seed": args.seed,
            "data": data, "date": datetime.date.today().isoformat()}
    save_registration_net(net, out, meta)
    checkpoint.discard()
    print(f"trained in {hist['seconds']:.0f} s; final loss {hist['loss'][-1]:.4f}")
    print(f"wrote {out}")
    return 0 if torch.isfinite(torch.tensor(hist["loss"][-1])) else 1


def _feature_nets(paths):
    """One feature net, or a :class:`~..registration.feature_net.FeatureEnsemble` of several; ``metadata``
    is the first file's (each was checked to load as a feature net)."""
    from ..registration.feature_net import FeatureEnsemble, load_feature_net

    nets = [load_feature_net(p) for p in paths]
    if len(nets) == 1:
        return nets[0]
    try:
        ensemble = FeatureEnsemble(nets)
    except InputError as e:
        raise InputError("--features", e.problem) from None
    ensemble.metadata = nets[0].metadata
    return ensemble


def _feature_paths(paths):
    """The ``features`` metadata entry: the one path as before, a list for several, None for none."""
    if not paths:
        return None
    return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]


def _user_images(args):
    """``deepsim train registration --images``: (images, pairs, labels None, downsample, data note, dims)."""
    from ..image_io import read_image
    from ..registration.network import size_multiple
    from ..registration.user_pairs import user_training_set

    if args.loss == "ncc-sup":
        raise InputError("--loss", "ncc-sup needs label maps; --images trains label-free losses only")
    volumes = [read_image(path) for path in args.images]
    dims = volumes[0].ndim
    factor = args.downsample if args.downsample is not None else (2 if dims == 2 else 4)
    images, pairs, _ = user_training_set(volumes, list(args.images), factor,
                                         None if args.pre_align == "none" else args.pre_align, size_multiple(),
                                         log=print)
    names = ", ".join(Path(p).name for p in args.images)
    data = f"{len(pairs)} directed pairs of {len(volumes)} user images ({names}), pre-align {args.pre_align}"
    return images, pairs, None, factor, data, dims


def run_train_features(args):
    import datetime

    from ..registration.feature_net import save_feature_net, train_feature_net

    out = output_path(args.out, "--out")
    epochs = args.epochs if args.epochs is not None else FEATURE_EPOCHS[args.dims]
    if epochs < 1:
        raise InputError("--epochs", f"must be >= 1, got {epochs}")
    if args.labels and not args.image:
        raise InputError("--labels", "needs --image")
    if args.mode == "seg" and args.image and not args.labels:
        raise InputError("--labels", "segmentation features on --image need its label map")
    if args.downsample is not None and args.dims != 3:
        raise InputError("--downsample", "needs --dims 3 (2D feature nets learn from the slices as they are)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.dims == 3:
        images, labels, data, grid = _feature_volume(args)
        # The 3D benchmark's recipe (experiment3d.feature_nets): one volume, one step per epoch.
        lr, batch = 3e-3, 1
    else:
        images, labels, data, grid = *_feature_slices(args), None
        lr, batch = 1e-3, 8
    bar, on_epoch = _progress_bar(f"feature net {args.mode} {args.dims}D")
    with resumable_training(args) as checkpoint:
        net, hist = train_feature_net(images, labels if args.mode == "seg" else None, args.mode, epochs=epochs,
                                      batch_size=batch, lr=lr, seed=args.seed, on_epoch=on_epoch)
    hist["seconds"] += checkpoint.earlier_seconds  # a resumed run times only its own part
    bar.close()
    meta = {"mode": args.mode, "dims": args.dims, "data": data, "optimizer": "adam", "lr": lr, "batch_size": batch,
            "epochs": epochs, "seed": args.seed, "final_loss": hist["loss"][-1], "train_seconds": hist["seconds"],
            "date": datetime.date.today().isoformat()}
    if grid:
        meta.update(grid)
    save_feature_net(net, out, meta)
    checkpoint.discard()
    print(f"trained in {hist['seconds']:.0f} s; final loss {hist['loss'][-1]:.4f}")
    print(f"wrote {out}")


def _feature_slices(args):
    """``train features --dims 2``: (images (N, 1, H, W), labels (N, H, W), data note)."""
    from ..registration.data import load_brain_volumes
    from ..registration.experiment import feature_training_set

    if args.image:
        images, labels = labelled_image_set(args.image, args.labels)
        return images, labels, f"{args.image}" + (f" with labels {args.labels}" if args.labels else "")
    images, labels = feature_training_set(load_brain_volumes(), 2)
    return images, labels, "vxm_test_scan.npz coronal slices z 20..199, 2x downsampled"


def _feature_volume(args):
    """``train features --dims 3``: (image (1, 1, ...), labels (1, ...) or None, data note, grid metadata)."""
    from ..image_io import read_image

    factor = 4 if args.downsample is None else args.downsample
    if factor < 1:
        raise InputError("--downsample", f"must be >= 1, got {factor}")
    if args.image:
        from ..registration.experiment import TRAINING_INTENSITY
        from ..registration.user_pairs import feature_training_volume

        image = read_image(args.image)
        if image.ndim != 3:
            raise InputError(args.image, f"is {image.ndim}D; --dims 3 trains on a 3D image")
        labels = read_image(args.labels, dtype=None) if args.labels else None
        x, y = feature_training_volume(image, labels, factor, args.image, args.labels or "--labels")
        data = f"{args.image}" + (f" with labels {args.labels}" if args.labels else "")
        return x, y, data, {"grid": list(x.shape[2:]), "downsample": factor, "intensity": TRAINING_INTENSITY}
    from ..registration.data import downsample, load_brain_volumes
    from ..registration.experiment3d import corner_labels

    vols = load_brain_volumes()
    if any(n % (4 * factor) for n in vols.images[0].shape):
        raise InputError("--downsample", f"the vxm scan {vols.images[0].shape} needs a factor whose grid the "
                                         f"feature net can halve twice (e.g. 2 or 4), not {factor}")
    # The vxm subject exactly as the 3D benchmark's feature nets (experiment3d.feature_nets) learn it.
    x, y = downsample(vols.images[:1], factor), corner_labels(vols.labels[0], factor)
    data = f"vxm_test_scan.npz volume with seg35 labels, {factor}x block-averaged"
    return x, y, data, {"grid": list(x.shape[2:]), "downsample": factor}


def labelled_image_set(image_path, labels_path=None):
    """Feature-net training tensors from one image (and its label map): ``(N, 1, H, W)`` in [0, 1], ``(N, H, W)``.

    A 3D image gives its axial slices that hold labels (or all, without labels). The label ids are
    renumbered 1..K (the net has one output per id), and the slices are zero-padded to a multiple
    of 4 (the feature net halves them twice).
    """
    import numpy as np
    import torch

    from ..image_io import read_image
    from ..registration.user_pairs import renumbered_labels

    image = read_image(image_path)
    array = image.array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        raise InputError(image_path, "image is constant; nothing to learn")
    array = (array - lo) / (hi - lo)
    if labels_path:
        lab = read_image(labels_path, dtype=None)
        if lab.array.shape != image.array.shape:
            raise InputError(labels_path, f"shape {lab.array.shape} differs from the image's {image.array.shape}")
        labels = renumbered_labels(lab.array)
    else:
        labels = np.zeros(array.shape, np.int64)
    if image.ndim == 2:
        array, labels = array[None], labels[None]
    elif labels_path:
        keep = labels.reshape(len(labels), -1).max(axis=1) > 0
        array, labels = array[keep], labels[keep]
    pad = [(0, 0)] + [(0, (-n) % 4) for n in array.shape[1:]]
    array, labels = np.pad(array, pad), np.pad(labels, pad)
    return torch.from_numpy(np.ascontiguousarray(array))[:, None], torch.from_numpy(np.ascontiguousarray(labels))
