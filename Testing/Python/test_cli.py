"""The command line: help for every command, one-line errors with exit code 2, nothing written on failure."""

import subprocess
import sys

import numpy as np
import pytest

from DeepSimilarityLib.cli import main
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
        (["index", "create"], "not available"),
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
