"""`distill` and `finetune`: train a student, from the cache alone or from a dataset, and report on it.

`distill` reads only the cache (inputs, teacher logits and predictions): no teacher is loaded. The
expert table is computed on `expert_split` from cached predictions; the strategy turns cached outputs
into per-sample teacher weights once per split (per epoch for `random` and `noisy`); the training loop
streams batches of student inputs with the matching rows of cached logits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtkd_cache import distributed
from mtkd_cache.cache.reader import Cache
from mtkd_cache.data.batching import tokenize_rows
from mtkd_cache.data.datasets import DatasetSpec, load_task_data
from mtkd_cache.devices import resolve_device
from mtkd_cache.distill.experts import ExpertTable, parse_teacher_subset
from mtkd_cache.distill.session import PreparedCache
from mtkd_cache.distill.strategies import NEEDS_EXPERTS, STOCHASTIC, STRATEGIES, StrategyConfig, TeacherSignal
from mtkd_cache.distill.students import build_student, count_parameters
from mtkd_cache.distill.training import (
    BEST_DIR,
    CHECKPOINT,
    Distillation,
    SplitTensors,
    TrainConfig,
    TrainResult,
    predict_logits,
    train,
)
from mtkd_cache.distributed import DistributedContext
from mtkd_cache.errors import ConfigError
from mtkd_cache.report.evaluation import compute_metrics, macro_f1, median_difference, write_report


@dataclass(frozen=True)
class TransferStage:
    """TMKD's first stage: distil on a transfer split (typically unlabeled: KD term only) before the task split.
    The student leaves stage 1 with its last epoch's weights and starts stage 2 from them."""

    split: str
    epochs: int = 1
    strategy: str | None = None  # None = the run's strategy


@dataclass(frozen=True)
class DistillConfig:
    cache: Path
    student: str
    out: Path
    strategy: StrategyConfig = StrategyConfig()
    alpha: float = 0.5
    temperature: float = 2.0
    teachers: str | None = None  # comma-separated subset; None = every teacher in the cache
    tokenizer: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    selection_split: str | None = None  # picks the best epoch; default validation if cached, else eval_split
    expert_split: str = "test"  # the source thesis chose experts on test; validation avoids the leak
    train: TrainConfig = TrainConfig()
    stage1: TransferStage | None = None


@dataclass
class RunResult:
    run_dir: Path
    report: dict
    train: TrainResult
    warnings: list[str] = field(default_factory=list)


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _portable(resolved: dict) -> dict:
    """The configuration without where things live: a moved run directory or cache still resumes."""
    return {key: value for key, value in resolved.items() if key not in ("out", "cache")}


def _refuse_another_run(run_dir: Path, fingerprint: str) -> None:
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.exists() and torch.load(checkpoint, map_location="cpu", weights_only=False)["fingerprint"] != fingerprint:
        raise ConfigError(f"{run_dir} holds a run with another configuration; choose a new --out or delete it.")


def _config_dict(config) -> dict:
    resolved = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    if resolved.get("stage1", 0) is None:
        del resolved["stage1"]  # one-stage runs keep the fingerprints they had before two-stage runs existed
    return resolved


def expert_table_for(cache: Cache, split: str, teachers: tuple[str, ...]) -> ExpertTable:
    return PreparedCache(cache).expert_table(split, teachers)


def resolve_splits(config: DistillConfig, split_names: tuple[str, ...]) -> str:
    """Check that every split the run names is cached; returns the selection split (default validation)."""
    selection_split = config.selection_split or ("validation" if "validation" in split_names else config.eval_split)
    for option, split in (("--train-split", config.train_split), ("--eval-split", config.eval_split),
                          ("--selection-split", selection_split), ("--expert-split", config.expert_split)):
        if split not in split_names:
            raise ConfigError(f"{option} {split}: the cache has splits {', '.join(split_names)}.")
    if config.stage1 is not None:
        if config.stage1.split not in split_names:
            raise ConfigError(f"--stage1-split {config.stage1.split}: the cache has splits {', '.join(split_names)}.")
        if config.stage1.epochs < 1:
            raise ConfigError("--stage1-epochs must be at least 1.")
        if (config.stage1.strategy or config.strategy.name) not in STRATEGIES:
            raise ConfigError(f"--stage1-strategy must be one of {', '.join(STRATEGIES)}, not '{config.stage1.strategy}'.")
    return selection_split


def _require_labels(prepared: PreparedCache, option: str, split: str) -> None:
    if not (prepared.inputs(split).labels >= 0).any():
        raise ConfigError(f"{option} {split}: that split has no gold labels (a transfer split?); "
                          "choose a labeled split.")


