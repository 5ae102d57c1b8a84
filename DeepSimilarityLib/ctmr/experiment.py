"""Leave-patient-out reproduction of the rank-error experiment (Cheng et al. 2016, 3.2).

For every patient of a region in turn: train each learned variant on the
other patients' registered slices, then score N test skull patches of the
held-out patient with the learned metrics and the hand-made baselines. The
psi values of all folds are pooled, so every test patch comes from a patient
its model never saw.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

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


def load_region(dataset, region: str | None = None, mr: str = "T1", patients=None) -> dict:
    """``{patient: [(ct, mr), ...]}`` registered [0, 1] arrays of every slice of a region (or of ``patients``)."""
    slices = {}
    for pair in dataset.iter_pairs(patients or dataset.patients(region), mr=mr, progress=True):
        slices.setdefault(pair.patient, []).append((pair.ct.array, pair.mr.array))
    return slices


def phantom_slices(count: int = 6) -> list:
    """Registered ``(ct, mr)`` [0, 1] pairs of phantom slices (different seeds), for training without data."""
    from ..image_io import normalise_intensity
    from ..phantom import make_head_phantom

    out = []
    for seed in range(count):
        ph = make_head_phantom((256, 256), seed=seed)
        out.append((normalise_intensity(ph.ct.array), normalise_intensity(ph.mr.array)))
    return out


def training_slices(region: str = "head", patients: str | None = None, phantom: bool = False, mr: str = "T1"):
    """Training slices and a description of where they came from, for ``deepsim similarity train``."""
    if phantom:
        return phantom_slices(), "phantom slices, seeds 0-5"
    from ..datasets import CTMRSlices

    dataset = CTMRSlices()
    chosen = [p.strip() for p in patients.split(",")] if patients else dataset.patients(region)
    by_patient = load_region(dataset, mr=mr, patients=chosen)
    return [s for p in chosen for s in by_patient[p]], f"ct-mr-slices {mr}: {', '.join(chosen)}"


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
                      **pair_options) -> dict:
    """Pooled psi per metric over leave-one-patient-out folds, with training times.

    ``n_test`` patches are split over the patients in proportion to their
    number of slices. Returns ``{"psi": {metric: array}, "train_seconds":
    {variant: [per fold]}, "folds": [patients]}``.
    """
    from .similarity_net import LearnedPatchMetric, TrainSettings, train_similarity_net

    rng = np.random.default_rng(seed)
    patients = sorted(slices_by_patient)
    counts = np.array([len(slices_by_patient[p]) for p in patients], float)
    per_patient = np.floor(counts / counts.sum() * n_test).astype(int)
    per_patient[np.argsort(-counts)[: n_test - per_patient.sum()]] += 1
    psi = {name: [] for name in list(variants) + list(baselines)}
    train_seconds = {name: [] for name in variants}
    settings = getattr(TrainSettings, setting)() if isinstance(setting, str) else setting
    for fold, (held_out, n) in enumerate(tqdm(list(zip(patients, per_patient)), desc="folds", unit="patient")):
        train = [s for p in patients if p != held_out for s in slices_by_patient[p]]
        pairs = pairs_from_slices(train, n_positive=n_pairs, seed=seed + fold, **pair_options)
        tests = test_patches(slices_by_patient[held_out], int(n), rng)
        for name in variants:
            variant, pretraining = VARIANTS[name]
            t0 = time.perf_counter()
            net, _ = train_similarity_net(pairs.ct, pairs.mr, pairs.labels, settings, variant=variant,
                                          pretraining=pretraining, seed=seed + fold)
            train_seconds[name].append(time.perf_counter() - t0)
            psi[name].extend(rank_errors(tests, LearnedPatchMetric(net, precision=precision)))
        for name in baselines:
            psi[name].extend(rank_errors(tests, get_metric(name)))
    return {"psi": {k: np.array(v) for k, v in psi.items()}, "train_seconds": train_seconds, "folds": patients}


def results_table(psi: dict) -> str:
    """Markdown table: mean psi, median psi, fraction psi = 0, per metric."""
    lines = ["| metric | N | mean psi | median psi | psi = 0 |", "|---|---:|---:|---:|---:|"]
    for name, values in psi.items():
        s = summarise(values)
        lines.append(f"| {name} | {s['n']} | {s['mean_psi']:.1f} | {s['median_psi']:.0f} | {s['fraction_psi0']:.1%} |")
    return "\n".join(lines)
