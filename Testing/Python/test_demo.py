"""``deepsim demo`` end to end: every step uses the shipped weights and reports a sensible result."""

import json

from DeepSimilarityLib.cli import main
from DeepSimilarityLib.paths import has_shared_data


def test_demo_runs_every_step_with_the_shipped_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSIM_DATA", str(tmp_path / "no-data"))  # the retrieval step must skip cleanly
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["heatmaps"]) == {"nmi", "lcc", "mind", "learned"}
    assert summary["heatmaps"]["learned"]["precision"] == "float32"  # the same map every run, whatever the load
    for name in summary["heatmaps"]:
        assert (tmp_path / "demo" / f"heatmap_{name}.nii.gz").exists()
    deformable = summary["deformable_registration"]
    assert deformable["mean_dice_after"] > deformable["mean_dice_before"] + 0.05
    assert deformable["folding_fraction"] < 0.01
    assert "not found" in summary["retrieval"]["skipped"]
    assert summary["registration"]["mutual_information_after"] > summary["registration"]["mutual_information_before"]


def test_demo_retrieval_with_the_shared_x_rays(tmp_path):
    import pytest

    if not has_shared_data("chest-xray/nih1000"):
        pytest.skip("real data chest-xray/nih1000 not found (it lives in ../shared/data beside the project)")
    from DeepSimilarityLib.cli.demo import demo_retrieval

    result = demo_retrieval(tmp_path)
    assert result["cases"] == 999 and len(result["top5"]) == 5
    assert result["query"] not in {m["case"] for m in result["top5"]}
    assert [m["hamming"] for m in result["top5"]] == sorted(m["hamming"] for m in result["top5"])
