"""Paired comparison of two losses' Dice on the same test pairs, pooled over runs that differ only by seed.

Why: with six test pairs, 0.01 of mean Dice is about what another seed moves one loss, and two means read
side by side cannot tell a real gap from that. Pairing removes the spread between pairs (some pairs are
easier for every loss): each (run, pair) gives one difference, each pair's differences are averaged over the
runs, and an exact Wilcoxon signed-rank test asks whether those per-pair differences are centred on zero.
The pairs, not the (run, pair) observations, are the units of the test: the runs of one pair share its two
brains and are not independent. With n pairs the exact two-sided p cannot fall below 2 / 2**n (0.031 for
six): six pairs can show a difference only when it has the same sign on (nearly) every pair.

Results are in the layout of :mod:`.report_net3d` (``setup.pairs``, ``setup.seed``, ``losses[name].dice``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wilcoxon

from ..errors import InputError
from .report_net3d import TIMING, check_same_setup

# Setup entries that may differ between runs of one protocol at different seeds, besides the timings.
# "feature_training" is prose whose wording changed between versions; what it describes (hub subject, variant
# switches such as feature_propagated_labels) is in setup entries of its own, which must agree.
PER_RUN = ("seed", "feature_nets", "feature_training") + TIMING


def check_runs(runs: dict) -> None:
    """InputError unless ``runs`` ({name: result}) are one protocol at distinct seeds, on the same test pairs."""
    if not runs:
        raise InputError("runs", "no run to compare")
    first_name, first = next(iter(runs.items()))
    for name, result in runs.items():
        try:
            check_same_setup([first, result], ignore=PER_RUN)
        except InputError as e:  # name the runs, not their indices
            raise InputError(name, e.problem.replace("the first run", first_name)) from None
    seen = {}
    for name, result in runs.items():
        seed = result["setup"].get("seed", 0)
        if seed in seen:
            raise InputError(name, f"seed {seed} again (also in {seen[seed]}): the runs must differ by seed")
        seen[seed] = name


def dice_per_pair(result: dict, loss: str, run: str) -> dict:
    """``{pair: mean Dice}`` of ``loss`` in ``result`` (named ``run`` in errors)."""
    if loss not in result["losses"]:
        raise InputError(run, f"no {loss!r} loss (it has {sorted(result['losses'])})")
    return dict(zip(result["setup"]["pairs"], result["losses"][loss]["dice"], strict=True))


def paired_comparison(runs: dict, loss: str, baseline: str) -> dict:
    """``loss`` against ``baseline`` over every (run, pair) of ``runs`` ({name: result}, see :func:`check_runs`).

    Returns the seeds, the per-pair means over runs of both losses and of their difference (``loss`` minus
    ``baseline``), the overall means, how many pairs and (run, pair) observations have ``loss`` at least
    ``baseline``, and the exact two-sided Wilcoxon signed-rank p over the per-pair mean differences with its
    floor ``2 / 2**n`` (1.0 when every difference is zero).
    """
    check_runs(runs)
    pairs = list(next(iter(runs.values()))["setup"]["pairs"])
    a = np.array([[dice_per_pair(r, loss, name)[p] for p in pairs] for name, r in runs.items()])
    b = np.array([[dice_per_pair(r, baseline, name)[p] for p in pairs] for name, r in runs.items()])
    diff = (a - b).mean(axis=0)
    p_value = 1.0 if not np.any(diff) else float(wilcoxon(diff, alternative="two-sided", method="exact").pvalue)
    return {"loss": loss, "baseline": baseline, "runs": list(runs),
            "seeds": [r["setup"].get("seed", 0) for r in runs.values()], "pairs": pairs,
            "per_pair": [{"pair": p, "loss": float(a[:, i].mean()), "baseline": float(b[:, i].mean()),
                          "difference": float(diff[i])} for i, p in enumerate(pairs)],
            "run_means": {name: {"loss": float(a[j].mean()), "baseline": float(b[j].mean())}
                          for j, name in enumerate(runs)},
            "mean_loss": float(a.mean()), "mean_baseline": float(b.mean()), "mean_difference": float(diff.mean()),
            "pairs_at_least": int((diff >= 0).sum()), "observations_at_least": int((a >= b).sum()),
            "observations": int(a.size), "wilcoxon_p": p_value, "p_floor": 2.0 / 2 ** len(pairs)}
