"""``deepsim train registration`` and ``deepsim train features``: the DeepSim registration models."""

from __future__ import annotations

from ..errors import InputError
from .common import add_resume_option, output_path, resumable_training


def add_parsers(kinds):
    """Adds the ``registration`` and ``features`` kinds to the ``deepsim train`` subparsers."""
    r = kinds.add_parser("registration", help="DeepSim or baseline-loss 2D registration network on brain MR slices",
                         description="Trains the registration U-Net on coronal slice pairs vxm <-> OASIS of "
                                     "../shared/data/brain-mr (2x downsampled to 96x80), loss + lambda * diffusion.")
    r.add_argument("--loss", required=True, choices=LOSS_NAMES, help="similarity loss")
    r.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="diffusion regulariser weight (default: the loss's value chosen in benchmarks/results)")
    r.add_argument("--epochs", type=int, default=10, help="passes over the 512 training pairs (default 10)")
    r.add_argument("--features", help="trained feature net (.pt) for deepsim-seg / deepsim-ae "
                                      "(see 'deepsim train features'; shipped: weights/deepsim_features_seg_2d.pt)")
    r.add_argument("--velocity", action="store_true", help="integrate a stationary velocity field (scaling and squaring)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="weights file to write (.pt)")
    add_resume_option(r)
    r.set_defaults(func=run_train_registration)

    f = kinds.add_parser("features", help="DeepSim feature net: segmentation or autoencoder on the vxm brain scan")
    f.add_argument("--mode", required=True, choices=["seg", "ae"])
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--image", help="train on this image file (2D, or the axial slices of a 3D one) instead of the vxm scan")
    f.add_argument("--labels", help="label map of --image (same grid; ids are renumbered 1..K)")
    f.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, help="weights file to write (.pt)")
    add_resume_option(f)
    f.set_defaults(func=run_train_features)


# The names of registration.losses.LOSSES less the CT/MR ones, which the brain slices cannot train (kept here so that --help does not import torch/MONAI; a test checks).
LOSS_NAMES = ["mse", "ncc", "ncc-sup", "nmi", "mind", "deepsim-seg", "deepsim-ae"]
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

    from ..registration.data import load_brain_volumes, slice_pairs, stack_pairs
    from ..registration.feature_net import load_feature_net
    from ..registration.losses import make_loss
    from ..registration.network import save_registration_net
    from ..registration.train import train_registration

    out = output_path(args.out, "--out")
    if args.epochs < 1:
        raise InputError("--epochs", f"must be >= 1, got {args.epochs}")
    lam = DEFAULT_LAMBDA[args.loss] if args.lam is None else args.lam
    if lam < 0:
        raise InputError("--lambda", f"must be >= 0, got {lam}")
    features = None
    if args.loss.startswith("deepsim"):
        if not args.features:
            raise InputError("--features", f"the {args.loss} loss needs a feature net file")
        features = load_feature_net(args.features)
    elif args.features:
        raise InputError("--features", f"only the deepsim losses use a feature net, not {args.loss}")
    loss = make_loss(args.loss, 2, features)
    vols = load_brain_volumes()
    images, labels, _, index = stack_pairs(vols, slice_pairs(vols, "train", (-1, 0, 1)))
    bar, on_epoch = _progress_bar(f"training {args.loss}")
    with resumable_training(args) as checkpoint:
        net, hist = train_registration(images, index, loss, lam, epochs=args.epochs, lr=3e-3, labels=labels,
                                       loss_name=args.loss, seed=args.seed, velocity=args.velocity, on_epoch=on_epoch)
    hist["seconds"] += checkpoint.earlier_seconds  # a resumed run times only its own part
    bar.close()
    from ..registration.experiment import TRAINING_INTENSITY

    meta = {"loss": args.loss, "lambda": lam, "regulariser": "diffusion", "optimizer": "adam", "lr": 3e-3,
            "batch_size": 8, "final_loss": hist["loss"][-1], "train_seconds": hist["seconds"],
            "grid": list(images.shape[2:]), "downsample": 2, "epochs": args.epochs,
            "intensity": TRAINING_INTENSITY,
            "features": str(args.features) if args.features else None, "seed": args.seed,
            "data": f"{len(index)} coronal slice pairs vxm <-> OASIS", "date": datetime.date.today().isoformat()}
    save_registration_net(net, out, meta)
    checkpoint.discard()
    print(f"trained in {hist['seconds']:.0f} s; final loss {hist['loss'][-1]:.4f}")
    print(f"wrote {out}")
    return 0 if torch.isfinite(torch.tensor(hist["loss"][-1])) else 1


def run_train_features(args):
    import datetime

    from ..registration.data import load_brain_volumes
    from ..registration.experiment import feature_training_set
    from ..registration.feature_net import save_feature_net, train_feature_net

    out = output_path(args.out, "--out")
    if args.epochs < 1:
        raise InputError("--epochs", f"must be >= 1, got {args.epochs}")
    if args.labels and not args.image:
        raise InputError("--labels", "needs --image")
    if args.mode == "seg" and args.image and not args.labels:
        raise InputError("--labels", "segmentation features on --image need its label map")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.image:
        images, labels = labelled_image_set(args.image, args.labels)
        data = f"{args.image}" + (f" with labels {args.labels}" if args.labels else "")
    else:
        images, labels = feature_training_set(load_brain_volumes(), 2)
        data = "vxm_test_scan.npz coronal slices z 20..199, 2x downsampled"
    bar, on_epoch = _progress_bar(f"feature net {args.mode}")
    with resumable_training(args) as checkpoint:
        net, hist = train_feature_net(images, labels if args.mode == "seg" else None, args.mode, epochs=args.epochs,
                                      seed=args.seed, on_epoch=on_epoch)
    hist["seconds"] += checkpoint.earlier_seconds  # a resumed run times only its own part
    bar.close()
    save_feature_net(net, out, {"mode": args.mode, "data": data,
                                "optimizer": "adam", "lr": 1e-3, "batch_size": 8, "epochs": args.epochs,
                                "seed": args.seed, "final_loss": hist["loss"][-1], "train_seconds": hist["seconds"],
                                "date": datetime.date.today().isoformat()})
    checkpoint.discard()
    print(f"trained in {hist['seconds']:.0f} s; final loss {hist['loss'][-1]:.4f}")
    print(f"wrote {out}")


def labelled_image_set(image_path, labels_path=None):
    """Feature-net training tensors from one image (and its label map): ``(N, 1, H, W)`` in [0, 1], ``(N, H, W)``.

    A 3D image gives its axial slices that hold labels (or all, without labels). The label ids are
    renumbered 1..K (the net has one output per id), and the slices are zero-padded to a multiple
    of 4 (the feature net halves them twice).
    """
    import numpy as np
    import torch

    from ..image_io import read_image

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
        ids, renumbered = np.unique(np.rint(lab.array).astype(np.int64), return_inverse=True)
        labels = renumbered.reshape(lab.array.shape) + (0 if ids[0] == 0 else 1)
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
