"""Leave-patient-out reproduction of the rank-error experiment (Cheng et al. 2016, 3.2).

For every patient of a region in turn: train each learned variant on the
other patients' registered slices, then score N test skull patches of the
held-out patient with the learned metrics and the hand-made baselines. The
psi values of all folds are pooled, so every test patch comes from a patient
its model never saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import InputError
from ..patch_metrics import get_metric
from .patch_pairs import pairs_from_slices, skull_edge_mask
from .rank_error import rank_errors, summarise

# name: (variant, pre-training) of the networks compared in the paper.
VARIANTS = {
    "multimodal SDAE + deep NN": ("deep", "multimodal"),
    "uni-modal SDAE + deep NN": ("deep", "unimodal"),
    "multimodal SDAE + shallow NN": ("shallow", "multimodal"),
}
BASELINES = ("nmi", "lcc", "mind")
CASCADE = "cascade: multimodal deep + dark-MR negatives"
RANK_SUM = "multimodal deep + NMI (rank sum)"


def load_region(dataset, region: str | None = None, mr: str = "T1", patients=None) -> dict:
    """``{patient: [(ct, mr), ...]}`` registered [0, 1] arrays of every slice of a region (or of ``patients``)."""
    slices = {}
    for pair in dataset.iter_pairs(patients or dataset.patients(region), mr=mr, progress=True):
        slices.setdefault(pair.patient, []).append((pair.ct.array, pair.mr.array))
    return slices


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Downsample a 2D/3D array by averaging ``factor``^ndim blocks (edges that do not fill a block are cut)."""
    if factor == 1:
        return array
    cut = tuple(slice(0, n // factor * factor) for n in array.shape)
    shape = [v for n in array.shape for v in (n // factor, factor)]
    return array[cut].reshape(shape).mean(axis=tuple(range(1, 2 * array.ndim, 2))).astype(np.float32)


def select_slices(slices_by_patient: dict, max_outline_distance: float | None = 3.0, downsample: int = 2,
                  above: float | None = None) -> dict:
    """Keep the trustworthy registered pairs and bring them to the patch scale.

    Pairs whose body outlines lie more than ``max_outline_distance`` voxels
    apart after registration (:func:`~DeepSimilarityLib.registration_qc.outline_distance`)
    show different anatomy and would teach and test wrong matches; they are
    dropped. ``above`` keeps only pairs farther apart than it as well: the band
    of looser pairs that may train but is never tested. ``downsample`` 2 turns
    the 512 x 512 slices (~0.45 mm) into ~0.9 mm voxels, close to the ~1 mm of
    the paper's data, so a 17 x 17 patch sees about 15 mm.
    """
    from ..registration_qc import outline_distance

    def keep(d: float) -> bool:
        return (max_outline_distance is None or d <= max_outline_distance) and (above is None or d > above)

    out = {}
    for patient, pairs in slices_by_patient.items():
        kept = [(ct, mr) for ct, mr in pairs if keep(outline_distance(ct, mr))]
        out[patient] = [(block_mean(ct, downsample), block_mean(mr, downsample)) for ct, mr in kept]
    return out


def phantom_slices(count: int = 6, dim: int = 2, first_seed: int = 0) -> list:
    """Registered ``(ct, mr)`` [0, 1] phantom pairs (different noise seeds), for training without data.

    2D: 256 x 256 slices at 1 mm; 3D: 96 x 192 x 192 volumes at 1.25 x 1.25 x 2.5 mm.
    """
    from ..image_io import normalise_intensity
    from ..phantom import make_head_phantom

    out = []
    for seed in range(first_seed, first_seed + count):
        ph = make_head_phantom((256, 256), seed=seed) if dim == 2 else \
            make_head_phantom((96, 192, 192), spacing=(1.25, 1.25, 2.5), seed=seed)
        out.append((normalise_intensity(ph.ct.array), normalise_intensity(ph.mr.array)))
    return out


def image_pair_slices(ct_path, mr_path, dim: int = 2) -> tuple[list, str]:
    """``(ct, mr)`` [0, 1] training arrays from two registered image files (e.g. volumes of a Slicer scene).

    The MR is resampled onto the CT grid when the grids differ. 2D files give one pair; 3D files give
    their axial slices that hold CT content (``dim`` 2) or the whole volume (``dim`` 3).
    """
    from ..image_io import normalise_intensity, read_image, resample_to

    ct, mr = read_image(ct_path), read_image(mr_path)
    if ct.ndim != mr.ndim:
        raise InputError(mr_path, f"is {mr.ndim}D but the CT {ct_path} is {ct.ndim}D")
    if not mr.same_grid(ct):
        mr = resample_to(mr, ct)
    ct_a, mr_a = normalise_intensity(ct.array), normalise_intensity(mr.array)
    if ct.ndim == 2 or dim == 3:
        slices = [(ct_a, mr_a)]
    else:
        slices = [(c, m) for c, m in zip(ct_a, mr_a) if float(np.ptp(c)) > 0]
    return slices, f"{Path(ct_path).name} / {Path(mr_path).name}: {len(slices)} registered {ct.ndim}D CT/MR array(s)"


def training_slices(region: str = "head", patients: str | None = None, phantom: bool = False, mr: str = "T1",
                    max_outline_distance: float | None = 3.0, downsample: int = 2, dim: int = 2, images=None):
    """Training slices and a description of where they came from, for ``deepsim similarity train``.

    ``images``: ``(ct_path, mr_path)`` of a registered pair to train on instead of the shared data.
    3D training uses the phantom (or ``images``): the shared data holds no CT/MR head pair aligned in 3D.
    """
    if images is not None:
        return image_pair_slices(*images, dim=dim)
    if dim == 3:
        return phantom_slices(2, dim=3), "3D phantom volumes (96 x 192 x 192, 1.25 x 1.25 x 2.5 mm), seeds 0-1"
    if phantom:
        # The phantom is rendered at 1 mm already: the patch scale the real slices are brought to.
        return phantom_slices(), "phantom slices (256 x 256, 1 mm), seeds 0-5"
    from ..datasets import CTMRSlices

    dataset = CTMRSlices()
    chosen = [p.strip() for p in patients.split(",")] if patients else dataset.patients(region)
    for p in chosen:
        if p not in dataset.patients():
            raise InputError("--patients", f"unknown patient {p!r}; known: {', '.join(dataset.patients())}")
    slices, counts = [], []
    for sequence in mr.split(","):  # "T1,T2": the CT/T1 and the CT/T2 pairs, each registered to its CT
        by_patient = select_slices(load_region(dataset, mr=sequence, patients=chosen), max_outline_distance, downsample)
        slices += [s for p in chosen for s in by_patient[p]]
        counts.append(f"{sum(len(by_patient[p]) for p in chosen)} {sequence}")
    return slices, (f"ct-mr-slices {mr}: {', '.join(chosen)}; {' + '.join(counts)} slices with body outlines "
                    f"within {max_outline_distance} px after registration, downsampled x{downsample}")


def test_patches(slices: list, n: int, rng: np.random.Generator) -> list:
    """``n`` random CT skull-edge patches ``(ct, mr, centre)`` spread over the given slices."""
    out = []
    candidates = [(i, c) for i, (ct, _) in enumerate(slices) for c in np.argwhere(skull_edge_mask(ct, near=0))]
    if not candidates:
        return out
    for k in rng.choice(len(candidates), size=min(n, len(candidates)), replace=False):
        i, c = candidates[k]
        out.append((slices[i][0], slices[i][1], tuple(int(v) for v in c)))
    return out


def leave_patient_out(slices_by_patient: dict, n_test: int = 300, n_pairs: int = 2000, setting: str = "paper",
                      variants=tuple(VARIANTS), baselines=BASELINES, seed: int = 0, precision: str = "float32",
                      cascade: bool = False, patch_norm: str = "image", rank_sum_nmi: bool = False,
                      extra_train: dict | None = None, **pair_options) -> dict:
    """Pooled psi per metric over leave-one-patient-out folds, with training times.

    ``cascade`` adds the dark-MR cascade, ``rank_sum_nmi`` the rank sum of the
    multimodal deep network and NMI (:class:`~.cascade.RankSumPatchMetric`).
    ``extra_train`` (``{patient: [(ct, mr), ...]}``, e.g. the CT/T2 pairs)
    joins the training slices of the patients not held out; it is never tested.

    ``n_test`` patches are split over the patients in proportion to their
    number of slices. Returns ``{"psi": {metric: array}, "train_seconds":
    {variant: [per fold]}, "folds": [patients]}``.
    """
    from .similarity_net import LearnedPatchMetric, TrainSettings, train_similarity_net

    rng = np.random.default_rng(seed)
    patients = sorted(p for p in slices_by_patient if slices_by_patient[p])
    counts = np.array([len(slices_by_patient[p]) for p in patients], float)
    per_patient = np.floor(counts / counts.sum() * n_test).astype(int)
    per_patient[np.argsort(-counts)[: n_test - per_patient.sum()]] += 1
    extra = ([CASCADE] if cascade else []) + ([RANK_SUM] if rank_sum_nmi else [])
    psi = {name: [] for name in list(variants) + extra + list(baselines)}
    train_seconds = {name: [] for name in variants}
    tested = []
    settings = getattr(TrainSettings, setting)() if isinstance(setting, str) else setting
    for fold, (held_out, n) in enumerate(tqdm(list(zip(patients, per_patient)), desc="folds", unit="patient")):
        train = [s for p in patients if p != held_out for s in slices_by_patient[p]]
        train += [s for p, pairs in (extra_train or {}).items() if p != held_out for s in pairs]
        if not train:
            raise InputError("patients", "leave-patient-out needs slices of at least two patients")
        pairs = pairs_from_slices(train, n_positive=n_pairs, seed=seed + fold, **pair_options)
        tests = test_patches(slices_by_patient[held_out], int(n), rng)
        tested.extend([held_out] * len(tests))
        for name in variants:
            variant, pretraining = VARIANTS[name]
            t0 = time.perf_counter()
            net, _ = train_similarity_net(pairs.ct, pairs.mr, pairs.labels, settings, variant=variant,
                                          pretraining=pretraining, seed=seed + fold, patch_norm=patch_norm)
            train_seconds[name].append(time.perf_counter() - t0)
            learned = LearnedPatchMetric(net, precision=precision)
            psi[name].extend(rank_errors(tests, learned))
            multimodal_deep = (variant, pretraining) == ("deep", "multimodal")
            if rank_sum_nmi and multimodal_deep:
                from .cascade import RankSumPatchMetric

                psi[RANK_SUM].extend(rank_errors(tests, RankSumPatchMetric(learned, get_metric("nmi"))))
            if cascade and multimodal_deep:
                from .cascade import CascadePatchMetric, hard_negative_pairs

                hard = hard_negative_pairs(train, n_pairs, seed=seed + fold, **pair_options)
                second, _ = train_similarity_net(hard.ct, hard.mr, hard.labels, settings, seed=seed + fold,
                                                 patch_norm=patch_norm)
                metric = CascadePatchMetric(learned, LearnedPatchMetric(second, precision=precision))
                psi[CASCADE].extend(rank_errors(tests, metric))
        for name in baselines:
            psi[name].extend(rank_errors(tests, get_metric(name)))
    return {"psi": {k: np.array(v) for k, v in psi.items()}, "patient": np.array(tested),
            "train_seconds": train_seconds, "folds": patients}


def results_table(psi: dict) -> str:
    """Markdown table: mean psi, median psi, fraction psi = 0, per metric."""
    lines = ["| metric | N | mean psi | median psi | psi = 0 |", "|---|---:|---:|---:|---:|"]
    for name, values in psi.items():
        s = summarise(values)
        lines.append(f"| {name} | {s['n']} | {s['mean_psi']:.1f} | {s['median_psi']:.0f} | {s['fraction_psi0']:.1%} |")
    return "\n".join(lines)


def per_patient_table(psi: dict, patient: np.ndarray) -> str:
    """Markdown table of mean psi per held-out patient (rows) and metric (columns)."""
    names = list(psi)
    lines = ["| held-out patient | N | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for p in sorted(set(patient.tolist())):
        pick = patient == p
        lines.append(f"| {p} | {int(pick.sum())} | " + " | ".join(f"{psi[n][pick].mean():.0f}" for n in names) + " |")
    return "\n".join(lines)
