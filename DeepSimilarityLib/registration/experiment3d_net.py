"""A trained 3D registration network on the brain volumes: train on vxm <-> OASIS, test on OASIS 0001 <-> 0002.

Protocol (the network counterpart of the instance optimisation in :mod:`.experiment3d`):

* images block-averaged by ``factor`` (4: ``(1, 1, 56, 48, 40)``, 4 mm voxels), one
  :class:`~.network.RegistrationNet` (``spatial_dims=3``) per label-free loss;
* training pairs: the four directed pairs vxm <-> OASIS 0001 and vxm <-> OASIS 0002, batch 1, Adam
  lr 3e-3 (a pilot on MSE, 400 steps, chose it by the final training loss: 1e-3 8.7e-4, 3e-3 7.0e-4,
  1e-2 diverged), 1000 steps: what fits six losses into ~35 min on one thread;
  every sample gets one random left-right flip and one small random affine (rotation, isotropic
  scale, shift) applied to BOTH its images, so the pair's own misalignment is kept and the net sees
  new poses of the same anatomy (:func:`augment_pairs`);
* test pairs: OASIS 0001 -> 0002 and 0002 -> 0001, never a training pair (but both subjects'
  images, not labels, are seen in training);
* DeepSim feature nets (3D, seg and ae) trained on the vxm subject alone (its image and seg35
  labels), so no label of a test subject is seen by anything;
* that is fold 0; folds 1 and 2 make OASIS 0001 or 0002 the hub in vxm's place (:func:`fold_pairs`),
  and :func:`merge_3d_net_folds` joins the three into one table over all six directed pairs;
* lambda per loss: the one the 3D instance benchmark's label-free folding rule chose
  (``registration_3d.json``; 0.25 x :data:`~.compare.LAMBDA_CENTRE` for every loss);
* Dice over the seg35 labels on the full 224x192x160 grid, folding on the network grid
  (:func:`.experiment3d.score`); inference time = network + upsampling the displacement.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .augmentation import augment_intensity, augment_labelled, augment_pairs, intensity_transform
from .compare import FOLDING_LIMIT, INSTANCE_LOSSES, LAMBDA_CENTRE, smallest_lambda_under
from .data import load_brain_volumes
from .experiment3d import BLOCK_LABELS, downsampled, feature_nets, score
from .feature_net import ENCODERS, FeatureEnsemble, FinestLevels
from .losses import foreground_quantiles, make_loss
from .network import resize_displacement, warp_image, warp_nearest
from .report_net3d import merge_3d_net_folds, report_3d_net
from .train import train_registration

SUBJECTS = 3  # vxm, OASIS 0001, OASIS 0002


def fold_pairs(fold: int) -> tuple[tuple, tuple]:
    """``(training pairs, test pairs)`` of one fold, as ``(moving, fixed)`` subject indices.

    Fold ``k`` trains on the four directed pairs between subject ``k`` (the hub, whose labels alone
    train the DeepSim feature net) and each of the other two, and tests on the two directed pairs
    between those two. Over the three folds every directed pair is tested once, as in the instance
    benchmark, where each pair's feature net is trained on its third subject.
    """
    if fold not in range(SUBJECTS):
        raise InputError("fold", f"must be one of {list(range(SUBJECTS))} (the hub subject), not {fold!r}")
    a, b = (s for s in range(SUBJECTS) if s != fold)
    return ((fold, a), (a, fold), (fold, b), (b, fold)), ((a, b), (b, a))

# What the single-level 3D instance benchmark's folding rule chose for every loss
# (registration_3d_1level.json, "lambda").
INSTANCE_LAMBDA = {name: 0.25 * LAMBDA_CENTRE[name] for name in INSTANCE_LOSSES}


@dataclass(frozen=True)
class DeepSimVariant:
    """How the hub's DeepSim feature nets are trained and compared; the defaults are the protocol's.

    A result's setup records each field that differs from its default under the field's name
    (:meth:`changed`), so runs made before a field existed still merge with new default runs.
    """

    feature_augment: bool = False  # a new random pose of the hub (image + labels, augment_labelled) every step
    feature_intensity: bool = False  # a new random contrast of it (intensity_transform), after the pose
    feature_encoder: str = "pooled"  # one of feature_net.ENCODERS
    feature_channels: tuple = (16, 32, 32)
    feature_dropout: float = 0.0  # while the feature nets train
    feature_block_labels: str = "corner"  # the segmentation targets on the network grid: experiment3d.BLOCK_LABELS
    feature_phases: bool = False  # train on the hub block-averaged at every grid offset (experiment3d.block_phases)
    feature_ensemble: int = 1  # nets from seeds seed, seed + 1, ...; DeepSim averages over them (FeatureEnsemble)
    feature_levels: int = 0  # DeepSim over each net's this many finest levels (FinestLevels); 0: all of them
    feature_propagated_labels: bool = False  # also train on the other subjects, hub labels carried by NCC
    deepsim_before_warp: bool = False  # compare the warped moving image's feature maps (DeepSimLoss.before_warp)
    deepsim_histogram_match: bool = False  # map every DeepSim input onto the hub's foreground intensity quantiles

    def __post_init__(self):
        if self.feature_encoder not in ENCODERS:
            raise InputError("feature_encoder", f"must be one of {ENCODERS}, not {self.feature_encoder!r}")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise InputError("feature_dropout", f"must be in [0, 1), not {self.feature_dropout!r}")
        if self.feature_block_labels not in BLOCK_LABELS:
            raise InputError("feature_block_labels", f"must be one of {sorted(BLOCK_LABELS)}, "
                                                     f"not {self.feature_block_labels!r}")
        if int(self.feature_ensemble) != self.feature_ensemble or self.feature_ensemble < 1:
            raise InputError("feature_ensemble", f"must be a whole number >= 1, not {self.feature_ensemble!r}")
        if self.feature_phases and self.feature_propagated_labels:
            raise InputError("feature_propagated_labels", "cannot be combined with feature_phases")
        object.__setattr__(self, "feature_channels", tuple(int(c) for c in self.feature_channels))
        depth = len(self.feature_channels)
        if int(self.feature_levels) != self.feature_levels or not 0 <= self.feature_levels <= depth:
            raise InputError("feature_levels", f"must be 0 (all) to the {depth} levels of "
                                               f"feature_channels, not {self.feature_levels!r}")

    def changed(self) -> dict:
        """``{field: value}`` for the fields that differ from their defaults (tuples as lists, as in JSON)."""
        out = {}
        for f, value in zip(fields(self), asdict(self).values()):
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def loss(self, name: str, feature_net, hub_image: torch.Tensor):
        """The DeepSim loss ``name`` with these options; ``hub_image`` ``(1, ...)`` is the feature nets' subject."""
        quantiles = foreground_quantiles(hub_image) if self.deepsim_histogram_match else None
        return make_loss(name, 3, feature_net, before_warp=self.deepsim_before_warp, reference_quantiles=quantiles)

    def feature_nets(self, vols, images: list, modes, steps: int, lr: float, factor: int, seed: int, hub: int,
                     log=print) -> tuple[dict, dict]:
        """``({mode: net}, {name: training info})``: the hub's feature net per DeepSim mode, a
        :class:`~.feature_net.FeatureEnsemble` of ``feature_ensemble`` nets when that is above 1, each net
        seen through :class:`~.feature_net.FinestLevels` when ``feature_levels`` is set.
        ``images``: the subjects' ``(1, 1, ...)`` network-grid images."""
        pose, contrast = torch.Generator().manual_seed(seed + 2), intensity_transform(seed + 3)

        def augment(x, y):
            x, y = augment_labelled(x, y, pose) if self.feature_augment else (x, y)
            return augment_intensity(x, y, contrast) if self.feature_intensity else (x, y)

        nets, info, carried = {}, {}, {}
        for k in range(self.feature_ensemble):
            trained, trained_info = feature_nets(
                vols, images, modes, steps, lr, factor, seed + k, log, subjects=(hub,),
                augment=augment if self.feature_augment or self.feature_intensity else None,
                encoder=self.feature_encoder, channels=self.feature_channels, dropout=self.feature_dropout,
                block_labels=self.feature_block_labels, phases=self.feature_phases,
                propagate=self.feature_propagated_labels, carried=carried)
            for mode in modes:
                net = trained[(mode, hub)]
                nets.setdefault(mode, []).append(FinestLevels(net, self.feature_levels) if self.feature_levels
                                                 else net)
            info.update({name + (f":seed{seed + k}" if k else ""): v for name, v in trained_info.items()})
        return {mode: ns[0] if len(ns) == 1 else FeatureEnsemble(ns) for mode, ns in nets.items()}, info


