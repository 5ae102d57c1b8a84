"""``deepsim demo``: the main job on the embedded head phantom, with the shipped weights.

Renders a CT and a misaligned MR of the digital head phantom, registers the MR
to the CT by mutual information, then computes the 81x81 similarity heat map
of a CT patch on the skull edge over the registered MR with every metric
(the learned one from ``weights/ctmr_similarity.pt``), registers a smoothly
deformed copy of the MR back with the shipped DeepSim registration network,
and, when the shared NIH chest X-rays are present, retrieves the cases nearest
to one X-ray from a case database built with the shipped hashing network.
Writes images, a figure and a JSON summary.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..progress import progress_bar
from .common import write_json


def register_parser(sub):
    p = sub.add_parser("demo", help="run the main job on the embedded head phantom and write the results")
    p.add_argument("--out", default="demo_output", help="output folder (created; default demo_output)")
    p.add_argument("--seed", type=int, default=0, help="phantom noise seed (default 0)")
    p.set_defaults(func=run_demo)


def skull_edge_point(labels: np.ndarray, skull: int, inside: list) -> tuple:
    """A deterministic skull-edge voxel (array order): inner skull surface, front left of the head."""
    edge = (labels == skull) & ndimage.binary_dilation(np.isin(labels, inside), iterations=2)
    ys, xs = np.nonzero(edge)
    if ys.size == 0:
        raise InputError("labels", "no skull edge found")
    cy, cx = np.mean(np.nonzero(labels > 0), axis=1)
    # Front-left in LPS: small y (anterior) and large x (patient's left) -> 45 degrees.
    k = int(np.argmax((xs - cx) - (ys - cy)))
    return int(ys[k]), int(xs[k])


def save_figure(path: Path, ct, mr, maps: dict, centre, best: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 2 + len(maps)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4))
    axes[0].imshow(ct, cmap="gray")
    axes[0].plot(centre[1], centre[0], "r+", ms=12, mew=2)
    axes[0].set_title("CT + patch centre")
    axes[1].imshow(mr, cmap="gray")
    axes[1].set_title("MR registered to CT")
    for ax, (name, m) in zip(axes[2:], maps.items()):
        ax.imshow(m, cmap="inferno")
        by, bx = best[name]
        ax.plot(bx, by, "c+", ms=10, mew=2)
        ax.plot(m.shape[1] // 2, m.shape[0] // 2, "wo", ms=5, mfc="none")
        ax.set_title(f"{name} heat map")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def smooth_deformation(shape, amplitude: float = 3.0):
    """A smooth, invertible test deformation ``(dy, dx)`` in voxels: one sine period per half field."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return amplitude * np.sin(2 * np.pi * xx / (shape[1] / 2)), amplitude * np.cos(2 * np.pi * yy / (shape[0] / 1.6))


def demo_deformable(phantom, out: Path) -> dict:
    """Deform the phantom MR, register it back with the shipped network, score by Dice of the labels."""
    import dataclasses

    from ..image_io import resample_to, write_image
    from ..paths import shipped_weights
    from ..registration.apply import register_deformable, to_sitk_transform
    from ..registration.evaluate import dice_scores

    mr, labels = phantom.mr, phantom.labels
    dy, dx = smooth_deformation(mr.array.shape)
    grid = np.mgrid[0:mr.array.shape[0], 0:mr.array.shape[1]].astype(np.float64)
    coords = [grid[0] + dy, grid[1] + dx]
    moving = dataclasses.replace(mr, array=ndimage.map_coordinates(mr.array, coords, order=1, mode="nearest"))
    moving_labels = dataclasses.replace(labels, array=ndimage.map_coordinates(labels.array, coords, order=0,
                                                                              mode="nearest"))
    result = register_deformable(mr, moving, shipped_weights("registration_deepsim_seg_2d.pt"), affine=None)
    warped_labels = resample_to(moving_labels, labels, to_sitk_transform(result.displacement), "nearest")

    def mean_dice(a):
        return float(np.mean(list(dice_scores(a.astype(np.int64), labels.array.astype(np.int64)).values())))

    write_image(moving, out / "mr_deformed.nii.gz")
    write_image(result.warped, out / "mr_deformed_registered.nii.gz")
    return {"network": "weights/registration_deepsim_seg_2d.pt", "deformation_amplitude_voxels": 3.0,
            "mean_dice_before": mean_dice(moving_labels.array), "mean_dice_after": mean_dice(warped_labels.array),
            "folding_fraction": float(result.folding), "seconds": float(result.seconds["total"])}


