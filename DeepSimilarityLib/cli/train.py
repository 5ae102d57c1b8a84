"""``deepsim train``: train a model of one kind on real data."""

from __future__ import annotations

import datetime

from ..errors import InputError
from .common import add_resume_option, output_path, resumable_training
from .train_all import add_parser as add_all_parser
from .train_registration import add_parsers as add_registration_parsers


def _data_options(k, default: str, choices):
    k.add_argument("--data", default=default, choices=choices, help=f"a shared data set (default {default})")
    k.add_argument("--images", help="instead of --data: a folder of images listed in --csv")
    k.add_argument("--csv", help="CSV with one row per image: --image-column, --label-column (labels joined by '|')")
    k.add_argument("--image-column", default="image")
    k.add_argument("--label-column", default="labels")
    k.add_argument("--patient-column", help="patient ids for the held-out split (default: each image its own patient)")
    k.add_argument("--size", type=int, default=64, help="images are resized to SIZE x SIZE (default 64)")
    k.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of patients held out to report retrieval quality (0: train on everything)")
    k.add_argument("--depth", type=int, default=10, choices=[10, 18, 34, 50], help="ResNet depth (default 10)")
    k.add_argument("--width", type=int, default=16, help="channels of the first ResNet stage (default 16)")
    k.add_argument("--epochs", type=int, default=20)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    k.add_argument("--out", required=True, help="model file to write (.pt)")
    add_resume_option(k)


