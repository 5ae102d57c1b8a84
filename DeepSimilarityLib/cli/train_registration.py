"""``deepsim train registration`` and ``deepsim train features``: the DeepSim registration models."""

from __future__ import annotations

from ..errors import InputError
from .common import output_path


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
    r.set_defaults(func=run_train_registration)

    f = kinds.add_parser("features", help="DeepSim feature net: segmentation or autoencoder on the vxm brain scan")
    f.add_argument("--mode", required=True, choices=["seg", "ae"])
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, help="weights file to write (.pt)")
    f.set_defaults(func=run_train_features)


# The names of registration.losses.LOSSES less the CT/MR ones, which the brain slices cannot train (kept here so that --help does not import torch/MONAI; a test checks).
LOSS_NAMES = ["mse", "ncc", "ncc-sup", "nmi", "mind", "deepsim-seg", "deepsim-ae"]
# lambda chosen on the validation slices in benchmarks/results/registration_2d.md
DEFAULT_LAMBDA = {"mse": 0.0025, "ncc": 0.25, "ncc-sup": 1.0, "nmi": 1.2, "mind": 4.0, "deepsim-seg": 0.075,
                  "deepsim-ae": 0.075}


def _progress_bar(total_desc):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=total_desc, unit="%")

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
    net, hist = train_registration(images, index, loss, lam, epochs=args.epochs, lr=3e-3, labels=labels,
                                   loss_name=args.loss, seed=args.seed, velocity=args.velocity, on_epoch=on_epoch)
    bar.close()
    from ..registration.experiment import TRAINING_INTENSITY

    meta = {"loss": args.loss, "lambda": lam, "grid": list(images.shape[2:]), "downsample": 2, "epochs": args.epochs,
            "intensity": TRAINING_INTENSITY,
            "features": str(args.features) if args.features else None, "seed": args.seed,
            "data": f"{len(index)} coronal slice pairs vxm <-> OASIS", "date": datetime.date.today().isoformat()}
    save_registration_net(net, out, meta)
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
    images, labels = feature_training_set(load_brain_volumes(), 2)
    bar, on_epoch = _progress_bar(f"feature net {args.mode}")
    net, hist = train_feature_net(images, labels if args.mode == "seg" else None, args.mode, epochs=args.epochs,
                                  seed=args.seed, on_epoch=on_epoch)
    bar.close()
    save_feature_net(net, out, {"mode": args.mode, "data": "vxm_test_scan.npz coronal slices z 20..199, 2x downsampled",
                                "epochs": args.epochs, "date": datetime.date.today().isoformat()})
    print(f"trained in {hist['seconds']:.0f} s; final loss {hist['loss'][-1]:.4f}")
    print(f"wrote {out}")