def demo_retrieval(out: Path) -> dict:
    """Index the shared NIH X-rays but one with the shipped hashing net and query with that one."""
    from ..datasets._common import dataset_folder
    from ..paths import shipped_weights
    from ..retrieval.databases import create_database
    from ..retrieval.encoders import load_encoder

    try:
        folder = dataset_folder("chest-xray/nih1000")
    except InputError as error:
        return {"skipped": str(error)}
    lines = (folder / "labels.csv").read_text().splitlines()
    # The last X-ray with a finding is the query, kept out of the database.
    q = max(i for i, line in enumerate(lines[1:], 1) if line.split(",")[1] != "No Finding")
    query_line = lines[q]
    (out / "cases.csv").write_text("\n".join(lines[:q] + lines[q + 1:]) + "\n")
    query_image, query_labels = query_line.split(",")[:2]
    encoder = load_encoder(shipped_weights("osdh_nih_64bit.pt"))
    db_path = out / "cases.db"
    db_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with create_database(db_path, encoder.model_id, encoder.kind, encoder.size) as db:
        report = db.add_folder(folder / "images", encoder, out / "cases.csv",
                               {"image_column": "image", "label_column": "finding_labels"})
        labels = [] if query_labels == "No Finding" else query_labels.split("|")
        matches = db.query_images([folder / "images" / query_image], encoder, k=5, labels=labels)[0]
    return {"network": "weights/osdh_nih_64bit.pt", "database": "cases.db", "cases": len(report.added),
            "query": query_image, "query_labels": labels, "seconds": time.perf_counter() - t0,
            "top5": [{"case": Path(m.source).name, "hamming": m.distance, "labels": m.labels} for m in matches]}


def run_demo(args):
    from ..affine_registration import register_affine
    from ..heatmap import similarity_heatmap
    from ..image_io import resample_to, write_image
    from ..intensity_metrics import mutual_information
    from ..patch_metrics import get_metric
    from ..phantom import LABELS, make_head_phantom

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = ["nmi", "lcc", "mind", "learned"]
    steps = progress_bar(total=5 + len(metrics), desc="demo", unit="step")
    t0 = time.perf_counter()
    phantom = make_head_phantom((256, 256), seed=args.seed, misalign=(6.0, (5.0, -4.0)))
    steps.update()
    reg = register_affine(phantom.ct, phantom.mr, kind="affine")
    mr_on_ct = resample_to(phantom.mr, phantom.ct).array
    mi_before = float(mutual_information(phantom.ct.array.ravel(), mr_on_ct.ravel(), 32))
    mi_after = float(mutual_information(phantom.ct.array.ravel(), reg.warped.array.ravel(), 32))
    steps.update()
    centre = skull_edge_point(phantom.labels.array, LABELS["skull"], [LABELS["csf"], LABELS["grey_matter"]])
    summary = {"phantom": {"shape": [256, 256], "seed": args.seed, "misalign": "6 deg, (5, -4) mm"},
               "registration": {"mutual_information_before": mi_before, "mutual_information_after": mi_after},
               "patch_centre_index_xy": [centre[1], centre[0]], "heatmaps": {}}
    maps, best = {}, {}
    for name in metrics:
        # float32: "auto" picks the learned net's arithmetic by timing, and a demo should print the same every run
        metric = get_metric(name, precision="float32") if name == "learned" else name
        result = similarity_heatmap(phantom.ct, reg.warped, index=centre[::-1], metric=metric)
        write_image(result.scores, out / f"heatmap_{name}.nii.gz")
        maps[name] = result.scores.array
        best[name] = tuple(b - c + 40 for b, c in zip(result.best_index, centre))
        shift = float(np.hypot(*(np.array(result.best_index) - centre)))
        summary["heatmaps"][name] = {"best_match_offset_voxels": shift, "file": f"heatmap_{name}.nii.gz"}
        steps.update()
    summary["heatmaps"]["learned"].update(weights="weights/ctmr_similarity.pt", precision="float32")
    summary["deformable_registration"] = demo_deformable(phantom, out)
    steps.update()
    summary["retrieval"] = demo_retrieval(out)
    steps.update()
    write_image(phantom.ct, out / "ct.nii.gz")
    write_image(phantom.mr, out / "mr.nii.gz")
    write_image(reg.warped, out / "mr_registered.nii.gz")
    write_image(phantom.labels, out / "labels.nii.gz")
    save_figure(out / "demo.png", phantom.ct.array, reg.warped.array, maps, centre, best)
    steps.update()
    steps.close()
    summary["seconds"] = time.perf_counter() - t0
    write_json(summary, out / "summary.json")
    print(f"registration: mutual information {mi_before:.3f} -> {mi_after:.3f}")
    for name, info in summary["heatmaps"].items():
        print(f"{name:>7} heat map: best match {info['best_match_offset_voxels']:.1f} voxels from the CT point")
    d = summary["deformable_registration"]
    print(f"deformable registration (shipped DeepSim net): mean Dice {d['mean_dice_before']:.3f} -> "
          f"{d['mean_dice_after']:.3f}, folding {100 * d['folding_fraction']:.2f}%")
    r = summary["retrieval"]
    if "skipped" in r:
        print(f"retrieval skipped: {r['skipped']}")
    else:
        print(f"retrieval (shipped 64-bit hashing net, {r['cases']} NIH X-rays): query {r['query']} "
              f"{'|'.join(r['query_labels']) or 'No Finding'}")
        for k, m in enumerate(r["top5"], 1):
            print(f"  {k}. {m['case']}  Hamming {m['hamming']:.0f}  {'|'.join(m['labels']) or 'No Finding'}")
    print(f"outputs written to {out.resolve()}/ (demo.png, summary.json, heatmap_*.nii.gz, ct/mr/labels .nii.gz, "
          "mr_deformed*.nii.gz, cases.db)")
