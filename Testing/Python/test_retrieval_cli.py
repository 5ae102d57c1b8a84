"""``deepsim train siamese|hashing`` on a tiny image folder with a multi-label CSV; errors exit 2."""

import numpy as np
import pytest
import torch

from DeepSimilarityLib.cli import main
from DeepSimilarityLib.image_io import Volume, write_image
from DeepSimilarityLib.retrieval.encoder import Encoder
from DeepSimilarityLib.retrieval.models_io import file_sha256, load_retrieval_model


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["image,labels,patient"]
    for i in range(24):
        a = rng.uniform(0, 60, (20, 20))
        a[: 10 if i % 2 else 20, :10] += 150  # two looks, for the labels 'A' and 'B'
        write_image(Volume(a.astype(np.uint8)), folder / f"{i}.png")
        labels = "A" if i % 2 else "B|C" if i % 3 == 0 else "No Finding"
        rows.append(f"{i}.png,{labels},p{i // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def common(folder, out):
    return ["--images", str(folder), "--csv", str(folder.parent / "labels.csv"), "--patient-column", "patient",
            "--size", "16", "--width", "4", "--epochs", "1", "--holdout", "0.25", "--out", str(out)]


def test_train_hashing_and_siamese_from_csv(image_folder, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "hash.pt"
    assert main(["train", "hashing", "--bits", "16"] + common(image_folder, out)) == 0
    enc = load_retrieval_model(out)
    assert isinstance(enc, Encoder) and enc.kind == "binary" and enc.size == 16
    assert enc.model_id == file_sha256(out) and enc.image_shape == (16, 16)
    assert enc.encode(np.zeros((3, 16, 16), np.float32)).shape == (3, 2)
    assert enc.metadata["label_names"] == ["A", "B", "C"]
    # the held-out quarter is scored with the hashing paper's metrics, against the training images
    scores = enc.metadata["held_out_scores"]
    assert set(scores) == {"ndcg", "acg", "wmap", "queries", "p"} and 0 < scores["queries"] <= 6
    assert 0 <= scores["ndcg"] <= 1 and scores["acg"] >= 0
    out = tmp_path / "siamese.pt"
    assert main(["train", "siamese", "--embedding-dim", "8"] + common(image_folder, out)) == 0
    enc = load_retrieval_model(out)
    assert enc.kind == "dense" and enc.encode(np.zeros((2, 16, 16), np.float32)).shape == (2, 8)
    scores = enc.metadata["held_out_scores"]
    assert set(scores) == {"map", "mrr", "queries"} and 0 < scores["map"] <= 1 and 0 < scores["mrr"] <= 1
    assert "wrote" in capsys.readouterr().out


def test_bad_training_inputs_exit_2(image_folder, tmp_path, capsys):
    cases = [
        (["train", "hashing", "--bits", "10"] + common(image_folder, tmp_path / "a.pt"), "--bits"),
        (["train", "hashing", "--images", str(image_folder), "--out", str(tmp_path / "b.pt")], "--csv"),
        (["train", "siamese"] + common(image_folder, tmp_path / "no" / "c.pt"), "does not exist"),
        (["train", "hashing", "--images", str(image_folder), "--csv", str(tmp_path / "none.csv"),
          "--out", str(tmp_path / "d.pt")], "none.csv"),
        (["evaluate", "retrieval", "--out-dir", str(tmp_path / "nope")], "does not exist"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0, err
    assert not any(tmp_path.glob("*.pt"))