def register_parser(sub):
    p = sub.add_parser("train", help="train a model (registration, DeepSim features, siamese, hashing)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    add_registration_parsers(kinds)
    add_all_parser(kinds)
    k = kinds.add_parser("siamese", help="Siamese CNN retrieval embeddings (Chung & Weng 2017)",
                         description="Twin ResNets with shared weights, contrastive loss on pairs built from labels; "
                                     "--supervised trains the classifier baseline instead.")
    _data_options(k, "fundus", ["fundus", "nih-any", "pneumoniamnist"])
    k.add_argument("--embedding-dim", type=int, default=32)
    k.add_argument("--margin", type=float, default=1.0, help="contrastive margin m (default 1)")
    k.add_argument("--supervised", action="store_true", help="train the supervised-classifier baseline")
    k.set_defaults(func=run_train_siamese)
    k = kinds.add_parser("hashing", help="order-sensitive deep hashing (Chen et al. 2018) and baselines",
                         description="CNN + k-bit hash layer; methods osdh, osdh-r, osdh-c, dsh, hashnet.")
    _data_options(k, "nih", ["nih", "vxm"])
    k.add_argument("--bits", type=int, default=64, help="code length, a multiple of 8 (default 64)")
    k.add_argument("--method", default="osdh", choices=["osdh", "osdh-r", "osdh-c", "dsh", "hashnet"])
    k.add_argument("--lambda-r", type=float, default=1.0, help="weight of the ranking loss (default 1)")
    k.add_argument("--lambda-c", type=float, default=1.0, help="weight of the classification loss (default 1)")
    k.add_argument("--margin", type=float, default=0.125, help="ranking margin rho as a fraction of the bits")
    k.set_defaults(func=run_train_hashing)


def _load(args, single_label: bool):
    import numpy as np

    from ..retrieval.data import RetrievalSet, load_csv_set, load_retrieval_set, split_set

    if args.size < 8:
        raise InputError("--size", f"must be >= 8, got {args.size}")
    if not 0 <= args.holdout < 1:
        raise InputError("--holdout", f"must lie in [0, 1), got {args.holdout}")
    if bool(args.images) != bool(args.csv):
        raise InputError("--images", "give --images and --csv together")
    if args.images:
        data = load_csv_set(args.images, args.csv, args.image_column, args.label_column, args.patient_column,
                            size=(args.size, args.size))
        if single_label:  # each label combination is a class (no label is a class too)
            combos, classes = np.unique(data.labels, axis=0, return_inverse=True)
            names = ["+".join(n for n, on in zip(data.label_names, c) if on) or "none" for c in combos]
            data = RetrievalSet("csv", data.images, data.labels, names, data.groups, classes.reshape(-1))
        source = f"{args.images} ({args.csv})"
    else:
        data = load_retrieval_set(args.data, (args.size, args.size))
        source = args.data
    if args.holdout == 0:
        return data, np.arange(len(data.images)), np.zeros(0, int), source
    if data.name == "pneumoniamnist":
        tr, te = split_set(data)
    else:
        from ..datasets import split_indices_by_patient

        tr, te = split_indices_by_patient(data.groups, test_fraction=args.holdout, seed=args.seed)
    return data, tr, te, source


def _progress_bar(total_epochs: int):
    from ..progress import progress_bar

    bar = progress_bar(total=total_epochs, desc="training", unit="epoch")

    def progress(stage, fraction):
        bar.set_postfix_str(stage)
        bar.update(round(fraction * total_epochs) - bar.n)

    return bar, progress


def _finish(net, args, data, tr, te, source, history, scores: dict):
    from ..retrieval.models_io import as_encoder, file_sha256, save_model

    metadata = {"data": source, "train_images": int(len(tr)), "held_out_images": int(len(te)),
                "held_out_scores": scores, "label_names": list(data.label_names), "seed": args.seed,
                "train_seconds": history["seconds"], "settings": history["settings"],
                "date": datetime.date.today().isoformat()}
    path = save_model(net, args.out, metadata)
    print(f"trained in {history['seconds']:.1f} s on {len(tr)} images ({source}); held-out scores {scores or '-'}")
    print(f"wrote {path} (model id {file_sha256(path)[:12]}, {as_encoder(net, '').kind} codes)")


def _held_out_scores(net, images, tr, te, distances, relevance, summarise) -> dict:
    """Retrieval scores of the held-out images ``te`` queried against the training images ``tr``.

    ``distances(query_codes, database_codes)`` ranks the database, ``relevance()`` gives the
    ``(len(te), len(tr))`` relevance matrix, ``summarise(ranked)`` the paper's metrics; ``{}`` without held-out images.
    """
    from ..retrieval import retrieval_metrics as rm
    from ..retrieval.models_io import as_encoder

    if not len(te):
        return {}
    enc = as_encoder(net, "")
    return summarise(rm.ranked_relevance(distances(enc.encode(images[te]), enc.encode(images[tr])), relevance()))


def run_train_siamese(args):
    import torch

    from ..retrieval import retrieval_metrics as rm
    from ..retrieval.siamese import SiameseSettings, train_classifier, train_siamese

    output_path(args.out, "--out")
    torch.set_num_threads(max(1, args.threads))
    data, tr, te, source = _load(args, single_label=True)
    settings = SiameseSettings(epochs=args.epochs, margin=args.margin, seed=args.seed,
                               flip=data.name == "fundus").check()
    bar, progress = _progress_bar(args.epochs)
    arch = dict(depth=args.depth, width=args.width, stem_stride=1 if args.size < 40 else 2)
    with resumable_training(args) as checkpoint:
        if args.supervised:
            net, history = train_classifier(data.images[tr], data.classes[tr], settings, progress, **arch)
        else:
            net, history = train_siamese(data.images[tr], data.classes[tr], settings, progress,
                                         embedding_dim=args.embedding_dim, **arch)
    history["seconds"] += checkpoint.earlier_seconds  # a resumed run times only its own part
    bar.close()
    scores = _held_out_scores(net, data.images, tr, te, rm.euclidean_distances,
                              lambda: rm.same_class(data.classes[te], data.classes[tr]), rm.map_mrr)
    _finish(net, args, data, tr, te, source, history, scores)
    checkpoint.discard()


def run_train_hashing(args):
    import torch

    from ..retrieval import retrieval_metrics as rm
    from ..retrieval.hashing import HashSettings, train_hashing

    output_path(args.out, "--out")
    torch.set_num_threads(max(1, args.threads))
    if args.bits < 8 or args.bits % 8:
        raise InputError("--bits", f"must be a positive multiple of 8, got {args.bits}")
    settings = HashSettings(method=args.method, epochs=args.epochs, lambda_r=args.lambda_r, lambda_c=args.lambda_c,
                            margin=args.margin, seed=args.seed).check()
    data, tr, te, source = _load(args, single_label=False)
    bar, progress = _progress_bar(args.epochs)
    with resumable_training(args) as checkpoint:
        net, history = train_hashing(data.images[tr], data.labels[tr], args.bits, settings, progress,
                                     depth=args.depth, width=args.width, stem_stride=1 if args.size < 40 else 2)
    history["seconds"] += checkpoint.earlier_seconds  # a resumed run times only its own part
    bar.close()
    scores = _held_out_scores(net, data.images, tr, te, rm.hamming_distances,
                              lambda: rm.shared_labels(data.labels[te], data.labels[tr]),
                              lambda ranked: rm.multilabel_scores(ranked, p=min(100, len(tr))))
    _finish(net, args, data, tr, te, source, history, scores)
    checkpoint.discard()
