"""Paired comparison of two losses over seeds: registration/paired_comparison.py and its benchmark script."""

import json

import pytest
from conftest import benchmark_script

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.registration.paired_comparison import paired_comparison

PAIRS = [f"s{i} -> s{j}" for i in range(3) for j in range(3) if i != j]  # six directed pairs


def run(seed: int, dice: dict, **setup) -> dict:
    """A result in report_net3d's layout: ``dice`` is {loss: [Dice per pair]}."""
    base = {"pairs": PAIRS, "steps": 3000, "velocity": True, "seed": seed, "minutes_total": 10.0 + seed}
    return {"setup": {**base, **setup}, "losses": {k: {"dice": v} for k, v in dice.items()}}


def test_a_loss_ahead_on_every_pair_reaches_the_floor_of_the_exact_test():
    runs = {f"seed{s}": run(s, {"ds": [0.60 + 0.01 * i + 0.002 * s for i in range(6)],
                                "ncc": [0.59 + 0.01 * i for i in range(6)]}) for s in range(3)}
    c = paired_comparison(runs, "ds", "ncc")
    assert c["seeds"] == [0, 1, 2] and c["observations"] == 18 and c["observations_at_least"] == 18
    assert c["pairs_at_least"] == 6 and c["mean_difference"] == pytest.approx(0.012)
    assert c["wilcoxon_p"] == pytest.approx(2 / 64) == pytest.approx(c["p_floor"])  # all six signs agree
    assert c["run_means"]["seed2"]["loss"] == pytest.approx(0.629)


def test_differences_of_either_sign_are_not_significant_and_pairs_are_matched_by_name():
    ds = [0.61, 0.59, 0.62, 0.58, 0.60, 0.60]
    ncc = [0.60, 0.60, 0.60, 0.60, 0.60, 0.60]
    c = paired_comparison({"a": run(0, {"ds": ds, "ncc": ncc})}, "ds", "ncc")
    assert c["mean_difference"] == pytest.approx(0.0) and c["wilcoxon_p"] > 0.5
    assert [p["difference"] for p in c["per_pair"]] == pytest.approx([0.01, -0.01, 0.02, -0.02, 0.0, 0.0])
    same = paired_comparison({"a": run(0, {"ds": ncc, "ncc": ncc})}, "ds", "ncc")
    assert same["wilcoxon_p"] == 1.0 and same["pairs_at_least"] == 6


def test_runs_must_be_one_protocol_at_distinct_seeds():
    dice = {"ds": [0.6] * 6, "ncc": [0.61] * 6}
    with pytest.raises(InputError, match="^b: seed 0 again"):
        paired_comparison({"a": run(0, dice), "b": run(0, dice)}, "ds", "ncc")
    with pytest.raises(InputError, match=r"^b: setup differs from a's in \['velocity'\]"):
        paired_comparison({"a": run(0, dice), "b": run(1, dice, velocity=False)}, "ds", "ncc")
    with pytest.raises(InputError, match=r"^b: setup differs .*pairs"):
        paired_comparison({"a": run(0, dice), "b": run(1, dice, pairs=PAIRS[::-1])}, "ds", "ncc")
    with pytest.raises(InputError, match=r"^b: no 'mse' loss \(it has \['ds', 'ncc'\]\)"):
        paired_comparison({"a": run(0, {**dice, "mse": [0.6] * 6}), "b": run(1, dice)}, "ds", "mse")
    worded = paired_comparison({"a": run(0, dice, feature_training="the hub only"),
                                "b": run(1, dice, feature_training="from its hub")}, "ds", "ncc")
    assert worded["seeds"] == [0, 1]  # prose about the feature nets may be worded differently
    with pytest.raises(InputError, match="^runs: no run"):
        paired_comparison({}, "ds", "ncc")


def test_script_writes_the_tables_and_refuses_bad_runs(tmp_path, capsys):
    script = benchmark_script("compare_registration_seeds")
    files = []
    for s in range(2):
        files.append(tmp_path / f"seed{s}.json")
        files[-1].write_text(json.dumps(run(s, {"ds": [0.62] * 6, "ncc": [0.60] * 6, "mse": [0.63] * 6})))
    out = tmp_path / "out"
    runs = ",".join(map(str, files))
    assert script.main(["--runs", runs, "--loss", "ds", "--stem", "cmp", "--out-dir", str(out)]) == 0
    text = (out / "cmp.md").read_text()
    assert "| mean over seeds | **0.620** | **0.600** | **0.630** |" in text
    assert "| ncc | +0.0200 | 6 of 6 | 12 of 12 | 0.031 |" in text
    assert "| mse | -0.0100 | 0 of 6 | 0 of 12 | 0.031 |" in text
    assert [c["baseline"] for c in json.loads((out / "cmp.json").read_text())["comparisons"]] == ["ncc", "mse"]
    capsys.readouterr()
    assert script.main(["--runs", f"{files[0]},{tmp_path / 'missing.json'}", "--stem", "x", "--out-dir", str(out)]) == 2
    assert "missing.json: cannot read a result file" in capsys.readouterr().err
    assert script.main(["--runs", f"{files[0]},{files[0]}", "--loss", "ds", "--stem", "x", "--out-dir", str(out)]) == 2
    assert "--runs: two files of the same name" in capsys.readouterr().err
    assert not (out / "x.md").exists()
