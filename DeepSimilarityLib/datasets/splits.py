"""Patient-level train/test splits.

Slices, eyes or X-rays of one patient are strongly correlated, so a split
that puts some of a patient's images in training and others in testing
leaks the patient into the test score. Every split here is therefore by
patient, never by slice or image.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def _unique_sorted(ids) -> list:
    # Sorting by the string form gives one order whatever the input order and
    # works for mixed int/str ids, which makes the split deterministic.
    return sorted(set(ids), key=lambda p: (str(type(p)), str(p)))


def split_by_patient(patient_ids, test_fraction: float | None = None, n_test: int | None = None,
                     seed: int = 0) -> tuple[list, list]:
    """Split distinct patients into ``(train_ids, test_ids)``, each sorted.

    Args:
        patient_ids: patient ids, possibly repeated (one per image is fine).
        test_fraction: fraction of patients to test on (default 0.2), rounded
            and kept between 1 and ``n - 1`` patients.
        n_test: exact number of test patients (instead of ``test_fraction``).
        seed: the same ids and seed always give the same split, whatever
            order the ids come in.
    """
    patients = _unique_sorted(patient_ids)
    n = len(patients)
    if n < 2:
        raise InputError("patient_ids", f"need at least 2 distinct patients to split, got {n}")
    if test_fraction is not None and n_test is not None:
        raise InputError("n_test", "give test_fraction or n_test, not both")
    if n_test is None:
        fraction = 0.2 if test_fraction is None else float(test_fraction)
        if not 0.0 < fraction < 1.0:
            raise InputError("test_fraction", f"must be in (0, 1), got {fraction}")
        n_test = min(max(int(round(fraction * n)), 1), n - 1)
    if not 1 <= int(n_test) <= n - 1:
        raise InputError("n_test", f"must be between 1 and {n - 1} for {n} patients, got {n_test}")
    order = np.random.default_rng(seed).permutation(n)
    test = {patients[i] for i in order[: int(n_test)]}
    return [p for p in patients if p not in test], [p for p in patients if p in test]


def split_indices_by_patient(sample_patients, test_fraction: float | None = None, n_test: int | None = None,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices ``(train_idx, test_idx)`` for a per-sample list of patient ids.

    ``n_test``/``test_fraction`` count patients, not samples.
    """
    sample_patients = list(sample_patients)
    _, test_ids = split_by_patient(sample_patients, test_fraction, n_test, seed)
    test = set(test_ids)
    is_test = np.array([p in test for p in sample_patients], dtype=bool)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def check_patient_split(train_ids, test_ids) -> None:
    """Raise InputError when any patient is in both splits (ids may repeat)."""
    shared = set(train_ids) & set(test_ids)
    if shared:
        raise InputError("split", f"{len(shared)} patient(s) in both train and test: {sorted(map(str, shared))[:5]}")
