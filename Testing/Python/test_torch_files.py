"""torch_files: the one writer and reader of the project's torch files."""

import os

import pytest
import torch

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.torch_files import load_torch_file, save_torch_file


def test_round_trip_and_no_temporary_file_left(tmp_path):
    path = save_torch_file({"w": torch.arange(3.0), "meta": {"a": 1}}, tmp_path / "net.pt")
    got = load_torch_file(path, "network file")
    assert torch.equal(got["w"], torch.arange(3.0)) and got["meta"] == {"a": 1}
    assert os.listdir(tmp_path) == ["net.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = save_torch_file({"v": 1}, tmp_path / "net.pt")
    with pytest.raises(Exception):
        save_torch_file({"v": lambda: 2}, path)  # not picklable: the write fails half way
    assert load_torch_file(path, "network file") == {"v": 1} and os.listdir(tmp_path) == ["net.pt"]


def test_missing_damaged_and_code_carrying_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"none.pt: network file not found; hint$"):
        load_torch_file(tmp_path / "none.pt", "network file", "; hint")
    (tmp_path / "junk.pt").write_bytes(b"not a zip archive")
    with pytest.raises(InputError, match=r"junk.pt: not a readable model file \(\w+Error: .+\)$"):
        load_torch_file(tmp_path / "junk.pt", "model file")
    torch.save({"f": os.getcwd}, tmp_path / "code.pt")  # loading it would need to import and call code
    with pytest.raises(InputError, match="code.pt: not a readable model file"):
        load_torch_file(tmp_path / "code.pt", "model file")
