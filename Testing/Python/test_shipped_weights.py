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


def test_manifest_entry_names_the_feature_files_without_this_machines_folders(tmp_path):
    from DeepSimilarityLib.registration import RegistrationNet, save_registration_net
    from DeepSimilarityLib.weights_manifest import model_entry

    for features, expected in (("/home/me/f.pt", "f.pt"), (["/a/f.pt", "/b/g.pt"], ["f.pt", "g.pt"])):
        path = save_registration_net(RegistrationNet(2), tmp_path / "r.pt", {"features": features, "loss": "mse"})
        entry = model_entry(path, "deepsim-registration", "deepsim train registration ...", "brain-mr")
        assert entry["hyper_parameters"]["features"] == expected
