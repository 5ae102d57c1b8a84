"""Siamese CNN retrieval (Chung & Weng 2017) against the supervised-classifier baseline.

MAP and MRR of Euclidean retrieval on the embeddings (Siamese: contrastive
loss on label-built pairs; baseline: the same ResNet-10 trained as a
classifier, penultimate layer), queries held out by patient (3 folds: every
patient a query once), on the fundus DR grades (64x64 grey), NIH chest X-rays
with 'any finding' as the class (64x64) and PneumoniaMNIST (28x28, its own
test split as queries). One thread. Also a 2D embedding plot (PCA then
t-SNE, or PCA only without scikit-learn) of the first fold's queries.

    python benchmarks/eval_retrieval.py [--quick]
        -> benchmarks/results/siamese_retrieval[_quick].{json,md}, siamese_embedding_<data>[_quick].png
"""

import argparse
from pathlib import Path

import torch

from DeepSimilarityLib.retrieval.benchmark import run_siamese_benchmark

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 fold and a third of the epochs (a few minutes)")
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    run_siamese_benchmark(RESULTS, args.quick, args.folds)


if __name__ == "__main__":
    main()
