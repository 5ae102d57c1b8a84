"""Tables, JSON and the box plot of the registration comparison (:mod:`.experiment`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..cli.common import write_json, write_text

PAPER_DICE = {"mse": 0.666, "ncc": 0.657, "ncc-sup": 0.668, "nmi": 0.665, "mind": 0.657, "deepsim-ae": 0.671,
              "deepsim-seg": 0.675}


def rows(result: dict) -> list[dict]:
    """One row per method: mean/std Dice, folding %, lambda, ms per pair, the paper's 3D Dice."""
    out = [{"method": "affine only", "dice": result["affine_only"]["dice"], "folding": result["affine_only"]["folding"],
            "lambda": None, "ms": 0.0, "paper": None}]
    for name, r in result["losses"].items():
        out.append({"method": name, "dice": r["dice"], "folding": r["folding"], "lambda": r["lambda"],
                    "ms": 1000 * r["seconds_per_pair"], "paper": PAPER_DICE.get(name)})
    if "bspline_mi" in result:
        r = result["bspline_mi"]
        out.append({"method": "B-spline MI (SimpleITK)", "dice": r["dice"], "folding": r["folding"], "lambda": None,
                    "ms": 1000 * r["seconds_per_pair"], "paper": None})
    return out


def markdown_table(result: dict, paper: bool = True) -> str:
    """The table; ``paper`` adds the paper's 3D brain Dice column (meaningless for other data)."""
    lines = ["| method | mean Dice | std | folding % | lambda | ms / pair |" + (" paper Dice (3D) |" if paper else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if paper else "")]
    for r in rows(result):
        lam = "" if r["lambda"] is None else f"{r['lambda']:g}"
        ref = "" if r["paper"] is None else f"{r['paper']:.3f}"
        lines.append(f"| {r['method']} | {np.mean(r['dice']):.3f} | {np.std(r['dice']):.3f} | "
                     f"{100 * np.mean(r['folding']):.3f} | {lam} | {r['ms']:.1f} |" + (f" {ref} |" if paper else ""))
    return "\n".join(lines)


def box_plot(result: dict, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(result)
    fig, ax = plt.subplots(figsize=(1.1 * len(data) + 2, 4))
    ax.boxplot([r["dice"] for r in data], showmeans=True)
    ax.set_xticks(range(1, len(data) + 1), [r["method"].replace(" (SimpleITK)", "") for r in data], rotation=30,
                  ha="right")
    ax.set_ylabel("mean Dice over labels, per pair")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def instance_protocol(setup: dict, calibration: str) -> str:
    """The sentence that states an instance-optimisation run's grid, levels, steps and lambda rule, from its
    ``setup``; ``calibration`` names the pair lambda was chosen on (e.g. "the first pair")."""
    s = setup
    return (f"Displacement optimised on the {'x'.join(str(n) for n in s['network_grid'])} grid ({s['factor']}x "
            f"block-averaged, {s['levels']} coarse-to-fine level(s) of {s['steps']} Adam steps, lr {s['lr']}); "
            f"lambda per loss from {len(s['lambda_factors'])} values, the smallest with folding < 1% on "
            f"{calibration} {s['calibration_pair']} (no labels read).")


def write_report(result: dict, out_dir, stem: str, header: str, title: str | None = None, paper: bool = True,
                 footer: str = "") -> str:
    """Writes ``stem.json``, ``stem.md`` and ``stem.png`` (box plot titled ``title``) into ``out_dir``.

    ``paper``: the table's column of the paper's 3D brain Dice; ``footer``: markdown after the table.
    Returns the markdown.
    """
    out_dir = Path(out_dir)
    table = markdown_table(result, paper)
    text = header + "\n\n" + table + "\n" + footer
    write_text(text, out_dir / f"{stem}.md")
    plain = {k: v for k, v in result.items() if k not in ("nets", "features")}
    write_json(plain, out_dir / f"{stem}.json")
    title = title or (f"2D brain MR slices, {len(result['affine_only']['dice'])} held-out pairs: mean Dice per pair "
                      "(triangle: mean)")
    box_plot(result, out_dir / f"{stem}.png", title)
    return text


def run_and_report(losses, quick: bool = False, epochs: int = 10, out_dir="benchmarks/results",
                   save_weights=None, velocity: bool = False, lambda_factors=None, stem: str | None = None,
                   regularise: str = "displacement", log=print) -> dict:
    """The whole 2D comparison (:func:`.experiment.run_comparison`) and its report files.

    ``quick``: 2 epochs, one lambda, 3 feature epochs, 8 B-spline pairs (a smoke run of a few minutes).
    ``velocity``: stationary velocity fields (scaling and squaring); the files get ``_velocity`` in their name.
    ``regularise``: ``"velocity"`` puts the diffusion term on that field (the files get ``_velreg`` instead).
    ``lambda_factors``: the grid on each loss's :data:`~.compare.LAMBDA_CENTRE` (default
    :data:`~.compare.LAMBDA_FACTORS`); ``stem``: the files' name instead of the one made from the options.
    """
    import time

    from .compare import LAMBDA_FACTORS
    from .experiment import run_comparison, save_trained

    epochs = 2 if quick else epochs
    t0 = time.perf_counter()
    factors = (1.0,) if quick else tuple(lambda_factors or LAMBDA_FACTORS)
    result = run_comparison(losses, epochs=epochs, lambda_factors=factors,
                            feature_epochs=3 if quick else 20, bspline_pairs=8 if quick else None,
                            velocity=velocity, regularise=regularise, log=log)
    minutes = (time.perf_counter() - t0) / 60
    s = result["setup"]
    s["minutes_total"] = minutes
    kind = "_velreg" if regularise == "velocity" else "_velocity" if velocity else ""
    stem = stem or "registration_2d" + kind + ("_quick" if quick else "")
    bs = result.get("bspline_mi", {}).get("pairs")
    header = (f"Learned 2D registration of held-out coronal brain MR slices (OASIS 0001 <-> 0002, {s['test_pairs']} "
              f"directed pairs)\n\nNetworks on the {s['network_grid'][0]}x{s['network_grid'][1]} grid "
              f"(2x downsampled), "
              f"Dice scored on the full {s['grid'][0]}x{s['grid'][1]} grid over the seg35 labels present; "
              f"{s['train_pairs']} training pairs (vxm <-> OASIS), {epochs} epochs, lambda from "
              f"{len(s['lambda_factors'])} values per loss by validation Dice ({s['val_pairs']} pairs); "
              + ("the nets output a stationary velocity field, integrated by scaling and squaring; "
                 if velocity else "")
              + ("the regulariser acts on the velocity field, not the displacement; " if regularise == "velocity"
                 else "")
              + f"feature nets trained on the vxm scan only. One CPU thread, {minutes:.1f} min in all. "
              + (f"B-spline MI on the first {bs} test pairs. " if bs and bs < s["test_pairs"] else "")
              + "Paper column: the paper's 3D brain MRI Dice, for ordering only.")
    log(write_report(result, out_dir, stem, header))
    log(f"wrote {Path(out_dir) / stem}.json, .md and .png")
    if save_weights:
        for path in save_trained(result, save_weights):
            log(f"wrote {path}")
    return result
