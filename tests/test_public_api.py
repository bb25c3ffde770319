"""The README's "Python API" block, run as it is written: every stage through the library alone, no CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import mtkd_cache

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_every_public_name_resolves():
    for name in mtkd_cache.__all__:
        assert getattr(mtkd_cache, name) is not None, name
    with pytest.raises(AttributeError):
        mtkd_cache.no_such_name  # noqa: B018


@pytest.mark.slow
def test_the_readme_python_api_block_runs(assets, tmp_path, monkeypatch):
    shutil.copytree(assets["data"], tmp_path / "data")
    for name in ("bert", "distil"):
        shutil.copytree(assets[name], tmp_path / "teachers" / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_api_block(), str(README), "exec"), namespace)  # noqa: S102 - the documented example itself

    assert namespace["built"].shards_written > 0
    assert namespace["logits"].shape[1:] == (2, 3)
    experts = namespace["experts"]
    assert len(experts.experts) == 3 and {experts.teachers[i] for i in experts.experts} <= {"bert", "distil"}
    assert len(namespace["selection"].sample_ids) == len(namespace["cache"].inputs("train").texts)
    assert 0.0 <= namespace["run"].report.accuracy <= 1.0
    assert len(namespace["sweep"].rows) == 4 and (tmp_path / "work/runs/sweep/leaderboard.md").exists()
    assert len(namespace["comparison"].rows) == 5 and (tmp_path / "work/runs/compare/comparison.md").exists()
    assert (tmp_path / "work/onnx/student.onnx").stat().st_size > 0