def distill(config: DistillConfig, progress=None, advance=None, prepared: PreparedCache | None = None,
            data_parallel: bool = True) -> RunResult:
    """Train one student from the cache; `prepared` shares the loaded cache between runs (see sweep).

    Under torchrun (and `data_parallel`) the ranks train one student with DistributedDataParallel;
    rank 0 alone writes the run directory, and every rank returns the same report."""
    if not 0 <= config.alpha <= 1:
        raise ConfigError(f"--alpha must be between 0 and 1, not {config.alpha}.")
    if config.temperature <= 0:
        raise ConfigError(f"--temperature must be positive, not {config.temperature}.")
    if config.strategy.name not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, not '{config.strategy.name}'.")
    prepared = prepared or PreparedCache(config.cache)
    cache = prepared.cache
    teachers = parse_teacher_subset(config.teachers, cache.teacher_names)
    selection_split = resolve_splits(config, cache.split_names)
    context = distributed.current() if data_parallel else DistributedContext()
    if not context.is_main:
        progress = advance = None
    warnings = []
    if config.expert_split == config.eval_split and config.strategy.name in NEEDS_EXPERTS:
        warnings.append(f"experts are chosen on '{config.expert_split}', the split the report evaluates on: the "
                        "reported score is optimistic (test labels leak); use --expert-split validation.")
    for option, split in (("--expert-split", config.expert_split), ("--selection-split", selection_split),
                          ("--eval-split", config.eval_split)):
        _require_labels(prepared, option, split)  # experts are never computed from unlabeled rows
    table = prepared.expert_table(config.expert_split, teachers)
    train_labels = prepared.inputs(config.train_split).labels
    if len(np.unique(train_labels[train_labels >= 0])) < 2:
        warnings.append(f"split '{config.train_split}' has fewer than two labeled classes; the student can only learn one.")

    def draw(epoch: int) -> TeacherSignal:
        return prepared.signal(config.strategy, teachers, config.train_split, config.expert_split, config.train.seed, epoch)

    first_signal = draw(0)

    def signal_for_epoch(epoch: int) -> TeacherSignal:
        # Deterministic strategies are computed once per split; random/noisy are re-drawn every epoch.
        return draw(epoch) if epoch > 0 and config.strategy.name in STOCHASTIC else first_signal
    config.train.validate()
    torch.manual_seed(config.train.seed)  # a student built from scratch starts from the seed's weights
    model, tokenizer, kind = build_student(config.student, cache.label_names, config.tokenizer)
    run_dir = config.out
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {**_config_dict(config), "strategy": config.strategy.name, "teachers": list(teachers),
                "selection_split": selection_split, "student_kind": kind}
    fingerprint = _fingerprint({**_portable(resolved), "cache_fingerprint": cache.manifest.dataset.fingerprint,
                                "teacher_weights": [cache.manifest.teachers[t].weights_sha256 for t in teachers]})
    _refuse_another_run(run_dir, fingerprint)
    if context.is_main:
        (run_dir / "config.json").write_text(json.dumps({**resolved, "fingerprint": fingerprint}, indent=1))

    split_tensors = {split: SplitTensors(prepared.tokens(tokenizer, config.train.max_length, split),
                                         prepared.inputs(split).labels)
                     for split in dict.fromkeys((config.train_split, selection_split, config.eval_split))}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    save = lambda directory: _save_student(model, tokenizer, directory)  # noqa: E731
    stage1 = None
    if config.stage1 is not None:
        stage1 = _transfer_stage(config, prepared, teachers, model, save, tokenizer, split_tensors[selection_split],
                                 run_dir, pad_id, fingerprint, progress, advance, context)
    result = train(model, save, split_tensors[config.train_split], split_tensors[selection_split], config.train,
                   run_dir, pad_id, Distillation(signal_for_epoch, config.alpha, config.temperature), macro_f1,
                   fingerprint, progress, advance, context)
    report = None
    if context.is_main:
        report = _report_run(config, prepared, teachers, table, first_signal, split_tensors, pad_id, run_dir, resolved,
                             warnings, result, stage1)
    return RunResult(run_dir, context.broadcast(report), result, warnings)


