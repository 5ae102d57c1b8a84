"""Tables and plots of the retrieval experiments (see :mod:`.evaluation`)."""

from __future__ import annotations

from ..atomic import atomic_output

NAMES = {"osdh": "OSDH", "osdh-r": "OSDH-R (lambda_R=0)", "osdh-c": "OSDH-C (lambda_C=0)", "dsh": "DSH",
         "hashnet": "HashNet-style", "itq": "ITQ (PCA of pixels)", "sh": "SH (PCA of pixels)", "random": "random codes"}
METRICS = (("ndcg", "NDCG@{p}"), ("acg", "ACG@{p}"), ("wmap", "weighted mAP"))


def hashing_table(result: dict) -> str:
    """Markdown: one block of rows per metric, one column per code length."""
    bits = [str(b) for b in result["bits"]]
    lines = [f"Hashing on {result['dataset']} ({result['n_images']} images, {result['folds']} patient folds, "
             f"{result['queries_with_relevant_items']} queries with a relevant item), relevance = shared labels.", ""]
    for key, title in METRICS:
        lines += [f"| {title.format(p=result['p'])} | " + " | ".join(f"{b} bits" for b in bits) + " |",
                  "|---|" + "---:|" * len(bits)]
        for m, per_bits in result["scores"].items():
            lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(f"{per_bits[b][key]:.4f}" for b in bits) + " |")
        lines.append("")
    osdh = result["scores"].get("osdh")
    if osdh:
        for rival in ("dsh", "itq"):
            if rival in result["scores"]:
                wins = [b for b in bits if osdh[b]["ndcg"] > result["scores"][rival][b]["ndcg"]]
                lines.append(f"OSDH NDCG@{result['p']} above {NAMES[rival]} at {len(wins)}/{len(bits)} code lengths"
                             f" ({', '.join(wins) or 'none'}).")
    return "\n".join(lines)


def hashing_plot(result: dict, path) -> None:
    """Curves of each metric against the code length, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = result["bits"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, title) in zip(axes, METRICS):
        for m, per_bits in result["scores"].items():
            ax.plot(bits, [per_bits[str(b)][key] for b in bits], marker="o", label=NAMES.get(m, m),
                    linestyle="--" if m in ("itq", "sh", "random") else "-")
        ax.set_xlabel("bits")
        ax.set_xticks(bits)
        ax.set_title(title.format(p=result["p"]))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Hashing on {result['dataset']}, {result['folds']} patient folds")
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def siamese_table(results: list) -> str:
    """Markdown: one row per data set of :func:`.evaluation.siamese_experiment` results, with the target checks."""
    lines = ["| data | queries | Siamese MAP | supervised MAP | Siamese MRR | supervised MRR | random MAP | "
             "random MRR | Siamese MAP >= supervised - 0.03 | Siamese MRR >= supervised - 0.03 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|"]
    for r in results:
        s, b = r["siamese"], r["supervised"]
        ok = lambda a, c: "yes" if a >= c - 0.03 else "no"  # noqa: E731  (the paper: Siamese no worse than supervised)
        lines.append(f"| {r['dataset']} ({r['folds']} fold{'s' * (r['folds'] > 1)}) | {s['queries']} | "
                     f"{s['map']:.3f} | {b['map']:.3f} | {s['mrr']:.3f} | {b['mrr']:.3f} | {r['random_map']:.3f} | "
                     f"{r['random_mrr']:.3f} | {ok(s['map'], b['map'])} | {ok(s['mrr'], b['mrr'])} |")
    return "\n".join(lines)


__all__ = ["hashing_plot", "hashing_table", "siamese_table"]
