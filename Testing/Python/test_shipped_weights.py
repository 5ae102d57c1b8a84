"""Shipped weights are checked against weights/manifest.json before use."""

import json
import shutil

import pytest

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.paths import shipped_weights, weights_dir


def test_every_manifest_entry_matches_its_file():
    manifest = json.loads((weights_dir() / "manifest.json").read_text())
    for entry in manifest["models"]:
        path = shipped_weights(entry["file"])
        assert path.stat().st_size < 10 * 2 ** 20, f"{entry['file']} is over 10 MB"


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    for f in weights_dir().iterdir():
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setenv("DEEPSIM_WEIGHTS", str(tmp_path))
    return tmp_path


def test_damaged_weights_are_refused_and_missing_ones_name_their_command(weights_copy):
    target = weights_copy / "ctmr_similarity.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        shipped_weights("ctmr_similarity.pt")
    target.unlink()
    with pytest.raises(InputError, match="deepsim similarity train"):
        shipped_weights("ctmr_similarity.pt")
    from DeepSimilarityLib.patch_metrics import get_metric

    with pytest.raises(InputError, match="missing"):
        get_metric("learned")
