"""Malformed inputs give a clear error naming the file (library) or exit 2 with one line (command line).

The cases (damaged images, weight files, case databases and exports, each
fed to the readers and to the commands that take them) are generated in
``fuzz_cases.py``; ``benchmarks/fuzz_inputs.py`` runs the same cases and
records their count and outcomes in ``benchmarks/results/fuzz.json``.
"""

import warnings

import pytest

from fuzz_cases import all_cases, run_case

CASES = all_cases()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_there_are_many_cases():
    assert len(CASES) >= 200
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input(case, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SimpleITK / torch warn about the damage on the way to the error
        outcome, detail = run_case(case, tmp_path)
    assert outcome == "ok", detail
