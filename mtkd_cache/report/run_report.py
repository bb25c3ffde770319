"""A run's report: the typed `RunReport`, and the files it is written to (report.json, report.md, the plot).

report.json is `RunReport.to_json()`: a `finetune` run has the scores, the config and the history; a
`distill` run adds who taught (`Teaching`) and, for a two-stage run, its first stage. Every file is
written atomically, so a killed run never leaves a report that looks finished.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.atomic import write_atomically
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import PER_CLASS_PLOT, RUN_REPORT, RUN_REPORT_MD
from mtkd_cache.report.evaluation import per_class_table
from mtkd_cache.report.plots import plot_per_class_differences


@dataclass
class Teaching:
    """What only a distillation run reports: who taught the training rows, and the experts it chose from."""

    followed: dict[str, int] | None  # one-hot strategies: training rows that followed each teacher; else None
    fallbacks: int | None  # `expert`, `expert-gold`: rows that followed M because no or several teachers claimed them
    experts: dict  # the expert table, as `experts --json` prints it
    expert_split: str
    eval_rows: int
    warnings: list[str] = field(default_factory=list)
    mean_weight: dict[str, float] = field(default_factory=dict)  # each teacher's mean weight over the training rows


@dataclass
class RunReport:
    """The evaluated best student of a run, beside the teachers (report.json's keys are these fields')."""

    accuracy: float
    macro_f1: float
    mcc: float
    per_class_accuracy: dict[str, dict[str, float | None]]  # "student" and each teacher -> class -> accuracy
    median_diff: dict[str, float | None]  # teacher -> median over classes of student − teacher
    confusion_matrix: list[list[int]]
    parameters: int
    ms_per_sample: float
    eval_split: str
    config: dict  # the run's config.json, without its fingerprint
    best_epoch: int
    history: list[dict]
    train_seconds: float
    teaching: Teaching | None = None  # None for `finetune`
    stage1: dict | None = None  # a two-stage run's first stage: split, epochs, strategy, rows, history, seconds

    @property
    def strategy(self) -> str:
        return self.config.get("strategy", "finetune")

    def to_json(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("teaching", "stage1")}
        teaching = dataclasses.asdict(self.teaching) if self.teaching is not None else {}
        return json.loads(json.dumps({**fields, **teaching, **({"stage1": self.stage1} if self.stage1 else {})}))

    @classmethod
    def from_json(cls, raw: dict) -> RunReport:
        names = {f.name for f in dataclasses.fields(cls)} - {"teaching", "stage1"}
        teaching_names = {f.name for f in dataclasses.fields(Teaching)}
        teaching = Teaching(**{k: raw[k] for k in teaching_names if k in raw}) if "followed" in raw else None
        return cls(**{k: raw[k] for k in names}, teaching=teaching, stage1=raw.get("stage1"))


def write_report(run_dir: Path, report: RunReport, label_names: tuple[str, ...]) -> None:
    """report.json; for a distillation run also report.md (thesis-style tables) and per_class_diff.png."""
    write_atomically(run_dir / RUN_REPORT, json.dumps(report.to_json(), indent=1), durable=False)
    if report.teaching is None:
        return
    teaching = report.teaching
    per_class = {name: [values[c] for c in label_names] for name, values in report.per_class_accuracy.items()}
    lines = [f"# Distillation report — {report.strategy} → {report.config['student']}", "",
             f"Evaluated on split `{report.eval_split}` ({teaching.eval_rows} rows); experts chosen on "
             f"`{teaching.expert_split}`.", "",
             "| metric | student |", "|---|---|",
             f"| accuracy | {report.accuracy:.4f} |", f"| macro-F1 | {report.macro_f1:.4f} |",
             f"| MCC | {report.mcc:.4f} |", "", "## Per-class accuracy", ""]
    lines += per_class_table(label_names, per_class)
    lines += ["", "## Median of per-class differences (student − teacher)", "", "| teacher | median diff |", "|---|---|"]
    lines += [f"| {t} | {d:+.4f} |" if d is not None else f"| {t} | – |" for t, d in report.median_diff.items()]
    lines += ["", "## Who taught", ""]
    if teaching.followed is not None:
        lines += ["| teacher | followed (train rows) |", "|---|---|"]
        lines += [f"| {t} | {n} |" for t, n in teaching.followed.items()]
    else:
        lines += ["| teacher | mean weight (train rows) |", "|---|---|"]
        lines += [f"| {t} | {w:.3f} |" for t, w in teaching.mean_weight.items()]
    if teaching.fallbacks is not None:
        lines += ["", f"`expert` fell back to M on {teaching.fallbacks} rows."]
    if teaching.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in teaching.warnings]
    lines += ["", f"![per-class differences]({PER_CLASS_PLOT})", ""]
    write_atomically(run_dir / RUN_REPORT_MD, "\n".join(lines), durable=False)
    title = f"{report.strategy} → {report.config['student']}: student − teacher per class ({report.eval_split})"
    plot_per_class_differences(run_dir / PER_CLASS_PLOT, label_names, per_class, title)


def load_run_report(run_dir: Path) -> RunReport:
    path = run_dir / RUN_REPORT
    if not path.exists():
        raise ConfigError(f"{run_dir} has no {RUN_REPORT}; is it a finished `distill` or `finetune` run?")
    try:
        return RunReport.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path} is not a run report ({error}); re-run the run that wrote it.") from error
