"""Inference time and peak memory of the registration network, 2D and 3D, one CPU thread and all threads.

2D: one 192x160 pair through the network at full resolution and through the shipped pipeline
(2x downsampled 96x80 grid + displacement upsampling). 3D: one 160x192x224 pair, the same
architecture (untrained weights: time does not depend on them) at full resolution and at the
half-resolution 80x96x112 grid with upsampling. Each 3D case runs in a fresh process so that
its peak resident memory (``ru_maxrss``) is its own. Median of repeated runs.

    python benchmarks/bench_registration_inference.py  ->  benchmarks/results/registration_inference.json
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CASES = {"2d_full": ((192, 160), 1), "2d_half": ((192, 160), 2), "3d_full": ((224, 192, 160), 1),
         "3d_half": ((224, 192, 160), 2)}


def one_case(name: str, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from DeepSimilarityLib.registration import RegistrationNet
    from DeepSimilarityLib.registration.network import resize_displacement, warp_image

    torch.set_num_threads(threads)
    shape, factor = CASES[name]
    dims = len(shape)
    net = RegistrationNet(dims).eval()
    torch.manual_seed(0)
    m, f = torch.rand((1, 1) + shape), torch.rand((1, 1) + shape)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    times = []
    for _ in range(7 if dims == 2 else 3):
        t0 = time.perf_counter()
        with torch.no_grad():
            a, b = (pool(m, factor), pool(f, factor)) if factor > 1 else (m, f)
            ddf = resize_displacement(net.displacement(a, b), shape)
            warp_image(m, ddf)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"shape": list(shape), "network_grid": [s // factor for s in shape], "threads": threads,
            "median_seconds": times[len(times) // 2],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    if len(sys.argv) == 3:  # child process: one case
        print(json.dumps(one_case(sys.argv[1], int(sys.argv[2]))))
        return
    from DeepSimilarityLib.cli.common import write_json

    rows = []
    for threads in (1, os.cpu_count()):
        for name in CASES:
            out = subprocess.run([sys.executable, __file__, name, str(threads)], capture_output=True, text=True,
                                 check=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["case"] = name
            rows.append(r)
            print(f"{name:8s} {str(r['shape']):16s} net grid {str(r['network_grid']):16s} threads {threads}: "
                  f"{1000 * r['median_seconds']:8.1f} ms, peak {r['peak_rss_mb']:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    write_json({"cpu_count": os.cpu_count(), "cases": rows}, RESULTS / "registration_inference.json")
    print(f"wrote {RESULTS / 'registration_inference.json'}")


if __name__ == "__main__":
    main()
