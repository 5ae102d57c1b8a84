"""The two retrieval evaluations as functions: ``benchmarks/eval_*.py`` and ``deepsim evaluate retrieval`` call them."""

from __future__ import annotations

from pathlib import Path

import torch

from ..cli.common import write_json, write_text
from .evaluation import DEEP_HASHING, SHALLOW_HASHING, embedding_plot, hashing_experiment, siamese_experiment
from .hashing import HashSettings
from .report import hashing_plot, hashing_table, siamese_table
from .siamese import SiameseSettings

# (data set, epochs, left/right flips): pneumoniamnist has 2698 training images, so fewer epochs.
SIAMESE_PLAN = (("fundus", 30, True), ("nih-any", 20, False), ("pneumoniamnist", 8, False))


def run_siamese_benchmark(out_dir, quick: bool = False, folds: int = 3, datasets=None, log=print) -> dict:
    """Siamese vs supervised MAP/MRR on each set; writes ``siamese_retrieval[_quick].{json,md}`` and embedding PNGs."""
    out_dir = Path(out_dir)
    suffix = "_quick" if quick else ""
    results = []
    for name, epochs, flip in SIAMESE_PLAN:
        if datasets and name not in datasets:
            continue
        settings = SiameseSettings(epochs=max(2, epochs // 3) if quick else epochs, flip=flip)
        result, plot = siamese_experiment(name, 1 if quick else folds, settings, log=log)
        result["settings"] = dict(settings.__dict__)
        result["plot"] = embedding_plot(plot, result["classes"], out_dir / f"siamese_embedding_{name}{suffix}.png",
                                        f"{name}: query embeddings of fold 1, coloured by class")
        results.append(result)
    text = siamese_table(results) + f"\n\n2D plots: {results[0]['plot'] if results else '-'}."
    log(text)
    write_text(text + "\n", out_dir / f"siamese_retrieval{suffix}.md")
    write_json({"results": results, "threads": torch.get_num_threads()}, out_dir / f"siamese_retrieval{suffix}.json")
    log(f"wrote {out_dir}/siamese_retrieval{suffix}.json, .md and siamese_embedding_*{suffix}.png")
    return {"results": results}


def run_hashing_benchmark(out_dir, quick: bool = False, dataset: str = "nih", folds: int = 3, epochs: int = 15,
                          log=print) -> dict:
    """Every hashing method at 16/32/48/64 bits; writes ``hashing_<dataset>[_quick].{json,md,png}``."""
    out_dir = Path(out_dir)
    bits, folds, epochs = ((16, 64), 1, 6) if quick else ((16, 32, 48, 64), folds, epochs)
    result = hashing_experiment(dataset, bits, DEEP_HASHING + SHALLOW_HASHING, folds, HashSettings(epochs=epochs),
                                log=log)
    stem = f"hashing_{dataset}" + ("_quick" if quick else "")
    table = hashing_table(result)
    log(table)
    write_text(table + "\n", out_dir / f"{stem}.md")
    write_json(result, out_dir / f"{stem}.json")
    hashing_plot(result, out_dir / f"{stem}.png")
    log(f"wrote {out_dir / stem}.json, .md and .png")
    return result
