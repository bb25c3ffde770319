"""Fixtures shared by every test module: the offline environment, shared read-only assets, one torch thread.

Plain helpers live in tests/helpers/ and are imported from there (never from this file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.assets import make_teacher, write_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Shared read-only assets: a dataset directory and three teachers."""
    root = tmp_path_factory.mktemp("assets")
    return {
        "data": write_dataset(root / "data"),
        # Two architectures; `distil` lists its labels in another order than the dataset.
        "bert": make_teacher(root / "bert", "bert", seed=1),
        "distil": make_teacher(root / "distil", "distilbert", labels=("tech", "politics", "sports"), seed=2),
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a small shared machine: one intra-op thread is several times faster than two
    oversubscribed ones, and matches the OMP_NUM_THREADS=1 subprocesses some tests compare against."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
