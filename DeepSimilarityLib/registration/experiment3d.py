"""The paper's comparison in 3D on the three brain volumes, by per-pair instance optimisation.

Protocol (the CPU budget rules out training a 3D registration network on hundreds of volumes):

* the six directed pairs between vxm, OASIS 0001 and OASIS 0002 (one affinely normalised grid,
  so "affine only" is the identity);
* images block-averaged by ``factor`` (4: 56x48x40 voxels of 4 mm); for every pair and loss a
  displacement on that grid is optimised directly (:func:`~.instance.optimise_displacement`);
* DeepSim feature nets (3D, seg and ae) are trained per pair on the THIRD subject alone (its image
  and, for seg, its seg35 labels), so no image or label of an evaluated pair enters them;
* lambda per loss: ``LAMBDA_CENTRE`` x factors, run on the calibration pair; the smallest lambda
  whose folding there is below 1% is used for all six pairs. The rule reads no labels, so Dice
  stays a held-out measure (the calibration pair is scored like the others);
* Dice over the seg35 labels on the full 224x192x160 grid (displacement upsampled, labels warped by
  nearest neighbour); folding (Jacobian determinant <= 0) on the optimisation grid;
* SimpleITK B-spline Mattes MI on the same downsampled images as the classical reference (its 3D
  setting, :data:`BSPLINE_3D`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .compare import (FOLDING_LIMIT, INSTANCE_LOSSES, LAMBDA_CENTRE, LAMBDA_FACTORS, bspline_runs, collect,
                      compare_losses)
from .data import downsample, load_brain_volumes, third_subject, volume_pairs
from .evaluate import dice_scores, folding_fraction
from .feature_net import train_feature_net
from .instance import optimise_displacement
from .losses import make_loss
from .network import resize_displacement, warp_nearest


# The classical reference's settings compared by run_bspline_settings_3d: the ones registration_3d.md was run with
# (bspline_runs' defaults, taken from 2D), and a standard 3D multi-resolution recipe fixed before any 3D run
# of it: three image levels, each with a mesh twice as fine as the last (4, 8, 16 cells per axis). It scored
# 0.586 against 0.507 there (registration_3d_bspline.md), so run_comparison_3d now uses it.
BSPLINE_3D = "mesh 4-8-16, 3 levels, line-search gradient descent 100"
BSPLINE_SETTINGS = {"mesh 8, 2 levels, L-BFGS-B 50 (as in registration_3d.md)": {},
                    BSPLINE_3D: dict(mesh=4, shrink=(4, 2, 1), mesh_refine=(1, 2, 4), iterations=100)}


def downsampled(vols, factor: int) -> list[torch.Tensor]:
    """Every volume as ``(1, 1, D/f, H/f, W/f)`` by block averaging."""
    return [downsample(v[None], factor) for v in vols.images]


def score(ddf: torch.Tensor, moving_labels: np.ndarray, fixed_labels: np.ndarray) -> dict:
    """Dice of the nearest-warped moving labels on the full grid and folding on the ddf's own grid.

    ``ddf`` ``(1, 3, d, h, w)`` in voxels of its grid; label maps ``(D, H, W)`` on the full grid.
    """
    full = resize_displacement(ddf, fixed_labels.shape)
    warped = warp_nearest(torch.from_numpy(moving_labels.astype(np.int64))[None, None], full)[0, 0].numpy()
    per_label = dice_scores(warped, fixed_labels)
    return {"dice": float(np.mean(list(per_label.values()))), "dice_per_label": per_label,
            "folding": folding_fraction(ddf[0].numpy())}


def corner_labels(labels: np.ndarray, factor: int) -> torch.Tensor:
    """``(1, D/f, H/f, W/f)`` int64: the seg35 labels ``(D, H, W)`` at every ``factor``-th voxel (each block's
    corner), the labels a 3D feature net learns beside the block-averaged image (:func:`downsampled`)."""
    return torch.from_numpy(np.ascontiguousarray(labels[::factor, ::factor, ::factor], dtype=np.int64))[None]


def majority_labels(labels: np.ndarray, factor: int) -> torch.Tensor:
    """``(1, D/f, H/f, W/f)`` int64: the most frequent label of each ``factor``-cubed block of ``labels``
    ``(D, H, W)`` (ties: the lower id), the block the averaged image voxel covers."""
    labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))[None, None]
    best = count = None
    for k in range(int(labels.max()) + 1):  # one label at a time: a one-hot of the full grid would take ~1 GB
        share = F.avg_pool3d((labels == k).float(), factor)[:, 0]
        if best is None:
            best, count = torch.zeros_like(share, dtype=torch.int64), share
        else:
            best, count = torch.where(share > count, k, best), torch.maximum(share, count)
    return best


BLOCK_LABELS = {"corner": corner_labels, "majority": majority_labels}


def block_phases(vols, subject: int, factor: int, block_labels: str = "corner") -> tuple[torch.Tensor, torch.Tensor]:
    """The subject block-averaged at all ``factor**3`` grid offsets: images ``(f**3, 1, D/f, H/f, W/f)`` and
    their block labels ``(f**3, D/f, H/f, W/f)`` (:data:`BLOCK_LABELS`). Offset ``(a, b, c)`` drops the first
    ``a, b, c`` voxels of each axis and pads background at the far end, so every sample is the same anatomy
    sampled with another sub-voxel shift: exact, unlike an interpolated shift."""
    image, labels = vols.images[subject], vols.labels[subject]
    images, targets = [], []
    for a, b, c in np.ndindex(factor, factor, factor):
        shifted_image, shifted_labels = np.zeros_like(image, dtype=np.float32), np.zeros_like(labels)
        shifted_image[:image.shape[0] - a, :image.shape[1] - b, :image.shape[2] - c] = image[a:, b:, c:]
        shifted_labels[:labels.shape[0] - a, :labels.shape[1] - b, :labels.shape[2] - c] = labels[a:, b:, c:]
        images.append(downsample(shifted_image[None], factor))
        targets.append(BLOCK_LABELS[block_labels](shifted_labels, factor))
    return torch.cat(images), torch.cat(targets)


# Label propagation by per-pair NCC instance optimisation: the 3D instance benchmark's settings
# (registration_3d.json: 2 levels of 100 Adam steps, lr 0.1, and the lambda its folding rule chose for NCC).
PROPAGATION = {"steps": 100, "lr": 0.1, "levels": 2, "lam": 0.25 * LAMBDA_CENTRE["ncc"]}


def propagated_labels(vols, images, source: int, targets, log=print) -> dict[int, np.ndarray]:
    """``{target: (D, H, W) labels}``: the ``source`` subject's full-grid labels carried onto each target subject.

    The source image (moving) is registered to each target image (fixed) on the network grid by NCC
    instance optimisation (:data:`PROPAGATION`), and its labels are warped by nearest neighbour with the
    upsampled displacement, as :func:`score` warps them. Reads no label but the source's, so a target's
    own labels stay held out. ``images``: every subject's ``(1, 1, d, h, w)`` network-grid image.
    """
    loss, out = make_loss("ncc", 3), {}
    moving = torch.from_numpy(np.ascontiguousarray(vols.labels[source], dtype=np.int64))[None, None]
    for t in targets:
        if t == source:
            raise InputError("targets", f"subject {vols.names[t]} is the source of the labels")
        ddf, hist = optimise_displacement(images[source], images[t], loss, **PROPAGATION)
        full = resize_displacement(ddf, vols.labels[t].shape)
        out[t] = warp_nearest(moving, full)[0, 0].numpy()
        log(f"labels of {vols.names[source]} propagated to {vols.names[t]} by NCC: {hist['seconds']:.0f} s")
    return out


def feature_nets(vols, images, modes, steps: int, lr: float, factor: int, seed: int, log=print,
                 subjects=None, augment=None, encoder: str = "pooled", channels=(16, 32, 32),
                 dropout: float = 0.0, block_labels: str = "corner", phases: bool = False,
                 propagate: bool = False, carried: dict | None = None) -> tuple[dict, dict]:
    """``({(mode, subject): net}, {name: training info})``: one 3D feature net per surrogate task and subject.

    ``subjects``: indices into ``vols`` to train on (default all; the trained-network protocol uses vxm only).
    ``augment``, ``encoder``, ``channels``, ``dropout``: passed to :func:`~.feature_net.train_feature_net`.
    ``block_labels``: how a segmentation net's targets come from the full-grid labels (:data:`BLOCK_LABELS`);
    ``phases``: train on the subject at every block offset (:func:`block_phases`) instead of offset 0.
    ``propagate``: train the subject's net on every subject's image, the others labelled by the subject's
    own labels carried onto them (:func:`propagated_labels`); the same number of steps in all.
    ``carried``: ``{subject: that propagation}``, read before propagating and filled after, so that callers
    training several nets per subject (seeds of an ensemble) register each subject pair once.
    """
    if phases and propagate:
        raise InputError("propagate", "cannot be combined with phases (one image per subject)")
    nets, info = {}, {}
    carried = {} if carried is None else carried
    for mode in modes:
        for s in (range(len(vols.names)) if subjects is None else subjects):
            if phases:
                x, labels = block_phases(vols, s, factor, block_labels)
            elif propagate:
                others = [t for t in range(len(vols.names)) if t != s]
                x = torch.cat([images[t] for t in [s] + others])
                labels = None  # an autoencoder learns the images alone: nothing to propagate
                if mode == "seg":
                    if s not in carried:  # deterministic: the same labels for every net of this subject
                        carried[s] = propagated_labels(vols, images, s, others, log)
                    labels = torch.cat([BLOCK_LABELS[block_labels](m, factor)
                                        for m in [vols.labels[s], *carried[s].values()]])
            else:
                x, labels = images[s], BLOCK_LABELS[block_labels](vols.labels[s], factor)
            # An epoch is one step per volume: ``steps`` steps in all, rounded up to whole epochs.
            net, hist = train_feature_net(x, labels if mode == "seg" else None, mode, epochs=-(-steps // len(x)),
                                          batch_size=1, lr=lr, seed=seed, augment=augment, encoder=encoder,
                                          channels=channels, dropout=dropout)
            nets[(mode, s)] = net
            info[f"{mode}:{vols.names[s]}"] = {"seconds": hist["seconds"], "first_loss": hist["loss"][0],
                                               "final_loss": hist["loss"][-1]}
            log(f"feature net {mode} on {vols.names[s]}: {hist['seconds']:.0f} s, loss {hist['loss'][0]:.3f} -> "
                f"{hist['loss'][-1]:.3f}")
    return nets, info


def scored_pairs(vols, images, pairs, factor: int) -> tuple[dict, object]:
    """What the 3D pair benchmarks share: a result dict with the grids, the pair names and the affine-only
    scores of ``pairs`` (``"losses"`` empty), and ``score_pair(ddf, (moving, fixed))`` scoring a displacement
    of one pair as :func:`score` does. ``images``: the subjects' ``(1, 1, d, h, w)`` network-grid images."""

    def score_pair(ddf, p):
        return score(ddf, vols.labels[p[0]], vols.labels[p[1]])

    zero = torch.zeros((1, 3) + tuple(images[0].shape[2:]))
    out = {"setup": {"grid": list(vols.images[0].shape), "network_grid": list(images[0].shape[2:]), "factor": factor,
                     "pairs": [f"{vols.names[m]} -> {vols.names[f]}" for m, f in pairs]},
           "affine_only": collect([score_pair(zero, p) for p in pairs]), "losses": {}}
    return out, score_pair


