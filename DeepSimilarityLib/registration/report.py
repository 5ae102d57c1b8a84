"""Tables, JSON and the box plot of the registration comparison (:mod:`.experiment`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..cli.common import write_json

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


def markdown_table(result: dict) -> str:
    lines = ["| method | mean Dice | std | folding % | lambda | ms / pair | paper Dice (3D) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows(result):
        lam = "" if r["lambda"] is None else f"{r['lambda']:g}"
        paper = "" if r["paper"] is None else f"{r['paper']:.3f}"
        lines.append(f"| {r['method']} | {np.mean(r['dice']):.3f} | {np.std(r['dice']):.3f} | "
                     f"{100 * np.mean(r['folding']):.3f} | {lam} | {r['ms']:.1f} | {paper} |")
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


def write_report(result: dict, out_dir, stem: str, header: str) -> str:
    """Writes ``stem.json``, ``stem.md`` and ``stem.png`` into ``out_dir``; returns the markdown."""
    out_dir = Path(out_dir)
    table = markdown_table(result)
    text = header + "\n\n" + table + "\n"
    with atomic_output(out_dir / f"{stem}.md") as tmp:
        Path(tmp).write_text(text)
    plain = {k: v for k, v in result.items() if k not in ("nets", "features")}
    write_json(plain, out_dir / f"{stem}.json")
    box_plot(result, out_dir / f"{stem}.png", header.splitlines()[0][:90])
    return text
