"""``deepsim evaluate``: the papers' evaluations, writing tables and plots."""

from __future__ import annotations

from .common import not_yet


def register_parser(sub):
    p = sub.add_parser("evaluate", help="reproduce an evaluation (rank-error, registration, retrieval)")
    kinds = p.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for name, text in (("registration", "Dice and folding of learned registration per loss"),
                       ("retrieval", "MAP/MRR and NDCG/ACG/weighted mAP of retrieval")):
        k = kinds.add_parser(name, help=text)
        k.set_defaults(func=not_yet(f"the {name} evaluation"))