def _report_run(config: DistillConfig, prepared: PreparedCache, teachers: tuple[str, ...], table: ExpertTable,
                first_signal: TeacherSignal, split_tensors: dict[str, SplitTensors], pad_id: int, run_dir: Path,
                resolved: dict, warnings: list[str], result: TrainResult, stage1: TrainResult | None) -> dict:
    cache = prepared.cache
    _, eval_preds = prepared.teacher_tensors(config.eval_split, teachers)
    teacher_per_class = {t: compute_metrics(eval_preds[:, n].numpy(), split_tensors[config.eval_split].labels,
                                            len(cache.label_names)).per_class_accuracy for n, t in enumerate(teachers)}
    chosen = first_signal.weights.argmax(dim=1)
    report = _evaluate(run_dir, split_tensors[config.eval_split], cache.label_names, config.train.device, pad_id,
                       teacher_per_class)
    report.update({
        "followed": {t: int((chosen == n).sum()) for n, t in enumerate(teachers)},
        "fallbacks": int(first_signal.fell_back.sum()) if first_signal.fell_back is not None else None,
        "experts": table.to_json(), "eval_split": config.eval_split, "expert_split": config.expert_split,
        "eval_rows": len(split_tensors[config.eval_split].labels), "config": resolved, "warnings": warnings,
        "history": [dataclasses.asdict(r) for r in result.history], "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds + (stage1.train_seconds if stage1 else 0.0),
    })
    if stage1 is not None:
        report["stage1"] = {**dataclasses.asdict(config.stage1), "strategy": config.stage1.strategy or config.strategy.name,
                            "rows": len(prepared.inputs(config.stage1.split).labels),
                            "history": [dataclasses.asdict(r) for r in stage1.history],
                            "train_seconds": stage1.train_seconds}
    write_report(run_dir, report, cache.label_names)
    _write_history(run_dir, result, stage1)
    return report


STAGE1_DIR = "stage1"


def _transfer_stage(config: DistillConfig, prepared: PreparedCache, teachers: tuple[str, ...], model, save,
                    tokenizer, selection: SplitTensors, run_dir: Path, pad_id: int, fingerprint: str,
                    progress, advance, context: DistributedContext) -> TrainResult:
    """Stage 1 in run_dir/stage1 (its own checkpoint, so a killed run resumes in either stage)."""
    stage = config.stage1
    strategy = dataclasses.replace(config.strategy, name=stage.strategy or config.strategy.name)

    def signal_for_epoch(epoch: int) -> TeacherSignal:
        drawn = epoch if strategy.name in STOCHASTIC else 0
        return prepared.signal(strategy, teachers, stage.split, config.expert_split, config.train.seed, drawn)

    tensors = SplitTensors(prepared.tokens(tokenizer, config.train.max_length, stage.split),
                           prepared.inputs(stage.split).labels)
    train_config = dataclasses.replace(config.train, epochs=stage.epochs, warmup_epochs=0, patience=None)
    (run_dir / STAGE1_DIR).mkdir(exist_ok=True)
    labelled = (lambda description, total: progress(f"stage 1 · {description}", total)) if progress else None
    return train(model, save, tensors, selection, train_config, run_dir / STAGE1_DIR, pad_id,
                 Distillation(signal_for_epoch, config.alpha, config.temperature), macro_f1, fingerprint + ":stage1",
                 labelled, advance, context)