def synthetic_validation(image: torch.Tensor, labels: np.ndarray, count: int = 4, amplitude: float = 1.5,
                         control=(7, 6, 5), seed: int = 0) -> list:
    """``count`` validation targets ``(fixed image (1, 1, d, h, w), fixed labels (D, H, W))`` from ONE subject.

    Each fixed image is ``image`` warped by a smooth random displacement (normal, sd ``amplitude``
    voxels of the network grid, on a ``control`` grid upsampled trilinearly), its labels by the same
    field on the full grid; the moving image is ``image`` itself. Why: the only labels outside the
    test pair belong to the hub subject (vxm in fold 0), so a label-based choice of lambda must be
    made on deformations of that subject (a stand-in for a validation split of real pairs).
    """
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        coarse = amplitude * torch.randn((1, image.ndim - 2) + tuple(control), generator=generator)
        field = F.interpolate(coarse, size=image.shape[2:], mode="trilinear", align_corners=False)
        fixed = warp_image(image, field)
        full = resize_displacement(field, labels.shape)
        fixed_labels = warp_nearest(torch.from_numpy(labels.astype(np.int64))[None, None], full)[0, 0].numpy()
        out.append((fixed, fixed_labels))
    return out


def train_and_score(name: str, images: torch.Tensor, labels: list, lam: float, feature_net, steps: int, lr: float,
                    augment: bool, seed: int, log=print, validation: list | None = None, fold: int = 0,
                    variant: DeepSimVariant = DeepSimVariant(), velocity: bool = False,
                    regularise: str = "displacement") -> dict:
    """Train one net on the training pairs of ``fold`` (:func:`fold_pairs`) for ``steps`` samples and score
    it on that fold's test and training pairs.

    ``images`` ``(3, 1, h, w, d)``; ``labels`` the full-grid seg35 maps ``(H, W, D)`` of the three subjects.
    ``validation``: :func:`synthetic_validation` targets of the hub subject ``fold`` (the moving image),
    scored as ``val_dice``. Returns the test scores in the layout :mod:`.report` reads, plus training
    Dice, seconds, inference ms. ``variant``: how a DeepSim loss uses its feature net. ``velocity``: the net
    outputs a stationary velocity field integrated by scaling and squaring (scored as the displacement it
    integrates to; ``regularise`` says which of the two fields the diffusion term acts on).
    """
    train_pairs, test_pairs = fold_pairs(fold)
    loss = (variant.loss(name, feature_net, images[fold:fold + 1]) if name.startswith("deepsim")
            else make_loss(name, 3, feature_net))
    generator = torch.Generator().manual_seed(seed + 1)
    aug = (lambda m, f: augment_pairs(m, f, generator)) if augment else None
    epochs = max(1, steps // len(train_pairs))
    t0, marks = time.perf_counter(), set()

    def progress(fraction):
        tenth = int(10 * fraction + 1e-9)
        if tenth not in marks and tenth % 2 == 0 and tenth > 0:
            marks.add(tenth)
            done = time.perf_counter() - t0
            log(f"  {name}: {100 * fraction:.0f}% of {epochs * len(train_pairs)} steps ({done:.0f} s)")

    net, hist = train_registration(images, torch.tensor(train_pairs), loss, lam, epochs=epochs, batch_size=1, lr=lr,
                                   loss_name=name, seed=seed, velocity=velocity, augment=aug, on_epoch=progress,
                                   regularise=regularise)
    full = labels[0].shape
    ddfs, ms = {}, []
    with torch.no_grad():
        net.displacement(images[:1], images[1:2])  # warm-up: the first call allocates
        for m, f in test_pairs + train_pairs:
            t1 = time.perf_counter()
            ddfs[(m, f)] = ddf = net.displacement(images[m:m + 1], images[f:f + 1])
            resize_displacement(ddf, full)
            ms.append(1000 * (time.perf_counter() - t1))
        val = [score(net.displacement(images[fold:fold + 1], fixed), labels[fold], fixed_labels)["dice"]
               for fixed, fixed_labels in (validation or [])]
    test = [score(ddfs[p], labels[p[0]], labels[p[1]]) for p in test_pairs]
    train = [score(ddfs[p], labels[p[0]], labels[p[1]]) for p in train_pairs]
    return {"dice": [r["dice"] for r in test], "dice_per_label": [r["dice_per_label"] for r in test],
            "folding": [r["folding"] for r in test], "lambda": lam, "train_dice": [r["dice"] for r in train],
            "train_folding": [r["folding"] for r in train], "val_dice": val,
            "train_seconds": hist["seconds"], "steps": epochs * len(train_pairs),
            "loss_first_last": [hist["loss"][0], hist["loss"][-1]], "inference_ms": float(np.median(ms)),
            "seconds_per_pair": float(np.median(ms)) / 1000, "augment": augment}


def choose_by_training_folding(sweep: list, folding_limit: float = FOLDING_LIMIT) -> int:
    """Index of the run with the smallest lambda whose mean folding on the training pairs is under the limit.

    The nets' counterpart of the instance benchmark's calibration rule: it reads no label and no
    test pair. When every lambda folds too much, the largest lambda is taken.
    """
    lam = smallest_lambda_under({r["lambda"]: np.mean(r["train_folding"]) for r in sweep}, folding_limit)
    return next(i for i, r in enumerate(sweep) if r["lambda"] == lam)


def choose_by_validation_dice(sweep: list) -> int:
    """Index of the run with the highest mean Dice on the hub's synthetic validation (ties: larger lambda)."""
    return max(range(len(sweep)), key=lambda i: (np.mean(sweep[i]["val_dice"]), sweep[i]["lambda"]))


LAMBDA_RULES = {"folding": choose_by_training_folding, "validation": choose_by_validation_dice}


def run_net_comparison_3d(losses=INSTANCE_LOSSES, factor: int = 4, steps: int = 1000, lr: float = 3e-3,
                          lambdas: dict | None = None, feature_steps: int = 120, feature_lr: float = 3e-3,
                          augment: bool = True, ablation=(), seed: int = 0, lambda_factors=(1.0,),
                          lambda_rule: str = "validation", fold: int = 0, variant: DeepSimVariant = DeepSimVariant(),
                          velocity: bool = False, regularise: str = "displacement", log=print) -> dict:
    """Every loss trained and tested as in the module docstring; result dict in the layout :mod:`.report` reads.

    ``fold``: which subject is the hub (:func:`fold_pairs`); 0 (vxm) is the module docstring's split, 1
    and 2 rotate it so that :func:`merge_3d_net_folds` can test every directed pair once.
    ``lambdas``: ``{loss: lambda}`` (default :data:`INSTANCE_LAMBDA`). ``lambda_factors``: with more
    than one, each loss is trained at every ``lambda x factor`` and the run ``lambda_rule`` picks is
    reported (all runs under ``["sweep"]``): ``"validation"`` (:func:`choose_by_validation_dice`, Dice
    on :func:`synthetic_validation` deformations of the hub) or ``"folding"``
    (:func:`choose_by_training_folding`; it proved to pick the smallest lambda, with the lowest Dice).
    ``ablation``: losses trained a second time with the other ``augment`` setting, kept under
    ``result["ablation"]`` (not in the table). ``variant``: how the DeepSim feature nets are trained
    and compared (:class:`DeepSimVariant`). ``velocity``: every net integrates a stationary velocity field
    (recorded in the setup only when set, so results made before the option merge with new default runs);
    ``regularise="velocity"`` puts the diffusion term on that field instead of the displacement (recorded
    likewise).
    """
    if not lambda_factors or min(lambda_factors) <= 0:
        raise InputError("lambda_factors", f"need one or more positive factors, got {lambda_factors}")
    if lambda_rule not in LAMBDA_RULES:
        raise InputError("lambda_rule", f"must be one of {sorted(LAMBDA_RULES)}, got {lambda_rule!r}")
    train_pairs, test_pairs = fold_pairs(fold)
    lambdas = {**INSTANCE_LAMBDA, **(lambdas or {})}
    unknown = [n for n in list(losses) + list(ablation) if n not in INSTANCE_LAMBDA]
    if unknown:
        raise InputError("losses", f"{unknown} not among the label-free losses {INSTANCE_LOSSES}")
    torch.manual_seed(seed)
    vols = load_brain_volumes()
    images = torch.cat(downsampled(vols, factor))
    labels_only = "'s labels" if variant.feature_propagated_labels else ""
    names = lambda pairs: [f"{vols.names[m]} -> {vols.names[f]}" for m, f in pairs]  # noqa: E731
    out = {"setup": {"grid": list(vols.images[0].shape), "network_grid": list(images.shape[2:]), "factor": factor,
                     "train_pairs": names(train_pairs), "pairs": names(test_pairs), "steps": steps, "lr": lr,
                     "batch_size": 1, "augment": augment, "feature_steps": feature_steps, "feature_lr": feature_lr,
                     "seed": seed, "feature_training": f"the {vols.names[fold]} subject{labels_only} only",
                     "fold": fold,
                     "lambda_factors": list(lambda_factors), "lambda_rule": lambda_rule,
                     "feature_augment": variant.feature_augment, **variant.changed(),
                     **({"velocity": True} if velocity else {}),
                     **({"regularise": regularise} if regularise != "displacement" else {})}, "losses": {}}
    zero = torch.zeros((1, 3) + tuple(images.shape[2:]))
    out["affine_only"] = {k: [score(zero, vols.labels[m], vols.labels[f])[k] for m, f in test_pairs]
                          for k in ("dice", "dice_per_label", "folding")}
    log(f"affine only (no deformation), test pairs: mean Dice {np.mean(out['affine_only']['dice']):.3f}")
    modes = sorted({n.split("-")[1] for n in list(losses) + list(ablation) if n.startswith("deepsim")})
    nets, out["setup"]["feature_nets"] = variant.feature_nets(vols, list(images[:, None]), modes, feature_steps,
                                                              feature_lr, factor, seed, fold, log)

    validation = (synthetic_validation(images[fold:fold + 1], vols.labels[fold], seed=seed)
                  if len(lambda_factors) > 1 else [])

    def run(name, aug, lam):
        mode = name.split("-")[1] if name.startswith("deepsim") else None
        r = train_and_score(name, images, vols.labels, lam, nets.get(mode), steps, lr, aug, seed, log, validation,
                            fold, variant, velocity, regularise)
        log(f"{name:12s} augment {aug!s:5s} lambda {r['lambda']:<7g} test Dice {np.mean(r['dice']):.3f} (train "
            f"{np.mean(r['train_dice']):.3f}) folding {100 * np.mean(r['folding']):.3f}% (training pairs "
            f"{100 * np.mean(r['train_folding']):.3f}%; validation Dice "
            f"{np.mean(r['val_dice']) if r['val_dice'] else float('nan'):.3f}; {r['train_seconds']:.0f} s training, "
            f"{r['inference_ms']:.0f} ms per pair)")
        return r

    for name in losses:
        sweep = [run(name, augment, lambdas[name] * f) for f in lambda_factors]
        chosen = LAMBDA_RULES[lambda_rule](sweep) if len(sweep) > 1 else 0  # one run: nothing to choose
        out["losses"][name] = dict(sweep[chosen])
        if len(sweep) > 1:
            log(f"{name:12s} lambda {sweep[chosen]['lambda']:g} chosen by the {lambda_rule} rule")
            out["losses"][name]["sweep"] = [{k: r[k] for k in ("lambda", "dice", "folding", "train_dice",
                                                               "train_folding", "val_dice", "train_seconds")}
                                            for r in sweep]
    if ablation:
        out["ablation"] = {name: run(name, not augment, lambdas[name]) for name in ablation}
    return out


def run_and_report_3d_net(losses=INSTANCE_LOSSES, quick: bool = False, out_dir="benchmarks/results",
                          steps: int = 1000, instance: dict | None = None, ablation=("mse",), feature_steps: int = 120,
                          stem: str = "registration_3d_net", lambda_factors=(1.0,), lambda_rule: str = "validation",
                          log=print, **options) -> dict:
    """:func:`run_net_comparison_3d` and ``registration_3d_net.{json,md,png}`` (``_quick`` when ``quick``).

    ``instance``: the instance benchmark's result; its lambdas are used (times ``lambda_factors``) and
    its Dice on the same test pairs is tabled beside the networks'. ``quick``: 16 steps, 5 feature
    steps, no ablation (smoke run). ``options``: the other keywords of :func:`run_net_comparison_3d`
    (fold, augmentation, the feature-net and DeepSim variants), passed on. Writes ``{stem}.{json,md,png}``.
    """
    t0 = time.perf_counter()
    lambdas = {n: r["lambda"] for n, r in instance["losses"].items()} if instance else None
    kw = dict(steps=16, feature_steps=5, ablation=()) if quick else dict(steps=steps, ablation=tuple(ablation),
                                                                         feature_steps=feature_steps)
    result = run_net_comparison_3d(list(losses), lambdas=lambdas, lambda_factors=tuple(lambda_factors),
                                   lambda_rule=lambda_rule, log=log, **options, **kw)
    s = result["setup"]
    s["minutes_total"] = (time.perf_counter() - t0) / 60
    s["lambda_source"] = instance.get("source", "the instance benchmark JSON") if instance else "0.25 x LAMBDA_CENTRE"
    s["quick"] = quick
    report_3d_net(result, out_dir, stem + "_quick" if quick else stem, instance, log)
    return result


def run_and_report_3d_net_folds(losses=INSTANCE_LOSSES, quick: bool = False, out_dir="benchmarks/results",
                                steps: int = 1000, instance: dict | None = None, folds=(0, 1, 2),
                                stem: str | None = None, velocity: bool = False, log=print) -> dict:
    """Every fold of :func:`fold_pairs` (one report each, ``{stem}_fold{k}``), then one report over all
    their test pairs, ``{stem}`` (``_quick`` appended when ``quick``). No ablation. Returns the merged result.
    ``velocity``: every net integrates a stationary velocity field; the default stem is then
    ``registration_3d_net_folds_velocity`` (else ``registration_3d_net_folds``).
    """
    stem = stem or "registration_3d_net_folds" + ("_velocity" if velocity else "")
    runs = [run_and_report_3d_net(losses, quick, out_dir, steps, instance, ablation=(), stem=f"{stem}_fold{k}",
                                  fold=k, velocity=velocity, log=log) for k in folds]
    merged = merge_3d_net_folds(runs)
    merged["setup"]["quick"] = quick
    report_3d_net(merged, out_dir, stem + "_quick" if quick else stem, instance, log)
    return merged
