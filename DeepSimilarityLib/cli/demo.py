"""``deepsim demo``: the main job on the embedded head phantom, no data needed.

Renders a CT and a misaligned MR of the digital head phantom, registers the MR
to the CT by mutual information, then computes the 81x81 similarity heat map
of a CT patch on the skull edge over the registered MR with every available
metric, and writes images, a figure and a JSON summary.
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


def run_demo(args):
    from ..affine_registration import register_affine
    from ..heatmap import similarity_heatmap
    from ..image_io import resample_to, write_image
    from ..intensity_metrics import mutual_information
    from ..phantom import LABELS, make_head_phantom

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The learned metric is left out: the shipped network learned real CT/MR slices and does not
    # transfer to the phantom's simpler contrasts (best match 30+ voxels off; see README).
    metrics = ["nmi", "lcc", "mind"]
    steps = progress_bar(total=3 + len(metrics), desc="demo", unit="step")
    t0 = time.perf_counter()
    phantom = make_head_phantom((256, 256), seed=args.seed, misalign=(6.0, (5.0, -4.0)))
    steps.update()
    reg = register_affine(phantom.ct, phantom.mr, kind="affine")
    mi_before = float(mutual_information(phantom.ct.array.ravel(), resample_to(phantom.mr, phantom.ct).array.ravel(), 32))
    mi_after = float(mutual_information(phantom.ct.array.ravel(), reg.warped.array.ravel(), 32))
    steps.update()
    centre = skull_edge_point(phantom.labels.array, LABELS["skull"], [LABELS["csf"], LABELS["grey_matter"]])
    summary = {"phantom": {"shape": [256, 256], "seed": args.seed, "misalign": "6 deg, (5, -4) mm"},
               "registration": {"mutual_information_before": mi_before, "mutual_information_after": mi_after},
               "patch_centre_index_xy": [centre[1], centre[0]], "heatmaps": {}}
    maps, best = {}, {}
    for name in metrics:
        result = similarity_heatmap(phantom.ct, reg.warped, index=centre[::-1], metric=name)
        write_image(result.scores, out / f"heatmap_{name}.nii.gz")
        maps[name] = result.scores.array
        best[name] = tuple(b - c + 40 for b, c in zip(result.best_index, centre))
        shift = float(np.hypot(*(np.array(result.best_index) - centre)))
        summary["heatmaps"][name] = {"best_match_offset_voxels": shift, "file": f"heatmap_{name}.nii.gz"}
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
        print(f"{name:>5} heat map: best match {info['best_match_offset_voxels']:.1f} voxels from the CT point")
    print(f"outputs written to {out.resolve()}/ (demo.png, summary.json, heatmap_*.nii.gz, ct/mr/labels .nii.gz)")
