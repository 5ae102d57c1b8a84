"""``deepsim --progress-json``: progress bars as JSON lines (DeepSimilarityLib.progress)."""

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