def _save_student(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _write_history(run_dir: Path, result: TrainResult, stage1: TrainResult | None = None) -> None:
    """One line per epoch; a two-stage run lists stage 1's epochs first, marked "stage": 1."""
    with open(run_dir / "metrics.jsonl", "w") as handle:
        for stage, records in ((1, stage1.history if stage1 else []), (2 if stage1 else None, result.history)):
            for record in records:
                line = dataclasses.asdict(record) | ({"stage": stage} if stage else {})
                handle.write(json.dumps(line) + "\n")


def _evaluate(run_dir: Path, eval_split: SplitTensors, label_names: tuple[str, ...], device: str, pad_id: int,
              teacher_per_class: dict[str, list]) -> dict:
    """Reload the saved best student and score it: the report describes the files on disk, not the loop's state."""
    from mtkd_cache.distill.students import load_saved_student

    model, _ = load_saved_student(run_dir / BEST_DIR)
    torch_device = resolve_device(device)
    model.to(torch_device)
    started = time.perf_counter()
    preds = predict_logits(model, eval_split.tokens, pad_id, torch_device).argmax(axis=1)
    ms_per_sample = 1000 * (time.perf_counter() - started) / max(1, len(preds))
    metrics = compute_metrics(preds, eval_split.labels, len(label_names))
    per_class = {"student": dict(zip(label_names, metrics.per_class_accuracy))}
    per_class.update({t: dict(zip(label_names, values)) for t, values in teacher_per_class.items()})
    return {
        "accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "mcc": metrics.mcc,
        "per_class_accuracy": per_class,
        "median_diff": {t: median_difference(metrics.per_class_accuracy, v) for t, v in teacher_per_class.items()},
        "confusion_matrix": metrics.confusion_matrix, "parameters": count_parameters(model),
        "ms_per_sample": ms_per_sample,
    }


@dataclass(frozen=True)
class FinetuneConfig:
    dataset: DatasetSpec
    student: str
    out: Path
    tokenizer: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    selection_split: str | None = None
    train: TrainConfig = TrainConfig()


def finetune(config: FinetuneConfig, progress=None, advance=None) -> RunResult:
    """Plain supervised fine-tuning of a teacher or student from a dataset: the same loop, no cache."""
    task = load_task_data(config.dataset)
    selection_split = config.selection_split or ("validation" if "validation" in task.splits else config.eval_split)
    for option, split in (("--train-split", config.train_split), ("--eval-split", config.eval_split),
                          ("--selection-split", selection_split)):
        if split not in task.splits:
            raise ConfigError(f"{option} {split}: the dataset has splits {', '.join(task.splits)}.")
    config.train.validate()
    torch.manual_seed(config.train.seed)
    model, tokenizer, kind = build_student(config.student, task.label_names, config.tokenizer)
    run_dir = config.out
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {**_config_dict(config), "selection_split": selection_split, "student_kind": kind}
    fingerprint = _fingerprint({**_portable(resolved), "dataset_fingerprint": task.fingerprint})
    _refuse_another_run(run_dir, fingerprint)
    context = distributed.current()
    if context.is_main:
        (run_dir / "config.json").write_text(json.dumps({**resolved, "fingerprint": fingerprint}, indent=1))
    else:
        progress = advance = None
    tensors = {name: SplitTensors(tokenize_rows(tokenizer, s.texts, s.text_pairs, config.train.max_length), s.labels)
               for name, s in task.splits.items() if name in (config.train_split, selection_split, config.eval_split)}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = train(model, lambda d: _save_student(model, tokenizer, d), tensors[config.train_split],
                   tensors[selection_split], config.train, run_dir, pad_id, None, macro_f1, fingerprint,
                   progress, advance, context)
    report = None
    if context.is_main:
        report = _evaluate(run_dir, tensors[config.eval_split], task.label_names, config.train.device, pad_id, {})
        report.update({"eval_split": config.eval_split, "config": resolved, "best_epoch": result.best_epoch,
                       "history": [dataclasses.asdict(r) for r in result.history], "train_seconds": result.train_seconds})
        (run_dir / "report.json").write_text(json.dumps(report, indent=1))
        _write_history(run_dir, result)
    return RunResult(run_dir, context.broadcast(report), result)


@dataclass
class Selection:
    """Who taught which row: per-sample weights over the teacher subset, as `select` writes them."""

    split: str
    strategy: str
    teachers: tuple[str, ...]
    sample_ids: np.ndarray
    weights: np.ndarray  # float32 [S, N]
    followed: dict[str, int]  # rows whose largest weight is this teacher's
    fallbacks: int | None  # `expert` only: rows that followed M because |S| was 0 or > 1


def select_teachers(cache_dir: Path, split: str, strategy: StrategyConfig, teachers: str | None = None,
                    expert_split: str = "test", seed: int = 0) -> Selection:
    prepared = PreparedCache(cache_dir)
    subset = parse_teacher_subset(teachers, prepared.cache.teacher_names)
    for option, name in (("--split", split), ("--expert-split", expert_split)):
        if name not in prepared.cache.split_names:
            raise ConfigError(f"{option} {name}: the cache has splits {', '.join(prepared.cache.split_names)}.")
    signal = prepared.signal(strategy, subset, split, expert_split, seed, 0)
    chosen = signal.weights.argmax(dim=1)
    return Selection(split, strategy.name, subset, prepared.inputs(split).sample_ids, signal.weights.numpy().astype(np.float32),
                     {t: int((chosen == n).sum()) for n, t in enumerate(subset)},
                     int(signal.fell_back.sum()) if signal.fell_back is not None else None)


def write_selection(path: Path, selection: Selection) -> None:
    """Parquet with `sample_id` and `weights` (list of N float32); teacher names in the `teachers` metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    num_teachers = len(selection.teachers)
    table = pa.table({"sample_id": pa.array(selection.sample_ids, pa.int64()),
                      "weights": pa.FixedSizeListArray.from_arrays(pa.array(selection.weights.reshape(-1)), num_teachers)})
    table = table.replace_schema_metadata({"teachers": json.dumps(list(selection.teachers)),
                                           "strategy": selection.strategy, "split": selection.split})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
