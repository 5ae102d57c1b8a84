"""Shared fixtures: where the real data is, and a skip marker for when it is not."""

from __future__ import annotations

import pytest

from DeepSimilarityLib.paths import data_root, has_shared_data


def benchmark_script(name: str):
    """The module of ``benchmarks/<name>.py`` (not a package), loaded fresh so a test can patch its globals."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_data(sub: str):
    """Skip the calling test when ``../shared/data/<sub>`` is absent (e.g. a user's fresh clone)."""
    if not has_shared_data(sub):
        pytest.skip(f"real data {data_root() / sub} not found (it lives in ../shared/data beside the project)")
    return data_root() / sub


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private cache folder so tests neither read nor fill the user's cache."""
    monkeypatch.setenv("DEEPSIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def one_thread():
    """torch on one thread for the test (deterministic reductions, no oversubscription), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
