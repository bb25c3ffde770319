"""The run report: RunReport is report.json's shape both ways, written atomically; compare_runs' table and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import COMPARISON_MD, COMPARISON_PLOT, PER_CLASS_PLOT, RUN_REPORT, RUN_REPORT_MD
from mtkd_cache.report.comparison import compare_runs
from mtkd_cache.report.run_report import RunReport, Teaching, load_run_report, write_report

LABELS = ("politics", "sports")


def make_report(accuracy: float, strategy: str | None = "expert", teachers=("bert", "distil")) -> RunReport:
    teaching = Teaching(followed={t: 2 for t in teachers}, fallbacks=1, experts={"fallback": teachers[0]},
                        expert_split="validation", eval_rows=4, warnings=["a warning"]) if strategy else None
    config = {"student": "bilstm", **({"strategy": strategy} if strategy else {})}
    return RunReport(accuracy=accuracy, macro_f1=accuracy / 2, mcc=0.25,
                     per_class_accuracy={"student": {"politics": 1.0, "sports": None},
                                         **{t: {"politics": 0.5, "sports": 0.5} for t in (teachers if strategy else ())}},
                     median_diff={t: 0.5 for t in (teachers if strategy else ())}, confusion_matrix=[[2, 0], [1, 1]],
                     parameters=1234, ms_per_sample=0.5, eval_split="test", config=config, best_epoch=0,
                     history=[{"epoch": 0, "phase": "distill", "train_loss": 1.0, "selection_score": 0.5, "seconds": 1.0}],
                     train_seconds=1.0, teaching=teaching)


def test_a_distill_report_is_its_json_both_ways_and_writes_every_file(tmp_path):
    report = make_report(0.75)
    write_report(tmp_path, report, LABELS)
    saved = json.loads((tmp_path / RUN_REPORT).read_text())
    assert saved == report.to_json()
    assert {"accuracy", "followed", "fallbacks", "experts", "expert_split", "eval_rows", "warnings"} <= saved.keys()
    assert "teaching" not in saved and "stage1" not in saved
    assert RunReport.from_json(saved) == report == load_run_report(tmp_path)
    assert report.to_json()["accuracy"] == report.accuracy == 0.75
    markdown = (tmp_path / RUN_REPORT_MD).read_text()
    assert "expert → bilstm" in markdown and "fell back to M on 1 rows" in markdown and "- a warning" in markdown
    assert (tmp_path / PER_CLASS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_finetune_report_has_no_teaching_keys_and_only_report_json(tmp_path):
    report = make_report(0.5, strategy=None)
    write_report(tmp_path, report, LABELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_REPORT]
    saved = json.loads((tmp_path / RUN_REPORT).read_text())
    assert "followed" not in saved and RunReport.from_json(saved).teaching is None
    assert RunReport.from_json(saved).strategy == "finetune"


def _table(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]


def test_compare_runs_writes_the_table_it_returns(tmp_path):
    runs = []
    for name, accuracy, strategy in (("a", 0.75, "expert"), ("b", 0.5, None)):
        runs.append(tmp_path / name)
        write_report(runs[-1], make_report(accuracy, strategy), LABELS)
    comparison = compare_runs(runs, tmp_path / "cmp", appendix=["## Appendix", "", "| x | y |"])
    header, separator, *rows = _table((tmp_path / "cmp" / COMPARISON_MD).read_text())
    assert header == comparison.columns == ["run", "strategy", "accuracy", "macro-F1", "MCC", "median Δ bert",
                                            "median Δ distil", "params", "ms/sample"]
    assert set(separator) == {"---"}
    assert rows[:2] == comparison.rows == [["a", "expert", "0.7500", "0.3750", "0.2500", "+0.500", "+0.500", "1,234", "0.50"],
                                           ["b", "finetune", "0.5000", "0.2500", "0.2500", "–", "–", "1,234", "0.50"]]
    assert rows[2] == ["x", "y"] and "## Appendix" in (tmp_path / "cmp" / COMPARISON_MD).read_text()
    assert (tmp_path / "cmp" / COMPARISON_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert comparison.written == (tmp_path / "cmp" / COMPARISON_MD, tmp_path / "cmp" / COMPARISON_PLOT)
    assert compare_runs(runs).written == () and not (tmp_path / COMPARISON_MD).exists()


def test_compare_runs_refuses_a_directory_without_a_report(tmp_path):
    with pytest.raises(ConfigError, match="has no report.json"):
        compare_runs([Path(tmp_path)])
