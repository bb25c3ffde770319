"""The README's "Your own training loop" blocks, run as they are written: the plain PyTorch loop, then the
Trainer variant on the same model and dataset."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers.assets import make_teacher
from helpers.reference import build_teacherless_cache

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blocks() -> list[str]:
    section = README.read_text().split("## Your own training loop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_blocks_run(assets, tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    build_teacherless_cache(assets, tmp_path / "build")
    shutil.copytree(tmp_path / "build" / "cache", tmp_path / "work" / "cache")
    make_teacher(tmp_path / "my-student", "bert", seed=4, num_layers=1)  # labels in the cache's order
    monkeypatch.chdir(tmp_path)
    plain, trainer_block = _blocks()
    namespace: dict = {}
    exec(compile(plain, str(README), "exec"), namespace)  # noqa: S102 - the documented example itself
    assert torch.isfinite(namespace["loss"]) and namespace["train"].epoch == 1
    before = [p.detach().clone() for p in namespace["model"].parameters()]
    exec(compile(trainer_block, str(README), "exec"), namespace)  # noqa: S102
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2 * -(-len(namespace["train"]) // 16)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, namespace["model"].parameters()))
