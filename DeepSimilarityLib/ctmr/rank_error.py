"""The rank-error evaluation of Cheng et al. 2016, section 3.2.

For each test CT patch, every MR patch centred in the N x N neighbourhood of
the true match is scored; r_s is the rank (1 = best) of the best score inside
the s x s window around the true match, and psi = r_s - 1. Ties count
against the metric: a position outside the window that scores as high as the
window's best ranks ahead of it, so a flat map gets a large psi, not 0.
Psi(n) is the cumulative sum of the psi values sorted ascending.
"""

from __future__ import annotations

import numpy as np

from ..patch_metrics import PatchMetric
from ..patches import crop, search_region


def rank_error(scores: np.ndarray, window: int = 3) -> int:
    """psi = r_s - 1 for one score map (true match at its centre), 2D or 3D."""
    centre = np.array(scores.shape) // 2
    half = window // 2
    inside = np.zeros(scores.shape, bool)
    inside[tuple(slice(max(c - half, 0), c + half + 1) for c in centre)] = True
    best = scores[inside].max()
    return int(np.count_nonzero(scores[~inside] >= best))


def rank_errors(pairs, metric: PatchMetric, patch_size: int = 17, neighbourhood: int = 81, window: int = 3,
                depth: int = 9, progress=None) -> np.ndarray:
    """psi for every ``(ct, mr, centre)`` in ``pairs``: registered [0, 1] arrays and an array-order centre."""
    psi = []
    for ct, mr, centre in pairs:
        shape = (neighbourhood,) * 2 if ct.ndim == 2 else (depth, neighbourhood, neighbourhood)
        scores = metric.score_map(crop(ct, centre, (patch_size,) * ct.ndim),
                                  search_region(mr, centre, patch_size, shape))
        psi.append(rank_error(scores, window))
        if progress is not None:
            progress()
    return np.array(psi, dtype=np.int64)


def cumulative_curve(psi) -> np.ndarray:
    """Psi(n) for n = 1..N: cumulative sum of psi sorted ascending."""
    return np.cumsum(np.sort(np.asarray(psi)))


def summarise(psi) -> dict:
    """Mean psi, median psi, fraction with psi = 0, and N."""
    psi = np.asarray(psi)
    return {"n": int(psi.size), "mean_psi": float(psi.mean()), "median_psi": float(np.median(psi)),
            "fraction_psi0": float(np.mean(psi == 0))}


def plot_curves(curves: dict, path, title: str = "Cumulative rank error"):
    """One figure with Psi(n) of every metric (``{name: psi array}``), written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, psi in curves.items():
        c = cumulative_curve(psi)
        ax.plot(np.arange(1, c.size + 1), c, label=f"{name} (mean psi {np.mean(psi):.1f})")
    ax.set_xlabel("n (test patches, sorted by psi)")
    ax.set_ylabel("Psi(n) = cumulative psi")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
