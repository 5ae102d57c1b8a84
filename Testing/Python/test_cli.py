"""The command line: help for every command, one-line errors with exit code 2, nothing written on failure."""

import subprocess
import sys

import numpy as np
import pytest

from DeepSimilarityLib.cli import build_parser, main
from DeepSimilarityLib.image_io import Volume, read_image, write_image

COMMANDS = [["demo"], ["info"], ["phantom"], ["register"], ["similarity", "heatmap"], ["similarity", "train"],
            ["train", "registration"], ["train", "siamese"], ["train", "hashing"], ["evaluate", "rank-error"],
            ["evaluate", "registration"], ["evaluate", "retrieval"], ["index", "create"], ["index", "add"],
            ["index", "info"], ["query"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    assert "usage: deepsim" in capsys.readouterr().out


def run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def test_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "heat.nii.gz"
    code, io = run(["similarity", "heatmap", "--ct", str(tmp_path / "nope.nii.gz"), "--mr", str(tmp_path / "nope.nii.gz"),
                    "--index", "1,1", "--out", str(out)], capsys)
    assert code == 2
    assert io.err.strip().count("\n") == 0 and "nope.nii.gz: file not found" in io.err
    assert not out.exists()


def test_bad_inputs_write_nothing(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    write_image(Volume(np.random.default_rng(0).random((40, 40)).astype(np.float32)), ct)
    vol3d = tmp_path / "mr3d.nii.gz"
    write_image(Volume(np.ones((3, 40, 40), np.float32)), vol3d)
    nan = tmp_path / "nan.mha"
    a = np.ones((40, 40), np.float32)
    a[3, 3] = np.nan
    write_image(Volume(a), nan)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"\x1f\x8b truncated gzip")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(vol3d), "--index", "5,5", "--out", str(tmp_path / "h.nii.gz")], "is 3D"),
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(nan), "--index", "5,5", "--out", str(tmp_path / "h.nii.gz")], "NaN"),
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(garbage), "--index", "5,5", "--out", str(tmp_path / "h.nii.gz")], "cannot read"),
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(ct), "--index", "5,5", "--patch-size", "4", "--out", str(tmp_path / "h.nii.gz")], "--patch-size"),
        (["register", "--fixed", str(ct), "--moving", str(vol3d), "--out-warped", str(tmp_path / "w.nii.gz")], "is 3D"),
        (["register", "--fixed", str(ct), "--moving", str(ct), "--out-warped", str(tmp_path / "no" / "w.nii.gz")], "does not exist"),
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(ct), "--index", "5,5", "--metric", "learned",
          "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "h.nii.gz")], "deepsim similarity train"),
        (["query", "--db", str(tmp_path / "none.db"), "--image", str(ct)], "case database not found"),
        (["evaluate", "rank-error", "--also-train-on", "T1", "--out-dir", str(tmp_path)], "already the tested sequence"),
        (["evaluate", "rank-error", "--also-train-on-region", "head", "--out-dir", str(tmp_path)],
         "already the tested region"),
        (["evaluate", "rank-error", "--train-outline-distance", "2", "--out-dir", str(tmp_path)],
         "--train-outline-distance: must be at least --max-outline-distance"),
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(ct), "--index", "5,5", "--metric", "nmi+lcc",
          "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "h.nii.gz")], "is for the learned metric"),
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(ct), "--index", "5,5", "--metric", "learned+nmx",
          "--out", str(tmp_path / "h.nii.gz")], "unknown metric 'nmx'"),
        (["similarity", "heatmap", "--ct", str(ct), "--mr", str(ct), "--index", "5,5", "--metric", "nmi",
          "--precision", "float32", "--out", str(tmp_path / "h.nii.gz")], "--precision: is for the learned metric"),
    ]
    for args, message in cases:
        code, io = run(args, capsys)
        assert code == 2, args
        assert message in io.err, (args, io.err)
        assert "Traceback" not in io.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_phantom_register_and_heatmap_end_to_end(tmp_path, capsys):
    ct, mr = tmp_path / "ct.nrrd", tmp_path / "mr.nrrd"
    assert main(["phantom", "--shape", "128,128", "--misalign", "--out-ct", str(ct), "--out-mr", str(mr)]) == 0
    warped, tfm = tmp_path / "w.nii.gz", tmp_path / "t.tfm"
    assert main(["register", "--fixed", str(ct), "--moving", str(mr), "--out-warped", str(warped), "--out-transform", str(tfm)]) == 0
    assert "mutual information" in capsys.readouterr().out and tfm.exists()
    heat = tmp_path / "heat.nii.gz"
    assert main(["similarity", "heatmap", "--ct", str(ct), "--mr", str(warped), "--point", "30,-40", "--ras",
                 "--metric", "mind", "--neighbourhood", "21", "--out", str(heat), "--out-json", str(tmp_path / "h.json")]) == 0
    h, c = read_image(heat), read_image(ct)
    assert h.array.shape == (21, 21) and h.spacing == c.spacing


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "DeepSimilarityLib", "info", "/nonexistent.nii.gz"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "file not found" in result.stderr


