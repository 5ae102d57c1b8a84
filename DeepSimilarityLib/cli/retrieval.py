"""``deepsim index`` and ``deepsim query``: the hashed case database."""

from __future__ import annotations

from .common import not_yet


def register_parser(sub):
    p = sub.add_parser("index", help="create, fill and inspect a case database")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("create", "create an empty case database"), ("add", "add images or a folder of images"),
                       ("info", "print a database's size and model")):
        a = actions.add_parser(name, help=text)
        a.set_defaults(func=not_yet("the case database"))
    p = sub.add_parser("query", help="retrieve the cases most similar to an image")
    p.set_defaults(func=not_yet("the case database"))
