"""Run every malformed-input case of Testing/Python/fuzz_cases.py and record the outcomes.

    PYTHONPATH=. python benchmarks/fuzz_inputs.py   # -> benchmarks/results/fuzz.json

The same cases run under pytest (Testing/Python/test_fuzz_inputs.py); this
script records how many there are and what each gave, for the docs.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "Python")]

import torch  # noqa: E402

from DeepSimilarityLib.cli.common import write_json  # noqa: E402
from fuzz_cases import all_cases, run_case  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    cases = all_cases()
    outcomes, start = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, case in enumerate(cases):
            outcome, detail = run_case(case, Path(tmp) / str(i))
            outcomes[case.id] = {"outcome": outcome, "detail": detail.replace(tmp, "TMP")}
    counts = collections.Counter(o["outcome"] for o in outcomes.values())
    by_input = collections.Counter(case_id.split("/")[0] for case_id in outcomes)
    result = {"cases": len(cases), "outcomes": dict(counts), "by_input": dict(by_input),
              "seconds": round(time.perf_counter() - start, 1), "cases_detail": outcomes}
    out = write_json(result, ROOT / "benchmarks" / "results" / "fuzz.json")
    print(f"{len(cases)} cases: {dict(counts)} in {result['seconds']} s; wrote {out}")
    return 0 if counts.get("ok", 0) == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
