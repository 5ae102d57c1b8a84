"""Training time of the CT/MR similarity network: SDAE pre-training + fine-tuning on 4000 pairs.

Both presets run in this one process on the same 2000 + 2000 pairs from the
registered head slices of ../shared/data (phantom slices when absent), with
all cores of the machine: "paper" (SGD, lr 0.5, batch 5, 10 pre-training
epochs per layer, 5 fine-tuning epochs; the paper reports 30 minutes) and
"modern" (Adam, batch 64). Accuracy is measured on pairs of a held-out patient.

    python benchmarks/bench_training.py  ->  benchmarks/results/training.json
"""

import os
from pathlib import Path

import numpy as np
import torch

from DeepSimilarityLib.cli.common import write_json
from DeepSimilarityLib.ctmr import train_similarity_net
from DeepSimilarityLib.ctmr.experiment import load_region, phantom_slices, select_slices
from DeepSimilarityLib.ctmr.patch_pairs import pairs_from_slices
from DeepSimilarityLib.paths import has_shared_data

RESULTS = Path(__file__).parent / "results"
PAPER_MINUTES = 30.0


def data():
    if not has_shared_data("ct-mr-slices"):
        s = phantom_slices(8)
        return s[:6], s[6:], "phantom slices (no ../shared/data)"
    from DeepSimilarityLib.datasets import CTMRSlices

    by_patient = select_slices(load_region(CTMRSlices(), "head"))
    patients = sorted(p for p in by_patient if by_patient[p])
    train = [s for p in patients[1:] for s in by_patient[p]]
    return train, by_patient[patients[0]], f"head slices, trained on {', '.join(patients[1:])}, tested on {patients[0]}"


def main():
    train, test, source = data()
    pairs = pairs_from_slices(train, 2000, seed=0)
    held_out = pairs_from_slices(test, 500, seed=1)
    rows = {}
    for setting in ("paper", "modern"):
        net, history = train_similarity_net(pairs.ct, pairs.mr, pairs.labels, setting, seed=0)
        with torch.no_grad():
            scores = net.score(torch.from_numpy(held_out.ct), torch.from_numpy(held_out.mr)).numpy()
        rows[setting] = {"seconds": history["seconds"], "train_accuracy": history["train_accuracy"],
                         "held_out_accuracy": float(np.mean((scores > 0) == held_out.labels.astype(bool)))}
    print(f"Training on {len(pairs)} pairs ({source}), {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"{'preset':<10}{'seconds':>10}{'train acc':>12}{'held-out acc':>14}")
    for name, r in rows.items():
        print(f"{name:<10}{r['seconds']:>10.1f}{r['train_accuracy']:>12.3f}{r['held_out_accuracy']:>14.3f}")
    print(f"paper (Cheng et al. 2016, as reported): {PAPER_MINUTES * 60:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    out = {"source": source, "pairs": len(pairs), "threads": torch.get_num_threads(), "presets": rows,
           "paper_reported_seconds": PAPER_MINUTES * 60}
    write_json(out, RESULTS / "training.json")
    print(f"wrote {RESULTS / 'training.json'}")


if __name__ == "__main__":
    main()
