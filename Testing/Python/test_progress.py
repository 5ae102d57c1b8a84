"""Library support for the Slicer module's background jobs: ``deepsim --progress-json`` (progress bars as
JSON lines, DeepSimilarityLib.progress) and the training sources read from image files."""

from tqdm import tqdm

from DeepSimilarityLib import progress
from DeepSimilarityLib.cli import build_parser


def test_json_bars_print_fractions_on_stdout(capsys):
    progress.set_json_progress(True)
    try:
        bar = progress.progress_bar(total=4, desc="training", unit="epoch", mininterval=0)
        for _ in range(4):
            bar.update(1)
        bar.set_postfix_str("finetune")
        bar.close()
    finally:
        progress.set_json_progress(False)
    out, err = capsys.readouterr()
    lines = [progress.parse_progress_line(line) for line in out.splitlines() if line.strip()]
    assert all(lines) and err == ""
    fractions = [line["progress"] for line in lines]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert lines[-1]["desc"] == "training" and lines[-1]["stage"] == "finetune" and lines[-1]["total"] == 4


def test_plain_bars_stay_tqdm_and_other_lines_are_not_progress():
    bar = progress.progress_bar(total=2, disable=True)
    assert type(bar) is tqdm
    assert progress.parse_progress_line("wrote out.pt") is None
    assert progress.parse_progress_line('{"progress": 0.5') is None


def test_the_option_is_global():
    args = build_parser().parse_args(["--progress-json", "info", "x.nii.gz"])
    assert args.progress_json is True
    assert build_parser().parse_args(["info", "x.nii.gz"]).progress_json is False


def test_training_sets_from_image_files(tmp_path):
    """The file sources of ``similarity train --ct-image/--mr-image`` and ``train features --image/--labels``."""
    import numpy as np
    import pytest

    from DeepSimilarityLib.cli.train_registration import labelled_image_set
    from DeepSimilarityLib.ctmr.experiment import image_pair_slices
    from DeepSimilarityLib.errors import InputError
    from DeepSimilarityLib.image_io import Volume, write_image

    rng = np.random.default_rng(0)
    image = Volume(rng.random((3, 10, 13)).astype(np.float32) * 100)
    labels = np.zeros((3, 10, 13), np.int16)
    labels[1, 2:5, 3:6] = 7
    labels[1, 6:8, 1:4] = 40
    write_image(image, tmp_path / "image.nii.gz")
    write_image(Volume(labels), tmp_path / "labels.nii.gz")
    x, y = labelled_image_set(tmp_path / "image.nii.gz", tmp_path / "labels.nii.gz")
    assert tuple(x.shape) == (1, 1, 12, 16) and tuple(y.shape) == (1, 12, 16)  # labelled slice only, padded to 4
    assert sorted(np.unique(y.numpy()).tolist()) == [0, 1, 2]  # ids 7 and 40 renumbered
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with pytest.raises(InputError):
        labelled_image_set(tmp_path / "image.nii.gz", tmp_path / "missing.nii.gz")
    slices, source = image_pair_slices(tmp_path / "image.nii.gz", tmp_path / "image.nii.gz")
    assert len(slices) == 3 and slices[0][0].shape == (10, 13) and "3 registered 3D" in source
