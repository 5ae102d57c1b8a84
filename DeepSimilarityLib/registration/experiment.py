"""The paper's comparison on 2D brain MR slices: every loss trained the same way, lambda tuned on
validation pairs, Dice / folding / time on held-out pairs, and the B-spline MI reference.

Data and splits: :mod:`.data`. Used by ``benchmarks/eval_registration.py`` and
``deepsim evaluate registration``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from ..image_io import Volume
from .bspline import register_bspline, transform_to_displacement
from .compare import LAMBDA_CENTRE, LAMBDA_FACTORS
from .data import load_brain_volumes, slice_pairs, split_slices, stack_pairs, downsample
from .evaluate import dice_scores, folding_fraction
from .feature_net import train_feature_net
from .losses import make_loss
from .network import RegistrationNet, resize_displacement, warp_nearest
from .train import train_registration

# Intensity convention of the training slices, for registering other images (see apply._unit): the 99th
# percentile of a training slice's foreground lies at 0.38-0.50, median 0.43.
TRAINING_INTENSITY = {"percentile": 99, "value": 0.43}


def feature_training_set(vols, factor: int):
    """The vxm scan's coronal slices 20..199 (its mapped seg35 labels): images ``(N,1,h,w)``, labels ``(N,h,w)``."""
    zs = list(range(20, 200))
    images = downsample(np.stack([vols.images[0][z] for z in zs]), factor)
    labels = torch.from_numpy(np.stack([vols.labels[0][z][::factor, ::factor] for z in zs]).astype(np.int64))
    return images, labels


def predict_pairs(net: RegistrationNet, stack, full_size) -> tuple[np.ndarray, float]:
    """Displacements on the full grid ``(P, 2, H, W)`` for every pair of ``stack``; seconds per pair."""
    images, _, _, index = stack
    out, t0 = [], time.perf_counter()
    with torch.no_grad():
        for m, f in index.tolist():
            ddf = net.displacement(images[m:m + 1], images[f:f + 1])
            out.append(resize_displacement(ddf, full_size)[0])
    return torch.stack(out).numpy(), (time.perf_counter() - t0) / len(index)


def score_pairs(ddfs: np.ndarray, stack) -> dict:
    """Dice (mean over labels and per label) and folding of full-grid displacements."""
    _, _, full, index = stack
    moving = torch.from_numpy(full[index[:, 0].numpy()].astype(np.int64))[:, None]
    warped = warp_nearest(moving, torch.from_numpy(ddfs).float())[:, 0].numpy()
    per_pair = [dice_scores(w, full[f]) for w, f in zip(warped, index[:, 1].tolist())]
    return {"dice": [float(np.mean(list(d.values()))) for d in per_pair],
            "dice_per_label": per_pair,
            "folding": [folding_fraction(u) for u in ddfs]}


def bspline_reference(stack, vols, pairs, **kwargs) -> dict:
    """The SimpleITK B-spline MI registration on the full-resolution slices of ``pairs``."""
    ddfs, seconds = [], []
    for ms, mz, fs, fz in tqdm(pairs, desc="b-spline MI", leave=False):
        fixed, moving = Volume(vols.images[fs][fz]), Volume(vols.images[ms][mz])
        t0 = time.perf_counter()
        transform = register_bspline(fixed, moving, **kwargs)
        seconds.append(time.perf_counter() - t0)
        ddfs.append(transform_to_displacement(transform, fixed))
    result = score_pairs(np.stack(ddfs).astype(np.float32), stack)
    result["seconds_per_pair"] = float(np.mean(seconds))
    return result