def test_train_then_learned_heatmap_2d_and_3d(tmp_path, capsys):
    weights = tmp_path / "net.pt"
    assert main(["similarity", "train", "--phantom", "--pairs", "40", "--setting", "modern", "--threads", "1",
                 "--out", str(weights)]) == 0
    ct, mr = tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz"
    assert main(["phantom", "--out-ct", str(ct), "--out-mr", str(mr)]) == 0
    heat = tmp_path / "heat.nii.gz"
    assert main(["similarity", "heatmap", "--ct", str(ct), "--mr", str(mr), "--index", "60,128", "--metric", "learned",
                 "--weights", str(weights), "--cascade", str(weights), "--out", str(heat)]) == 0
    assert read_image(heat).array.shape == (81, 81)
    # the rank sum of the trained network (not the shipped one) and NMI: sums of two percentile ranks in (0, 2].
    # float32 on both sides: "auto" precision is chosen by timing, so two metrics may differ in the third decimal.
    assert main(["similarity", "heatmap", "--ct", str(ct), "--mr", str(mr), "--index", "60,128", "--metric",
                 "learned+nmi", "--weights", str(weights), "--neighbourhood", "21", "--precision", "float32",
                 "--out", str(heat)]) == 0
    from DeepSimilarityLib.heatmap import similarity_heatmap
    from DeepSimilarityLib.patch_metrics import get_metric

    from DeepSimilarityLib.ctmr.learned_metric import PRECISIONS

    metric = get_metric("learned+nmi", weights=weights, precision="float32")
    heatmap = ["similarity", "heatmap", "--ct", "c", "--mr", "m", "--index", "1,1", "--out", "h"]
    for precision in PRECISIONS:  # the CLI takes every precision the metric does
        assert build_parser().parse_args(heatmap + ["--precision", precision]).precision == precision
    assert [m.resolved_precision() for m in metric.metrics if hasattr(m, "resolved_precision")] == ["float32"]
    expected = similarity_heatmap(read_image(ct), read_image(mr), index=(60, 128), neighbourhood=21, metric=metric)
    summed = read_image(heat).array
    np.testing.assert_allclose(summed, expected.scores.array, atol=1e-6)
    assert 0 < summed.min() and summed.max() <= 2.0
    # A 2D network refuses 3D patches with a clear error, not a shape trace.
    ct3, mr3 = tmp_path / "ct3.nii.gz", tmp_path / "mr3.nii.gz"
    assert main(["phantom", "--shape", "40,64,64", "--out-ct", str(ct3), "--out-mr", str(mr3)]) == 0
    code, io = run(["similarity", "heatmap", "--ct", str(ct3), "--mr", str(mr3), "--index", "32,32,20", "--metric",
                    "learned", "--weights", str(weights), "--neighbourhood", "11", "--depth", "3", "--out", str(heat)], capsys)
    assert code == 2 and "trained on patches of 289 voxels" in io.err
    weights3 = tmp_path / "net3.pt"
    assert main(["similarity", "train", "--dim", "3", "--pairs", "10", "--setting", "modern", "--threads", "1",
                 "--out", str(weights3)]) == 0
    assert main(["similarity", "heatmap", "--ct", str(ct3), "--mr", str(mr3), "--index", "32,32,20", "--metric",
                 "learned", "--weights", str(weights3), "--neighbourhood", "11", "--depth", "3", "--out", str(heat)]) == 0
    assert read_image(heat).array.shape == (3, 11, 11)


def test_rank_error_result_names_carry_every_option_that_changes_the_numbers():
    from DeepSimilarityLib.cli import build_parser
    from DeepSimilarityLib.cli.evaluate import rank_error_stem

    def stem(*options):
        return rank_error_stem(build_parser().parse_args(["evaluate", "rank-error", *options]))

    assert stem() == "rank_error_head_T1_modern"  # the default preset
    recipe = ["--setting", "modern", "--negatives", "4", "--jitter", "1", "--patch-norm", "patch"]
    # The names the committed results were written under (10000 pairs is not named).
    assert stem(*recipe, "--pairs", "10000", "--train-outline-distance", "8", "--also-train-on", "T2",
                "--seed", "3") == "rank_error_head_T1_modern_neg4_jit1_patchnorm_plusT2_train8px_seed3"
    assert stem(*recipe, "--pairs", "20000", "--train-outline-distance", "8", "--also-train-on", "T2") \
        == "rank_error_head_T1_modern_neg4_jit1_patchnorm_plusT2_train8px_pairs20000"
    assert stem(*recipe, "--mirror-augment", "--train-outline-distance", "3") \
        == "rank_error_head_T1_modern_neg4_jit1_patchnorm_mirror"
