"""The retrieval experiments behind ``benchmarks/eval_*.py`` and ``deepsim evaluate retrieval``.

Queries are held out by patient; over ``n_folds`` folds every patient is a
query once, the database is the training part of its fold, and each metric
is the mean over all queries of all folds that have a relevant item in
their database (per-query values are pooled, then averaged).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import retrieval_metrics as rm
from .data import load_retrieval_set, patient_folds
from .encoder import pack_bits
from .hashing import HashSettings, hash_codes, train_hashing
from .models_io import as_encoder
from .shallow_hashing import fit_shallow
from .siamese import SiameseSettings, train_classifier, train_siamese

DEEP_HASHING = ("osdh", "osdh-r", "osdh-c", "dsh", "hashnet")
SHALLOW_HASHING = ("itq", "sh")


def _pool(values: list) -> float:
    v = np.concatenate(values) if values else np.zeros(0)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def siamese_experiment(name: str, n_folds: int = 3, settings: SiameseSettings = SiameseSettings(),
                       arch: dict | None = None, seed: int = 0, log=print) -> dict:
    """Siamese vs supervised-classifier embeddings on a single-label set: pooled MAP and MRR.

    Also returns the query embeddings of the first fold (for the 2D plot).
    """
    data = load_retrieval_set(name)
    arch = dict(arch or {})
    arch.setdefault("stem_stride", 1 if data.images.shape[1] < 40 else 2)
    out = {m: {"ap": [], "rr": [], "seconds": 0.0} for m in ("siamese", "supervised")}
    plot = {}
    folds = patient_folds(data, n_folds, seed)
    for k, (tr, te) in enumerate(folds):
        for method, train in (("siamese", train_siamese), ("supervised", train_classifier)):
            net, hist = train(data.images[tr], data.classes[tr], settings, **arch)
            enc = as_encoder(net, method)
            q, db = enc.encode(data.images[te]), enc.encode(data.images[tr])
            ranked = rm.ranked_relevance(rm.euclidean_distances(q, db),
                                         rm.same_class(data.classes[te], data.classes[tr]))
            out[method]["ap"].append(rm.average_precisions(ranked))
            out[method]["rr"].append(rm.reciprocal_ranks(ranked))
            out[method]["seconds"] += hist["seconds"]
            if k == 0:
                plot[method] = (q, data.classes[te])
            log(f"{name} fold {k + 1}/{len(folds)} {method}: MAP {np.nanmean(out[method]['ap'][-1]):.3f} "
                f"MRR {np.nanmean(out[method]['rr'][-1]):.3f} ({hist['seconds']:.0f} s)")
    result = {"dataset": name, "folds": len(folds), "n_images": int(len(data.images)),
              "class_counts": np.bincount(data.classes).tolist(), "classes": data.label_names}
    for method, r in out.items():
        result[method] = {"map": _pool(r["ap"]), "mrr": _pool(r["rr"]), "train_seconds": r["seconds"],
                          "queries": int(sum((~np.isnan(a)).sum() for a in r["ap"]))}
    # Chance level: a random ranking's expected AP is about the share of relevant items; its MRR is high
    # (about 0.69 when half the database is relevant), so MRR separates the models less than MAP does.
    rng = np.random.default_rng(seed)
    chance = {"ap": [], "rr": []}
    for tr, te in folds:
        rel = rm.same_class(data.classes[te], data.classes[tr])
        ranked = rm.ranked_relevance(rng.random(rel.shape), rel)
        chance["ap"].append(rm.average_precisions(ranked))
        chance["rr"].append(rm.reciprocal_ranks(ranked))
    result["random_map"], result["random_mrr"] = _pool(chance["ap"]), _pool(chance["rr"])
    return result, plot


def embedding_plot(plot: dict, class_names, path, title: str) -> str:
    """Scatter of 2D projections (PCA to 50, then t-SNE when scikit-learn is present) per method; returns the method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_output
    from .shallow_hashing import PCA

    try:
        from sklearn.manifold import TSNE
    except ImportError:
        TSNE = None
    how = "PCA then t-SNE" if TSNE is not None else "PCA only (scikit-learn not installed)"
    fig, axes = plt.subplots(1, len(plot), figsize=(5 * len(plot), 4.5))
    for ax, (method, (emb, classes)) in zip(np.atleast_1d(axes), plot.items()):
        k = min(50, *emb.shape)
        xy = PCA.fit(emb, k).transform(emb)
        if TSNE is not None and len(emb) > 10:
            xy = TSNE(2, perplexity=min(30.0, (len(emb) - 1) / 3), init="pca", random_state=0).fit_transform(xy)
        for c in np.unique(classes):
            sel = classes == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=10, label=str(class_names[c]))
        ax.set_title(f"{method} ({how.split(' (')[0]})")
        ax.legend(fontsize=7, markerscale=1.5)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return how


