"""``deepsim index`` and ``deepsim query``: the hashed case database.

``--db`` takes a file path (SQLite), ``sqlite:///path``, ``milvus-lite:///path.db``
or ``milvus://host:port/collection``. The encoder comes from ``--model`` (a
model file or a built-in name, see ``retrieval.encoders``); after
``index create`` the database remembers it, so later commands may omit it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from .common import output_path, write_json

DB_HELP = "case database: a file path (SQLite), sqlite:///PATH, milvus-lite:///PATH.db or milvus://HOST:PORT/COLLECTION"
MODEL_HELP = ("model file (JSON or torch checkpoint with a 'format' key) or a built-in encoder: thumbnail-sign, "
              "thumbnail-dense (content-free baselines for tests and demos)")


def register_parser(sub):
    p = sub.add_parser("index", help="create, fill and inspect a case database")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("create", help="create an empty case database for one model's codes")
    a.add_argument("--db", required=True, help=DB_HELP)
    a.add_argument("--model", required=True, help=MODEL_HELP)
    a.set_defaults(func=run_create)

    a = actions.add_parser("add", help="add images or a folder of images (resumable: present sources are skipped)")
    a.add_argument("--db", required=True, help=DB_HELP)
    a.add_argument("images", nargs="*", help="image files to add")
    a.add_argument("--folder", help="add every image of this folder (or those listed in --labels)")
    a.add_argument("--labels", help="CSV with a file-name column and a label column; other columns become metadata")
    a.add_argument("--image-column", default="image",
                   help="CSV column of file names, relative to --folder (default image)")
    a.add_argument("--label-column", default="labels", help="CSV column of labels (default labels)")
    a.add_argument("--sep", default="|", help="separator between labels in one cell (default |)")
    a.add_argument("--none-label", default="No Finding", help="label meaning 'no label' (default 'No Finding')")
    a.add_argument("--model", help="model file; default: the one the database was created with")
    a.add_argument("--batch-size", type=int, default=64, help="cases per transaction (default 64)")
    a.set_defaults(func=run_add)

    a = actions.add_parser("info", help="print a database's model, size and label counts")
    a.add_argument("--db", required=True, help=DB_HELP)
    a.add_argument("--out-json", help="also write the info as JSON")
    a.set_defaults(func=run_info)

    a = actions.add_parser("remove", help="remove cases by source (the path or node name they were added under)")
    a.add_argument("--db", required=True, help=DB_HELP)
    a.add_argument("sources", nargs="+", help="sources to remove")
    a.set_defaults(func=run_remove)

    a = actions.add_parser("export", help="write every case to a portable .npz")
    a.add_argument("--db", required=True, help=DB_HELP)
    a.add_argument("--out", required=True, help="export file to write (.npz)")
    a.set_defaults(func=run_export)

    a = actions.add_parser("import", help="add the cases of an export (creates the database if missing)")
    a.add_argument("--db", required=True, help=DB_HELP)
    a.add_argument("--file", required=True, help="export file (.npz) written by 'deepsim index export'")
    a.set_defaults(func=run_import)

    p = sub.add_parser("query", help="retrieve the cases most similar to an image")
    p.add_argument("--db", required=True, help=DB_HELP)
    p.add_argument("--image", required=True, help="query image file (2D)")
    p.add_argument("--k", type=int, default=10, help="number of cases to return (default 10)")
    p.add_argument("--labels", help="the query's labels, separated by --sep, to show the labels each case shares")
    p.add_argument("--sep", default="|", help="separator of --labels (default |)")
    p.add_argument("--model", help="model file; default: the one the database was created with")
    p.add_argument("--out-json", help="also write the matches as JSON")
    p.set_defaults(func=run_query)


def _open(uri):
    from ..retrieval.databases import open_database

    return open_database(uri)


def _encoder(db, model):
    from ..retrieval.encoders import load_encoder

    model = model or db.model
    if not model:
        raise InputError("--model", f"the database {db.location} names no model file: pass --model")
    return load_encoder(model)


def _model_reference(model: str) -> str:
    # remember a model file by its absolute path, so commands run elsewhere find it
    return str(Path(model).resolve()) if Path(model).exists() else model


def run_create(args):
    from ..retrieval.databases import create_database
    from ..retrieval.encoders import load_encoder

    encoder = load_encoder(args.model)
    model = _model_reference(args.model)
    with create_database(args.db, encoder.model_id, encoder.kind, encoder.size, model=model) as db:
        print(f"created {db.location}: model {encoder.model_id} ({encoder.kind}, {encoder.size})")


def run_add(args):
    from ..retrieval.case_store import AddReport, NewCase
    from ..retrieval.images import folder_cases

    if args.batch_size < 1:
        raise InputError("--batch-size", f"must be at least 1, got {args.batch_size}")
    if not args.images and not args.folder:
        raise InputError("index add", "give image files or --folder")
    if args.labels and not args.folder:
        raise InputError("--labels", "needs --folder (file names in the CSV are relative to it)")
    cases = []
    if args.folder:  # the folder's cases are listed (and the CSV checked) before the database is opened
        cases = folder_cases(args.folder, args.labels, image_column=args.image_column, label_column=args.label_column,
                             sep=args.sep, none_label=args.none_label or None)
    for image in args.images:
        if not Path(image).is_file():
            raise InputError(image, "file not found")
        cases.append(NewCase(str(Path(image).resolve()), image=Path(image)))
    with _open(args.db) as db:
        encoder = _encoder(db, args.model)
        report = AddReport()
        try:
            db.add(cases, encoder, batch_size=args.batch_size, report=report)
        except InputError as exc:  # e.g. an unreadable image: say what the earlier batches committed
            if report.added or report.skipped:
                raise InputError(exc.name, f"{exc.problem} ({report} before it, committed; fix it and run the "
                                           f"same command again to resume)") from None
            raise
        except KeyboardInterrupt:
            print(f"deepsim: cancelled; {report} before the stop (committed). Run the same command again to resume.",
                  file=sys.stderr)
            return 130
        print(f"{db.location}: {report}; {db.count()} cases in total")


def run_info(args):
    if args.out_json:
        output_path(args.out_json, "--out-json")
    with _open(args.db) as db:
        info = db.info()
    for key in ("location", "backend", "model_id", "kind", "size", "model", "created", "cases", "file_bytes"):
        if key in info:
            print(f"{key + ':':10} {info[key]}")
    if info.get("labels"):
        print("labels:    " + ", ".join(f"{k} {v}" for k, v in info["labels"].items()))
    if args.out_json:
        write_json(info, args.out_json)


def run_remove(args):
    with _open(args.db) as db:
        n = db.remove(args.sources)
        print(f"removed {n} of {len(args.sources)} sources; {db.count()} cases left")


def run_export(args):
    out = output_path(args.out, "--out")
    with _open(args.db) as db:
        info = db.export(out)
    print(f"wrote {out}: {info['cases']} cases of model {info['model_id']}")


def run_import(args):
    from ..retrieval.databases import create_database, database_exists
    from ..retrieval.portable import read_export

    info = read_export(args.file)[0]
    db = (_open(args.db) if database_exists(args.db) else
          create_database(args.db, info["model_id"], info["kind"], info["size"], model=info.get("model", "")))
    with db:
        report = db.import_file(args.file, progress=True)
        print(f"{db.location}: {report}; {db.count()} cases in total")


def run_query(args):
    if args.k < 1:
        raise InputError("--k", f"must be at least 1, got {args.k}")
    if args.out_json:
        output_path(args.out_json, "--out-json")
    labels = [s.strip() for s in args.labels.split(args.sep) if s.strip()] if args.labels else None
    with _open(args.db) as db:
        encoder = _encoder(db, args.model)
        matches = db.query_images([args.image], encoder, k=args.k, labels=labels, names=[args.image])[0]
    unit = "bits" if encoder.kind == "binary" else "(Euclidean)"
    print(f"{len(matches)} nearest cases to {args.image} (distance in {unit}):")
    for rank, m in enumerate(matches, 1):
        shared = "" if m.shared_labels is None else f"  shared: {'|'.join(m.shared_labels) or '-'}"
        print(f"{rank:3d}  {m.distance:8.3f}  {m.source}  labels: {'|'.join(m.labels) or '-'}{shared}")
    if args.out_json:
        write_json({"query": str(args.image), "k": args.k, "labels": labels,
                    "matches": [m.__dict__ for m in matches]}, args.out_json)