def run_comparison_3d(losses, factor: int = 4, steps: int = 100, lr: float = 0.1, lambda_factors=LAMBDA_FACTORS,
                      feature_steps: int = 150, feature_lr: float = 3e-3, calibration=(0, 1), bspline: bool = True,
                      levels: int = 1, seed: int = 0, log=print) -> dict:
    """Every loss on every directed pair; result dict in the layout :mod:`.report` reads."""
    torch.manual_seed(seed)
    vols = load_brain_volumes()
    images = downsampled(vols, factor)
    pairs = volume_pairs(vols)
    calibration = tuple(calibration)
    out, score_pair = scored_pairs(vols, images, pairs, factor)
    out["setup"].update(steps=steps, lr=lr, lambda_factors=list(lambda_factors), folding_limit=FOLDING_LIMIT,
                        calibration_pair=out["setup"]["pairs"][pairs.index(calibration)], feature_steps=feature_steps,
                        feature_lr=feature_lr, seed=seed, levels=levels,
                        feature_training="per pair, the third subject only")
    log(f"affine only (no deformation): mean Dice {np.mean(out['affine_only']['dice']):.3f}")
    modes = sorted({n.split("-")[1] for n in losses if n.startswith("deepsim")})
    nets, out["setup"]["feature_nets"] = feature_nets(vols, images, modes, feature_steps, feature_lr, factor, seed, log)

    subjects = len(vols.names)
    out["losses"] = compare_losses(losses, images, pairs, score_pair,
                                   lambda mode, p: nets[(mode, third_subject(p, subjects))], LAMBDA_CENTRE,
                                   lambda_factors, steps, lr, pairs.index(calibration), levels=levels, log=log)
    if bspline:  # the 3D setting: the 2D one did not beat the affine floor here (registration_3d_bspline.md)
        out["bspline_mi"] = bspline_runs(images, pairs, score_pair, log=log, **BSPLINE_SETTINGS[BSPLINE_3D])
    return out


