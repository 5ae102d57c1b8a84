"""Instance optimisation and the 3D / microscopy comparison protocols (registration/instance, compare,
experiment3d, experiment_em), the EM loader."""

import numpy as np
import pytest
import torch

from conftest import benchmark_script, require_data
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.registration import compare
from DeepSimilarityLib.registration.data import BrainVolumes, third_subject, volume_pairs
from DeepSimilarityLib.registration.experiment3d import score
from DeepSimilarityLib.registration.experiment_em import EVAL_SECTIONS, FEATURE_SECTIONS, em_pairs, membrane_score
from DeepSimilarityLib.registration.instance import optimise_displacement
from DeepSimilarityLib.registration.losses import make_loss
from DeepSimilarityLib.registration.report import markdown_table

torch.set_num_threads(1)


def blob(shape, centre):
    """``(1, 1, *shape)`` Gaussian blob at ``centre`` (voxels), sigma 3."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.exp(-r2 / 18.0)[None, None]


@pytest.mark.parametrize("shape", [(24, 24), (16, 16, 16)], ids=["2d", "3d"])
def test_instance_optimisation_recovers_a_shift(shape):
    fixed = blob(shape, [n / 2 for n in shape])
    moving = blob(shape, [n / 2 + (2 if i == 0 else 0) for i, n in enumerate(shape)])  # 2 voxels further on axis 0
    ddf, hist = optimise_displacement(moving, fixed, make_loss("mse", len(shape)), lam=0.01, steps=60, lr=0.2)
    assert ddf.shape == (1, len(shape)) + shape and not ddf.requires_grad
    assert hist["loss"][1] < 0.2 * hist["loss"][0]
    centre = tuple(n // 2 for n in shape)
    # The fixed point c is found at c + 2 in the moving image: displacement +2 along axis 0, ~0 elsewhere.
    assert ddf[(0, 0) + centre].item() == pytest.approx(2.0, abs=0.5)
    assert abs(ddf[(0, 1) + centre].item()) < 0.5


def test_coarse_to_fine_reaches_a_larger_shift_closer():
    fixed, moving = blob((32, 32), (16, 16)), blob((32, 32), (22, 16))  # 6 pixels apart
    results = {}
    for levels in (1, 2):
        ddf, hist = optimise_displacement(moving, fixed, make_loss("mse", 2), 0.01, 60, 0.2, levels=levels)
        assert ddf.shape == (1, 2, 32, 32)
        results[levels] = (hist["loss"][1], abs(ddf[0, 0, 16, 16].item() - 6.0))
    # Measured: final loss 1.5e-3 -> 1.5e-5, centre error 0.34 -> 0.03 px.
    assert results[2][0] < 0.1 * results[1][0] and results[2][1] < 0.1


def test_instance_optimisation_bad_input():
    a = blob((16, 16), (8, 8))
    with pytest.raises(InputError):
        optimise_displacement(a, blob((16, 18), (8, 8)), make_loss("mse", 2), 0.1)
    with pytest.raises(InputError, match="lambda"):
        optimise_displacement(a, a, make_loss("mse", 2), -1.0)


def test_brain_pairs_and_third_subject():
    vols = BrainVolumes(["vxm", "a", "b"], [None] * 3, [None] * 3)
    pairs = volume_pairs(vols)
    assert len(pairs) == len(set(pairs)) == 6 and all(m != f for m, f in pairs)
    # The feature net of a pair learns from the subject in neither image.
    assert [third_subject(p) for p in pairs] == [2, 1, 2, 0, 1, 0]
    with pytest.raises(ValueError):
        third_subject((0, 1), 4)


def test_lambda_rule_reads_folding_only(monkeypatch):
    """The smallest lambda whose calibration folding is < 1% is used on every pair; labels are never read."""
    calls = []

    def fake_optimise(moving, fixed, loss, lam, steps, lr, levels=1):
        calls.append(lam)
        return torch.full((1, 2, 4, 4), float(lam)), {"seconds": 0.0}

    def fake_score(ddf, pair):  # folding falls with lambda; "Dice" best at the smallest lambda (a trap)
        lam = float(ddf.flatten()[0])
        return {"dice": 1.0 / (1 + lam), "dice_per_label": {}, "folding": 0.05 if lam < 0.5 else 0.001}

    monkeypatch.setattr(compare, "optimise_displacement", fake_optimise)
    images = [torch.zeros(1, 1, 4, 4)] * 3
    out = compare.compare_losses(["mse"], images, [(0, 1), (1, 2), (2, 0)], fake_score, None, {"mse": 1.0},
                                 (0.25, 1.0, 4.0), steps=1, lr=0.1, log=lambda *_: None)
    assert out["mse"]["lambda"] == 1.0
    assert calls == [0.25, 1.0, 4.0, 1.0, 1.0]  # the calibration pair's run is reused
    assert [s["lambda"] for s in out["mse"]["sweep"]] == [0.25, 1.0, 4.0]
    with pytest.raises(ValueError, match="labels"):
        compare.compare_losses(["ncc-sup"], images, [(0, 1)], fake_score, None, {}, (1.0,), 1, 0.1)


def test_scores_of_identity_and_shift():
    labels = np.zeros((8, 12, 12), np.uint8)
    labels[2:6, 3:9, 3:9] = 4
    labels[2:6, 3:6, 3:9] = 7
    r = score(torch.zeros(1, 3, 4, 6, 6), labels, labels)
    assert r["dice"] == 1.0 and set(r["dice_per_label"]) == {4, 7} and r["folding"] == 0.0
    shifted = np.roll(labels, 2, axis=2)
    moved = score(torch.zeros(1, 3, 4, 6, 6), labels, shifted)
    # A displacement of +1 voxel on the half-resolution grid = +2 on the full grid: exactly undoes the shift.
    ddf = torch.zeros(1, 3, 4, 6, 6)
    ddf[:, 2] = -1.0  # fixed(p) = moving(p - 2) along the last axis
    assert moved["dice"] < 0.9 and score(ddf, labels, shifted)["dice"] == 1.0
    membranes = np.zeros((16, 16), np.uint8)
    membranes[:, 5] = 1
    m = membrane_score(torch.zeros(1, 2, 8, 8), membranes, membranes)
    assert m["dice"] == 1.0 and list(m["dice_per_label"]) == [1]


def test_em_split_keeps_feature_sections_apart():
    pairs = em_pairs()
    assert len(pairs) == 13 and all(m == f + 1 for m, f in pairs)
    used = {s for p in em_pairs(True) for s in p}
    assert used <= set(EVAL_SECTIONS) and not used & set(FEATURE_SECTIONS)
    assert min(EVAL_SECTIONS) - max(FEATURE_SECTIONS) > 1  # a gap section in between


def test_em_sections_load():
    require_data("microscopy/train")
    from DeepSimilarityLib.datasets.microscopy import load_em_sections

    images, membranes = load_em_sections("train")
    assert images.shape == membranes.shape == (30, 512, 512) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(np.unique(membranes)) == {0, 1} and 0.1 < membranes.mean() < 0.4  # membranes are the minority
    # Consecutive sections overlap far better than distant ones (the stack is in section order).
    near = np.corrcoef(images[16].ravel(), images[17].ravel())[0, 1]
    far = np.corrcoef(images[0].ravel(), images[29].ravel())[0, 1]
    assert near > far
    test_images, none = load_em_sections("test")
    assert test_images.shape == (30, 512, 512) and none is None
    with pytest.raises(InputError):
        load_em_sections("val")


def test_report_without_paper_column():
    result = {"affine_only": {"dice": [0.3, 0.4], "folding": [0, 0]},
              "losses": {"mse": {"dice": [0.5, 0.6], "folding": [0.01, 0.0], "lambda": 0.1, "seconds_per_pair": 1.0}}}
    assert "paper" in markdown_table(result) and "0.666" in markdown_table(result)
    table = markdown_table(result, paper=False)
    assert "paper" not in table and "| mse | 0.550 |" in table


def _fake_result(setup):
    scores = {"dice": [0.3, 0.4], "dice_per_label": [{}, {}], "folding": [0.0, 0.0]}
    loss = dict(scores, dice=[0.5, 0.6], folding=[0.001, 0.0], **{"lambda": 0.3, "seconds_per_pair": 1.5, "sweep": []})
    return {"setup": setup, "affine_only": scores, "losses": {"mse": loss}}


@pytest.mark.parametrize("data", ["brain3d", "em"])
def test_cli_evaluate_registration_instance_protocols_write_their_report(data, tmp_path, monkeypatch, capsys):
    """``deepsim evaluate registration --data brain3d|em`` runs the protocol and writes table, JSON and box plot."""
    require_data("microscopy/train" if data == "em" else "brain-mr/oasis")
    from DeepSimilarityLib.cli import main
    from DeepSimilarityLib.registration import experiment3d, experiment_em

    seen = {}
    setup = {"grid": [8, 8], "network_grid": [4, 4], "factor": 2, "pairs": ["1 -> 0", "2 -> 1"], "steps": 20,
             "lr": 0.1, "lambda_factors": [1.0], "calibration_pair": "1 -> 0", "feature_steps": 10,
             "feature_epochs": 3, "levels": 2}

    def fake_run(losses, **kw):
        seen.update(kw, losses=losses)
        return _fake_result(dict(setup))

    module, stem = (experiment_em, "registration_em_quick") if data == "em" else (experiment3d, "registration_3d_quick")
    monkeypatch.setattr(module, "run_comparison_em" if data == "em" else "run_comparison_3d", fake_run)
    assert main(["evaluate", "registration", "--data", data, "--quick", "--losses", "mse", "--threads", "1",
                 "--out-dir", str(tmp_path)]) == 0
    assert seen["losses"] == ["mse"] and seen["steps"] == 20 and seen["bspline"] is False
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"{stem}.{ext}").stat().st_size > 0
    table = (tmp_path / f"{stem}.md").read_text()
    assert "| mse | 0.550 |" in table and ("paper" in table) == (data == "brain3d")


def test_cli_evaluate_registration_trained_3d_nets_run_every_fold_and_merge(tmp_path, monkeypatch):
    """``--data brain3d-net`` runs the three folds (or the one asked for) and writes one merged report."""
    require_data("brain-mr/oasis")
    from DeepSimilarityLib.cli import main
    from DeepSimilarityLib.registration import experiment3d_net

    calls = []

    def fake_run(losses, **kw):
        calls.append(kw)
        k = kw["fold"]
        loss = {"dice": [0.5 + k / 10] * 2, "dice_per_label": [{}, {}], "folding": [0.0, 0.0], "lambda": 0.0025,
                "train_dice": [0.6] * 4, "train_folding": [0.0] * 4, "val_dice": [], "train_seconds": 1.0,
                "steps": kw["steps"], "inference_ms": 10.0, "seconds_per_pair": 0.01, "augment": True}
        setup = {"grid": [8, 8, 8], "network_grid": [4, 4, 4], "factor": 2, "pairs": [f"p{k}", f"q{k}"],
                 "train_pairs": [f"t{k}"], "steps": kw["steps"], "lr": 3e-3, "augment": True, "feature_steps": 5,
                 "fold": k, "feature_training": f"subject {k}"}
        return {"setup": setup, "affine_only": {"dice": [0.4, 0.4], "folding": [0.0, 0.0]}, "losses": {"mse": loss}}

    monkeypatch.setattr(experiment3d_net, "run_net_comparison_3d", fake_run)
    argv = ["evaluate", "registration", "--data", "brain3d-net", "--losses", "mse", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    assert [c["fold"] for c in calls] == [0, 1, 2] and {c["steps"] for c in calls} == {1000}
    table = (tmp_path / "registration_3d_net_folds.md").read_text()
    assert "all 6 directed pairs" in table and "| mse | 0.500 | 0.600 | 0.700 | 0.600 |" in table
    assert all((tmp_path / f"registration_3d_net_folds_fold{k}.json").is_file() for k in range(3))
    calls.clear()
    assert main(argv + ["--fold", "2", "--steps", "30"]) == 0
    assert [(c["fold"], c["steps"]) for c in calls] == [(2, 30)] and not calls[0]["velocity"]
    calls.clear()
    assert main(argv + ["--fold", "1", "--velocity"]) == 0
    assert calls[0]["velocity"] and (tmp_path / "registration_3d_net_folds_velocity_fold1.json").is_file()


def test_cli_evaluate_registration_bad_input(tmp_path, capsys):
    from DeepSimilarityLib.cli import main
    from DeepSimilarityLib.cli.train_registration import LOSS_NAMES

    assert list(compare.INSTANCE_LOSSES) == [n for n in LOSS_NAMES if n != "ncc-sup"]  # the CLI's copy agrees
    cases = [(["--data", "brain3d", "--losses", "ncc-sup"], "--losses"),
             (["--data", "em", "--steps", "0"], "--steps"),
             (["--data", "em", "--save-weights", str(tmp_path)], "--save-weights"),
             (["--data", "brain3d", "--fold", "1"], "--fold"),
             (["--data", "em", "--velocity"], "--velocity"),
             (["--data", "lung"], None)]
    for argv, text in cases:
        if text is None:
            with pytest.raises(SystemExit):
                main(["evaluate", "registration"] + argv)
            continue
        assert main(["evaluate", "registration"] + argv) == 2, argv
        assert text in capsys.readouterr().err


def test_cli_evaluate_registration_passes_velocity_to_the_slice_comparison(tmp_path, monkeypatch):
    from DeepSimilarityLib.cli import main
    from DeepSimilarityLib.registration import report

    calls = []
    monkeypatch.setattr(report, "run_and_report", lambda *a: calls.append(a))
    monkeypatch.setattr("DeepSimilarityLib.paths.has_shared_data", lambda sub: True)
    argv = ["evaluate", "registration", "--losses", "mse", "--out-dir", str(tmp_path)]
    assert main(argv) == 0 and main(argv + ["--velocity"]) == 0
    assert [a[-1] for a in calls] == [False, True]


def test_slice_benchmark_passes_the_lambda_grid_and_stem(tmp_path, monkeypatch, capsys):
    from DeepSimilarityLib.registration import report

    script = benchmark_script("eval_registration")
    calls = []
    monkeypatch.setattr(script, "missing_shared_data", lambda *a: False)
    monkeypatch.setattr(report, "run_and_report", lambda *a: calls.append(a))
    base = ["--losses", "mse", "--out-dir", str(tmp_path / "new")]  # made before the run, not after it
    assert script.main(base) == 0 and (tmp_path / "new").is_dir()
    assert script.main(base + ["--velocity", "--lambda-factors", "0.0625,0.25", "--stem", "low"]) == 0
    assert script.main(base + ["--velocity", "--regularise", "velocity"]) == 0
    assert [a[-4:] for a in calls] == [(False, None, None, "displacement"),
                                       (True, [0.0625, 0.25], "low", "displacement"), (True, None, None, "velocity")]
    for bad in (["--lambda-factors", "0,1"], ["--lambda-factors", "a,1"], ["--regularise", "velocity"]):
        with pytest.raises(SystemExit):
            script.main(base + bad)
        assert bad[0] in capsys.readouterr().err
    assert len(calls) == 3  # refused before anything ran
