"""``deepsim train``: train a model of one kind on real data."""

from __future__ import annotations

from .common import not_yet


def register_parser(sub):
    p = sub.add_parser("train", help="train a model (patch similarity, registration, siamese, hashing)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name, text in (("registration", "DeepSim or baseline-loss registration network"),
                       ("siamese", "Siamese CNN retrieval embeddings"),
                       ("hashing", "order-sensitive deep hashing")):
        k = kinds.add_parser(name, help=text)
        k.set_defaults(func=not_yet(f"training of the {name} model"))