def run_and_report_3d(losses=INSTANCE_LOSSES, quick: bool = False, out_dir="benchmarks/results", steps: int = 100,
                      feature_steps: int = 120, factor: int = 4, levels: int = 2, log=print) -> dict:
    """:func:`run_comparison_3d` and its report ``registration_3d.{json,md,png}`` (``_quick`` when ``quick``).

    ``quick``: 20 steps, one lambda, 10 feature steps, no B-spline (a smoke run of a few minutes).
    """
    import time
    from pathlib import Path

    from .report import instance_protocol, write_report

    t0 = time.perf_counter()
    kw = dict(steps=20, lambda_factors=(1.0,), feature_steps=10, bspline=False) if quick else \
        dict(steps=steps, feature_steps=feature_steps)
    result = run_comparison_3d(list(losses), factor=factor, levels=levels, log=log, **kw)
    s = result["setup"]
    s["minutes_total"] = (time.perf_counter() - t0) / 60
    g = "x".join(str(n) for n in s["network_grid"])
    header = (f"3D brain MR registration, six directed pairs of vxm / OASIS 0001 / OASIS 0002, per-pair instance "
              f"optimisation (no registration network)\n\n{instance_protocol(s, 'the calibration pair')} "
              f"DeepSim feature nets: 3D, {s['feature_steps']} steps, "
              f"trained for each pair on the third subject only. Dice over seg35 labels on the full "
              f"{'x'.join(str(n) for n in s['grid'])} grid; folding on the optimisation grid; time = optimisation "
              f"per pair on one CPU thread (B-spline MI: SimpleITK, same {g} images). {s['minutes_total']:.1f} min "
              f"in all. Paper column: the paper's trained 3D networks (full resolution, hundreds of volumes), "
              f"for ordering only.")
    stem = "registration_3d_quick" if quick else "registration_3d"
    title = f"3D brain MR, 6 directed pairs, {g} grid: mean Dice per pair (triangle: mean)"
    log(write_report(result, out_dir, stem, header, title))
    log(f"affine floor {np.mean(result['affine_only']['dice']):.3f}; wrote {Path(out_dir) / stem}.json, .md, .png")
    return result


def run_bspline_settings_3d(factor: int = 4, pairs: int | None = None, settings=None, log=print) -> dict:
    """SimpleITK B-spline MI with each of ``settings`` (default :data:`BSPLINE_SETTINGS`) on the six directed
    pairs (the first ``pairs`` of them), scored as the instance benchmark scores its losses; result in the
    layout :func:`.report.write_report` reads, one entry of ``"losses"`` per setting."""
    vols = load_brain_volumes()
    images = downsampled(vols, factor)
    chosen = volume_pairs(vols)[:pairs]
    out, score_pair = scored_pairs(vols, images, chosen, factor)
    for name, options in (settings or BSPLINE_SETTINGS).items():
        log(f"B-spline MI, {name}")
        r = bspline_runs(images, chosen, score_pair, log=log, **options)
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        out["losses"][name] = dict(r, **{"lambda": None, "options": plain})  # no regulariser weight to report
        log(f"  mean Dice {np.mean(r['dice']):.3f}, folding {100 * np.mean(r['folding']):.3f}%, "
            f"{r['seconds_per_pair']:.0f} s per pair")
    return out