def hashing_experiment(name: str = "nih", bits=(16, 32, 48, 64), methods=DEEP_HASHING + SHALLOW_HASHING,
                       n_folds: int = 3, settings: HashSettings = HashSettings(), arch: dict | None = None,
                       p: int = 100, seed: int = 0, log=print) -> dict:
    """NDCG@p, ACG@p and weighted mAP of every method and code length on a multi-label set."""
    data = load_retrieval_set(name)
    arch = dict(arch or {})
    folds = patient_folds(data, n_folds, seed)
    per = {(mth, k): {"ndcg": [], "acg": [], "wmap": [], "seconds": 0.0} for mth in methods + ("random",) for k in bits}
    flat = data.images.reshape(len(data.images), -1)
    rng = np.random.default_rng(seed)
    for f, (tr, te) in enumerate(folds):
        rel = rm.shared_labels(data.labels[te], data.labels[tr])
        used = (rel > 0).any(1)
        for k in bits:
            for method in methods + ("random",):
                start = time.perf_counter()
                if method in SHALLOW_HASHING:
                    model = fit_shallow(method, flat[tr], k, seed=seed)
                    cq, cdb = model.encode(flat[te]), model.encode(flat[tr])
                elif method == "random":
                    cq, cdb = rng.standard_normal((len(te), k)), rng.standard_normal((len(tr), k))
                else:
                    s = HashSettings(**{**settings.__dict__, "method": method})
                    net, _ = train_hashing(data.images[tr], data.labels[tr], k, s, **arch)
                    cq, cdb = hash_codes(net, data.images[te]), hash_codes(net, data.images[tr])
                ranked = rm.ranked_relevance(rm.hamming_distances(pack_bits(cq), pack_bits(cdb)), rel)[used]
                r = per[(method, k)]
                r["ndcg"].append(rm.ndcg_at(ranked, p))
                r["acg"].append(rm.acg_at(ranked, p))
                r["wmap"].append(rm.weighted_aps(ranked))
                r["seconds"] += time.perf_counter() - start
                log(f"{name} fold {f + 1}/{len(folds)} {k} bits {method}: NDCG@{p} {np.nanmean(r['ndcg'][-1]):.4f} "
                    f"({time.perf_counter() - start:.0f} s)")
    scores = {m: {str(k): {key: _pool(per[(m, k)][key]) for key in ("ndcg", "acg", "wmap")} |
                  {"seconds": per[(m, k)]["seconds"]} for k in bits} for m in methods + ("random",)}
    queries = sum(int((rm.shared_labels(data.labels[te], data.labels[tr]) > 0).any(1).sum()) for tr, te in folds)
    return {"dataset": name, "folds": len(folds), "n_images": int(len(data.images)), "p": p, "bits": list(bits),
            "queries_with_relevant_items": queries, "labels": data.label_names, "scores": scores,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
            "arch": arch, "threads": torch.get_num_threads()}