def run_comparison(losses, epochs: int = 10, factor: int = 2, lambda_factors=LAMBDA_FACTORS, feature_epochs: int = 20,
                   lr: float = 3e-3, seed: int = 0, bspline_pairs: int | None = None, velocity: bool = False,
                   regularise: str = "displacement", log=print) -> dict:
    """Train every loss with every lambda, choose lambda by validation Dice (folding < 1%), score the test pairs.

    ``bspline_pairs``: run the B-spline reference on the first N test pairs only (0: skip; None: all).
    ``velocity``: the nets output a stationary velocity field integrated by scaling and squaring;
    ``regularise``: the field the diffusion term acts on (``"velocity"``: that field; recorded in the setup
    only then).
    """
    torch.manual_seed(seed)
    vols = load_brain_volumes()
    full_size = vols.images[0].shape[1:]
    train = stack_pairs(vols, slice_pairs(vols, "train", (-1, 0, 1)), factor)
    val = stack_pairs(vols, slice_pairs(vols, "val"), factor)
    test_pairs = slice_pairs(vols, "test")
    test = stack_pairs(vols, test_pairs, factor)
    out = {"setup": {"grid": list(full_size), "network_grid": [s // factor for s in full_size],
                     "train_pairs": len(train[3]), "val_pairs": len(val[3]), "test_pairs": len(test[3]),
                     "slices": {k: split_slices(k) for k in ("train", "val", "test")}, "epochs": epochs, "lr": lr,
                     "feature_epochs": feature_epochs, "seed": seed, "lambda_factors": list(lambda_factors),
                     "velocity": velocity, **({"regularise": regularise} if regularise != "displacement" else {})},
           "losses": {}}
    identity = np.zeros((len(test[3]), 2) + tuple(full_size), np.float32)
    out["affine_only"] = score_pairs(identity, test)
    log(f"affine only (no deformation): mean Dice {np.mean(out['affine_only']['dice']):.3f}")
    features = {}
    f_images, f_labels = feature_training_set(vols, factor)
    for mode in sorted({name.split("-")[1] for name in losses if name.startswith("deepsim")}):
        net, hist = train_feature_net(f_images, f_labels if mode == "seg" else None, mode, epochs=feature_epochs,
                                      seed=seed)
        features[mode] = net
        out["setup"][f"features_{mode}"] = {"seconds": hist["seconds"], "final_loss": hist["loss"][-1],
                                            "images": len(f_images)}
        log(f"feature net {mode}: {hist['seconds']:.0f} s, final loss {hist['loss'][-1]:.4f}")
    nets = {}
    for name in losses:
        feature_net = features.get(name.split("-")[1]) if name.startswith("deepsim") else None
        sweep = []
        for k in lambda_factors:
            lam = LAMBDA_CENTRE[name] * k
            loss = make_loss(name, 2, feature_net)
            net, hist = train_registration(train[0], train[3], loss, lam, epochs=epochs, lr=lr, labels=train[1],
                                           loss_name=name, seed=seed, velocity=velocity,
                                           regularise=regularise)
            ddf, _ = predict_pairs(net, val, full_size)
            score = score_pairs(ddf, val)
            sweep.append({"lambda": lam, "val_dice": float(np.mean(score["dice"])),
                          "val_folding": float(np.mean(score["folding"])), "train_seconds": hist["seconds"],
                          "final_loss": hist["loss"][-1]})
            nets[(name, lam)] = net
            log(f"{name:12s} lambda {lam:<7g} val Dice {sweep[-1]['val_dice']:.3f} folding "
                f"{100 * sweep[-1]['val_folding']:.2f}% ({hist['seconds']:.0f} s)")
        ok = [s for s in sweep if s["val_folding"] < 0.01] or sweep
        best = max(ok, key=lambda s: s["val_dice"])
        net = nets[(name, best["lambda"])]
        ddf, seconds = predict_pairs(net, test, full_size)
        result = score_pairs(ddf, test)
        result.update({"lambda": best["lambda"], "sweep": sweep, "seconds_per_pair": seconds})
        out["losses"][name] = result
        log(f"{name:12s} TEST mean Dice {np.mean(result['dice']):.3f} folding {100 * np.mean(result['folding']):.3f}%")
    out["setup"]["factor"] = factor
    out["nets"] = {name: nets[(name, r["lambda"])] for name, r in out["losses"].items()}
    out["features"] = features
    if bspline_pairs != 0:
        n = len(test_pairs) if bspline_pairs is None else bspline_pairs
        sub = stack_pairs(vols, test_pairs[:n], factor)
        out["bspline_mi"] = bspline_reference(sub, vols, test_pairs[:n])
        out["bspline_mi"]["pairs"] = n
        log(f"b-spline MI TEST mean Dice {np.mean(out['bspline_mi']['dice']):.3f} "
            f"({out['bspline_mi']['seconds_per_pair']:.2f} s per pair)")
    return out


def save_trained(result: dict, folder) -> list:
    """Write the chosen ``deepsim-seg`` registration net and its feature net (with metadata) into ``folder``."""
    import datetime
    from pathlib import Path

    from .feature_net import save_feature_net
    from .network import save_registration_net

    folder, written = Path(folder), []
    s, date = result["setup"], datetime.date.today().isoformat()
    if "seg" in result.get("features", {}):
        meta = {"mode": "seg", "data": f"vxm_test_scan.npz coronal slices z 20..199 ({s['features_seg']['images']}), "
                                      "seg35 labels, 2x downsampled", "epochs": s["feature_epochs"], "date": date}
        written.append(save_feature_net(result["features"]["seg"], folder / "deepsim_features_seg_2d.pt", meta))
    if "deepsim-seg" in result["nets"]:
        r = result["losses"]["deepsim-seg"]
        meta = {"loss": "deepsim-seg", "lambda": r["lambda"], "grid": s["network_grid"], "downsample": s["factor"],
                "intensity": TRAINING_INTENSITY,
                "features": "deepsim_features_seg_2d.pt", "epochs": s["epochs"], "lr": s["lr"], "date": date,
                "data": f"{s['train_pairs']} coronal slice pairs vxm <-> OASIS 0001/0002, slices z % 10 in "
                        f"(1, 2, 6, 7)",
                "test_mean_dice": float(np.mean(r["dice"])), "test_folding": float(np.mean(r["folding"]))}
        written.append(save_registration_net(result["nets"]["deepsim-seg"], folder / "registration_deepsim_seg_2d.pt",
                                             meta))
    return written
