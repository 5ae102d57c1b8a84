"""Order-sensitive deep hashing (Chen et al. 2018) against its ablations and baselines on NIH chest X-rays.

OSDH, OSDH-R (lambda_R = 0), OSDH-C (lambda_C = 0), DSH, HashNet-style, ITQ
and spectral hashing (on PCA of the pixels) and random codes, at 16/32/48/64
bits, with NDCG@100, ACG@100 and weighted mAP; queries held out by patient,
every patient a query once over 3 folds; relevance = number of shared
labels ('No Finding' = none). One thread.

    python benchmarks/eval_hashing.py [--quick] [--dataset nih|vxm]
        -> benchmarks/results/hashing_<dataset>[_quick].{json,md,png}
"""

import argparse
from pathlib import Path

import torch

from DeepSimilarityLib.retrieval.benchmark import run_hashing_benchmark

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 fold, 16 and 64 bits, 6 epochs (a few minutes)")
    ap.add_argument("--dataset", default="nih", choices=["nih", "vxm"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    run_hashing_benchmark(RESULTS, args.quick, args.dataset, args.folds, args.epochs)


if __name__ == "__main__":
    main()
