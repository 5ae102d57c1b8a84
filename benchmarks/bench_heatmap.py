"""Heat-map speed on one CPU core: learned metric vs NMI (per-position loop and vectorised), LCC, MIND.

One 17x17 CT patch scored over 81x81 MR positions, on a real head slice of
../shared/data (the phantom when absent). All metrics run in this one
process with one thread. Also the peak memory of a 3D learned heat map
(17x17x17 patches, 81x81x9 neighbourhood), measured in a fresh process, and
what the reduced precisions (bfloat16, int8) change in the rank error psi_3
of the paper's evaluation: 300 skull-edge patches of the head slices scored
by the shipped net in every precision (the net was trained on these
patients, so the psi values themselves are optimistic; only their
differences between precisions matter here).

    python benchmarks/bench_heatmap.py  ->  benchmarks/results/heatmap.json
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from DeepSimilarityLib.cli.common import write_json  # noqa: E402
from DeepSimilarityLib.ctmr.patch_pairs import skull_edge_mask  # noqa: E402
from DeepSimilarityLib.ctmr import LearnedPatchMetric, PatchSimilarityNet, load_net  # noqa: E402
from DeepSimilarityLib.patch_metrics import get_metric  # noqa: E402
from DeepSimilarityLib.patches import crop, search_region  # noqa: E402
from DeepSimilarityLib.paths import weights_dir  # noqa: E402

RESULTS = Path(__file__).parent / "results"
torch.set_num_threads(1)


def timed(fn, repeats):
    fn()  # warm-up: first-call allocation and dispatch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0


def nmi_loop(patch, region, bins=16):
    """The straightforward baseline: one joint histogram per position, in a Python loop."""
    n = region.shape[0] - patch.shape[0] + 1
    out = np.empty((n, n))
    p = patch.shape[0]
    for i in range(n):
        for j in range(n):
            h, _, _ = np.histogram2d(patch.ravel(), region[i:i + p, j:j + p].ravel(), bins=bins, range=[[0, 1], [0, 1]])
            pxy = h / h.sum()
            px, py = pxy.sum(1), pxy.sum(0)
            hx = -np.sum(px[px > 0] * np.log(px[px > 0]))
            hy = -np.sum(py[py > 0] * np.log(py[py > 0]))
            hxy = -np.sum(pxy[pxy > 0] * np.log(pxy[pxy > 0]))
            out[i, j] = (hx + hy) / hxy if hxy > 0 else 1.0
    return out


def test_slice():
    from DeepSimilarityLib.paths import has_shared_data

    if has_shared_data("ct-mr-slices"):
        from DeepSimilarityLib.datasets import CTMRSlices

        pair = CTMRSlices().load_pair("Patient_01", CTMRSlices().slice_ids("Patient_01")[8])
        return pair.ct.array, pair.mr.array, "real head slice Patient_01"
    from DeepSimilarityLib.image_io import normalise_intensity
    from DeepSimilarityLib.phantom import make_head_phantom

    ph = make_head_phantom((256, 256))
    return normalise_intensity(ph.ct.array), normalise_intensity(ph.mr.array), "phantom (no ../shared/data)"


def learned_net():
    path = weights_dir() / "ctmr_similarity.pt"
    if path.exists():
        return load_net(path), str(path.name)
    return PatchSimilarityNet(), "untrained net (same architecture; speed does not depend on the weights)"


def precision_effect(net, n: int = 300) -> dict:
    """Mean psi_3, same-best-position fraction and max |score - float32 score| per precision."""
    from DeepSimilarityLib.ctmr.experiment import test_patches, training_slices
    from DeepSimilarityLib.ctmr.rank_error import rank_error
    from DeepSimilarityLib.paths import has_shared_data

    slices, source = training_slices("head", phantom=not has_shared_data("ct-mr-slices"))
    tests = test_patches(slices, n, np.random.default_rng(0))
    metrics = {p: LearnedPatchMetric(net, precision=p) for p in ("float32", "bfloat16", "int8")}
    out = {p: {"psi": [], "same_argmax": [], "max_abs_diff": 0.0} for p in metrics}
    for ct, mr, centre in tests:
        patch, region = crop(ct, centre, 17), search_region(mr, centre, 17, 81)
        ref = None
        for p, metric in metrics.items():
            scores = metric.score_map(patch, region)
            ref = scores if ref is None else ref
            out[p]["psi"].append(rank_error(scores))
            out[p]["same_argmax"].append(bool(np.argmax(scores) == np.argmax(ref)))
            out[p]["max_abs_diff"] = max(out[p]["max_abs_diff"], float(np.max(np.abs(scores - ref))))
    return {"source": source, "patches": len(tests),
            **{p: {"mean_psi": float(np.mean(v["psi"])), "same_argmax": float(np.mean(v["same_argmax"])),
                   "max_abs_diff": v["max_abs_diff"]} for p, v in out.items()}}


def memory_3d():
    """Runs in a child process: peak RSS of one 3D learned heat map."""
    torch.manual_seed(0)
    net = PatchSimilarityNet({"patch_voxels": 17 ** 3, "layers": [1024, 300, 100]})
    metric = LearnedPatchMetric(net)
    rng = np.random.default_rng(0)
    vol = rng.random((40, 140, 140), dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    scores = metric.score_map(crop(vol, (20, 70, 70), 17), search_region(vol, (20, 70, 70), 17, (9, 81, 81)))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"shape": list(scores.shape), "seconds": seconds, "peak_rss_mb": peak / 1024,
                      "rss_before_mb": before / 1024}))


def main():
    ct, mr, source = test_slice()
    centre = tuple(np.argwhere(skull_edge_mask(ct, near=0))[0])
    patch, region = crop(ct, centre, 17), search_region(mr, centre, 17, 81)
    net, net_name = learned_net()
    rows = {}
    rows["NMI, per-position loop (baseline)"] = timed(lambda: nmi_loop(patch, region), 3)
    for name in ("nmi", "lcc", "mind"):
        m = get_metric(name)
        rows[f"{name.upper()}, vectorised"] = timed(lambda m=m: m.score_map(patch, region), 15)
    for precision in ("float32", "bfloat16", "int8", "auto"):
        m = LearnedPatchMetric(net, precision=precision)
        rows[f"learned, {precision}" + (f" (chose {m.resolved_precision()})" if precision == "auto" else "")] = \
            timed(lambda m=m: m.score_map(patch, region), 25)
    f32 = LearnedPatchMetric(net, precision="float32").score_map(patch, region)
    b16 = LearnedPatchMetric(net, precision="bfloat16").score_map(patch, region)
    agree = bool(np.argmax(f32) == np.argmax(b16))
    effect = precision_effect(net)
    # Check the loop and the vectorised NMI give the same map (the speed-up is not an approximation).
    same = float(np.max(np.abs(nmi_loop(patch, region) - get_metric("nmi").score_map(patch, region))))
    child = subprocess.run([sys.executable, __file__, "--memory-3d"], capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    baseline = rows["NMI, per-position loop (baseline)"]
    learned_auto = [v for k, v in rows.items() if k.startswith("learned, auto")][0]
    print(f"Heat map of one 17x17 patch over 81x81 positions, one thread, {source}; learned net: {net_name}")
    print(f"{'method':<45}{'median ms':>12}{'vs NMI loop':>14}")
    for k, v in rows.items():
        print(f"{k:<45}{v:>12.1f}{baseline / v:>13.0f}x")
    print(f"bf16 vs fp32 learned map: max |diff| {np.max(np.abs(f32 - b16)):.4f}, same best position: {agree}")
    print(f"precision and rank error, {effect['patches']} patches of {effect['source']}:")
    print(f"{'precision':<12}{'mean psi_3':>12}{'same best':>12}{'max |diff|':>12}")
    for p in ("float32", "bfloat16", "int8"):
        e = effect[p]
        print(f"{p:<12}{e['mean_psi']:>12.1f}{e['same_argmax']:>12.1%}{e['max_abs_diff']:>12.3f}")
    print(f"vectorised NMI equals the loop: max |diff| {same:.2e}")
    print(f"3D learned heat map {mem['shape']} (17^3 patches): {mem['seconds']:.1f} s, "
          f"peak RSS {mem['peak_rss_mb']:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    out = {"source": source, "learned_net": net_name, "median_ms": rows,
           "speedup_learned_auto_vs_nmi_loop": baseline / learned_auto,
           "bf16_fp32_max_abs_diff": float(np.max(np.abs(f32 - b16))), "bf16_fp32_same_argmax": agree,
           "precision_effect_on_rank_error": effect, "nmi_vectorised_vs_loop_max_abs_diff": same, "heatmap_3d": mem,
           "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    write_json(out, RESULTS / "heatmap.json")
    print(f"wrote {RESULTS / 'heatmap.json'}")


if __name__ == "__main__":
    memory_3d() if "--memory-3d" in sys.argv else main()
