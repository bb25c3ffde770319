"""`distill` and `finetune`: train a student, from the cache alone or from a dataset, and report on it.

`distill` reads only the cache (inputs, teacher logits and predictions): no teacher is loaded. The
expert table is computed on `expert_split` from cached predictions; the strategy turns cached outputs
into per-sample teacher weights once per split (per epoch for `random` and `noisy`); the training loop
streams batches of student inputs with the matching rows of cached logits. Both share one skeleton:
open the `Run` (identity, resume check), record its config, train, evaluate the saved best student,
write the report.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtkd_cache import distributed
from mtkd_cache.cache.reader import Cache
from mtkd_cache.cache.store import fetch
from mtkd_cache.data.batching import tokenize_rows
from mtkd_cache.data.datasets import load_task_data
from mtkd_cache.devices import resolve_device
from mtkd_cache.distillation.configs import DistillConfig, FinetuneConfig, TransferStage
from mtkd_cache.distillation.experts import expert_table_for, parse_teacher_subset
from mtkd_cache.distillation.run import Run, RunIdentity, StageEvents, config_payload, epoch_json
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.strategies import NEEDS_EXPERTS, STOCHASTIC, StrategyConfig, TeacherSignal, who_taught
from mtkd_cache.distillation.students import (
    build_student,
    check_max_length,
    count_parameters,
    load_saved_student,
    student_source_digest,
    student_source_record,
)
from mtkd_cache.distillation.training import Distillation, SplitTensors, TrainResult, predict_logits, train
from mtkd_cache.distributed import DistributedContext
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import STAGE1_DIR, STUDENT_DIR
from mtkd_cache.progress import ProgressEvents, SilentEvents
from mtkd_cache.report.evaluation import compute_metrics, macro_f1, median_difference
from mtkd_cache.report.run_report import RunReport, Teaching

__all__ = ["DistillConfig", "FinetuneConfig", "RunResult", "TransferStage", "distill", "distill_identity",
           "expert_table_for", "finetune", "resolve_splits"]


@dataclass
class RunResult:
    run_dir: Path
    report: RunReport
    train: TrainResult
    warnings: list[str] = field(default_factory=list)


def resolve_splits(config: DistillConfig, split_names: tuple[str, ...]) -> str:
    """Check that every split the run names is cached; returns the selection split (default validation)."""
    selection_split = config.selection_split or ("validation" if "validation" in split_names else config.eval_split)
    for option, split in (("--train-split", config.train_split), ("--eval-split", config.eval_split),
                          ("--selection-split", selection_split), ("--expert-split", config.expert_split)):
        if split not in split_names:
            raise ConfigError(f"{option} {split}: the cache has splits {', '.join(split_names)}.")
    if config.stage1 is not None and config.stage1.split not in split_names:
        raise ConfigError(f"--stage1-split {config.stage1.split}: the cache has splits {', '.join(split_names)}.")
    return selection_split


def splits_read(config: DistillConfig) -> tuple[str, ...]:
    """Every split a distill run may read (the selection split defaults to validation when it is cached)."""
    splits = (config.train_split, config.eval_split, config.expert_split, config.selection_split or "validation")
    return tuple(dict.fromkeys(splits + ((config.stage1.split,) if config.stage1 is not None else ())))


def distill_identity(config: DistillConfig, cache: Cache) -> RunIdentity:
    """The identity of a distill run on `cache`: its config resolved against the cache (teacher subset,
    selection split, strategy options spelled out), and the content it reads."""
    teachers = parse_teacher_subset(config.teachers, cache.teacher_names)
    resolved = config_payload(config)
    if resolved["stage1"] is None:
        del resolved["stage1"]  # a one-stage run's config.json has no stage1 key
    resolved.update(strategy=config.strategy.name.value, noise_std=config.strategy.noise_std,
                    gamma=config.strategy.gamma, teachers=list(teachers),
                    selection_split=resolve_splits(config, cache.split_names), **strategy_options(config.strategy))
    manifest = cache.manifest
    return RunIdentity(resolved, {"cache_fingerprint": manifest.dataset.fingerprint,
                                  "teacher_weights": [manifest.teachers[t].weights_sha256 for t in teachers],
                                  **student_source_digest(config.student)})


def strategy_options(strategy: StrategyConfig) -> dict:
    """The strategy options a run was given beyond the defaults (absent otherwise, so that the identity of
    a run with default options is what it was before these options existed)."""
    chosen = config_payload(strategy)
    defaults = config_payload(StrategyConfig(strategy.name))
    return {key: value for key, value in chosen.items()
            if key not in ("name", "noise_std", "gamma") and value != defaults[key]}


def _require_labels(prepared: PreparedCache, option: str, split: str) -> None:
    if not (prepared.inputs(split).labels >= 0).any():
        raise ConfigError(f"{option} {split}: that split has no gold labels (a transfer split?); "
                          "choose a labeled split.")


def distill(config: DistillConfig, events: ProgressEvents | None = None, *, prepared: PreparedCache | None = None,
            data_parallel: bool = True) -> RunResult:
    """Train one student from the cache; `prepared` shares the loaded cache between runs (see sweep).

    `events` gets a task per epoch and an advance per batch. Under
    torchrun (and `data_parallel`) the ranks train one student with DistributedDataParallel; rank 0 alone
    writes the run directory, and every rank returns the same report."""
    resolve_device(config.train.device)  # a missing GPU is refused first: nothing written, nothing loaded
    source: dict = {}
    if prepared is None:
        fetched = fetch(config.cache, config.teachers, splits_read(config), events)
        if fetched.url is not None:
            (events or SilentEvents()).note(f"{fetched.url}: {fetched.shards_moved} shard(s), {fetched.bytes_moved:,} "
                                            f"bytes fetched into {fetched.path}")
            source = {"cache_url": fetched.url, "manifest_sha256": fetched.manifest_sha256}  # recorded in run.json
        prepared = PreparedCache(fetched.path)
    cache = prepared.cache
    identity = distill_identity(config, cache)
    teachers, selection_split = tuple(identity.config["teachers"]), identity.config["selection_split"]
    context = distributed.current() if data_parallel else DistributedContext()
    events = (events if context.is_main else None) or SilentEvents()
    warnings = []
    if config.expert_split == config.eval_split and config.strategy.name in NEEDS_EXPERTS:
        warnings.append(f"experts are chosen on '{config.expert_split}', the split the report evaluates on: the "
                        "reported score is optimistic (test labels leak); use --expert-split validation.")
    for option, split in (("--expert-split", config.expert_split), ("--selection-split", selection_split),
                          ("--eval-split", config.eval_split)):
        _require_labels(prepared, option, split)  # experts are never computed from unlabeled rows
    prepared.strategy_table(config.strategy, config.expert_split, teachers)  # computed (and checked) before training
    train_labels = prepared.inputs(config.train_split).labels
    if len(np.unique(train_labels[train_labels >= 0])) < 2:
        warnings.append(f"split '{config.train_split}' has fewer than two labeled classes; the student can only learn one.")

    def draw(epoch: int) -> TeacherSignal:
        return prepared.signal(config.strategy, teachers, config.train_split, config.expert_split, config.train.seed, epoch)

    first_signal = draw(0)

    def signal_for_epoch(epoch: int) -> TeacherSignal:
        # Deterministic strategies are computed once per split; random/noisy are re-drawn every epoch.
        return draw(epoch) if epoch > 0 and config.strategy.name in STOCHASTIC else first_signal

    run = Run(config.out, identity, context)
    resume = run.checkpoint()  # before anything is written: another run's directory stays untouched
    _note_resume(events, run, resume)
    torch.manual_seed(config.train.seed)  # a student built from scratch starts from the seed's weights
    model, tokenizer, kind = build_student(config.student, cache.label_names, config.tokenizer)
    check_max_length(model, config.train.max_length)
    with run.removed_if_refused():  # a fresh --out refused while setting up is not left half-written
        run.start(student_kind=kind, **source, **student_source_record(config.student))
        split_tensors = {split: SplitTensors(prepared.tokens(tokenizer, config.train.max_length, split),
                                             prepared.inputs(split).labels)
                         for split in dict.fromkeys((config.train_split, selection_split, config.eval_split))}
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        save = lambda directory: _save_student(model, tokenizer, directory)  # noqa: E731
        for warning in warnings:  # once the run is set up, before training: a user can stop a run it invalidates
            events.note(f"warning: {warning}")
        stage1 = None
        if config.stage1 is not None:
            stage1 = _transfer_stage(config, prepared, teachers, model, save, tokenizer, split_tensors[selection_split],
                                     run, pad_id, events)
        result = train(model, save, split_tensors[config.train_split], split_tensors[selection_split], config.train,
                       run.directory, pad_id, Distillation(signal_for_epoch, config.alpha, config.temperature), macro_f1,
                       run.fingerprint, events, context, resume, on_epoch=lambda partial: run.write_metrics(partial, stage1))
        report = None
        if context.is_main:
            _note_evaluation(events, result, config.eval_split)
            report = _distill_report(config, prepared, teachers, first_signal, split_tensors, pad_id, run,
                                     warnings, result, stage1)
            run.finish(report, cache.label_names, result, stage1)
        return RunResult(run.directory, context.broadcast(report), result, warnings)


def _note_evaluation(events: ProgressEvents, result: TrainResult, split: str) -> None:
    events.note(f"evaluating the best student (epoch {result.best_epoch + 1}) on '{split}' and writing the report")


def _note_resume(events: ProgressEvents, run: Run, resume: dict | None) -> None:
    if resume is not None:
        events.note(f"resuming {run.directory} after epoch {resume['epoch'] + 1} (its checkpoint)")


def _distill_report(config: DistillConfig, prepared: PreparedCache, teachers: tuple[str, ...],
                    first_signal: TeacherSignal, split_tensors: dict[str, SplitTensors], pad_id: int, run: Run,
                    warnings: list[str], result: TrainResult, stage1: TrainResult | None) -> RunReport:
    cache = prepared.cache
    _, eval_preds = prepared.teacher_tensors(config.eval_split, teachers)
    eval_split = split_tensors[config.eval_split]
    teacher_per_class = {t: compute_metrics(eval_preds[:, n].numpy(), eval_split.labels,
                                            len(cache.label_names)).per_class_accuracy for n, t in enumerate(teachers)}
    followed, mean_weight = who_taught(config.strategy.name, first_signal, teachers)
    teaching = Teaching(followed=followed, mean_weight=mean_weight,
                        fallbacks=int(first_signal.fell_back.sum()) if first_signal.fell_back is not None else None,
                        experts=prepared.strategy_table(config.strategy, config.expert_split, teachers).to_json(),
                        expert_split=config.expert_split, eval_rows=len(eval_split.labels), warnings=warnings)
    stage1_record = None
    if stage1 is not None:
        stage1_record = {**config_payload(config.stage1),
                         "strategy": (config.stage1.strategy or config.strategy.name).value,
                         "rows": len(prepared.inputs(config.stage1.split).labels),
                         "history": [epoch_json(r) for r in stage1.history],
                         "train_seconds": stage1.train_seconds}
    return _evaluate(run, eval_split, cache.label_names, config.train.device, pad_id, teacher_per_class, result,
                     config.eval_split, stage1, teaching, stage1_record)


def _transfer_stage(config: DistillConfig, prepared: PreparedCache, teachers: tuple[str, ...], model, save,
                    tokenizer, selection: SplitTensors, run: Run, pad_id: int, events: ProgressEvents) -> TrainResult:
    """Stage 1 in run_dir/stage1 (its own checkpoint, so a killed run resumes in either stage)."""
    stage = config.stage1
    strategy = dataclasses.replace(config.strategy, name=stage.strategy or config.strategy.name)

    def signal_for_epoch(epoch: int) -> TeacherSignal:
        drawn = epoch if strategy.name in STOCHASTIC else 0
        return prepared.signal(strategy, teachers, stage.split, config.expert_split, config.train.seed, drawn)

    tensors = SplitTensors(prepared.tokens(tokenizer, config.train.max_length, stage.split),
                           prepared.inputs(stage.split).labels)
    train_config = dataclasses.replace(config.train, epochs=stage.epochs, warmup_epochs=0, patience=None)
    (run.directory / STAGE1_DIR).mkdir(exist_ok=True)
    return train(model, save, tensors, selection, train_config, run.directory / STAGE1_DIR, pad_id,
                 Distillation(signal_for_epoch, config.alpha, config.temperature), macro_f1,
                 run.stage_fingerprint(STAGE1_DIR), StageEvents(events), run.context, run.checkpoint(STAGE1_DIR),
                 on_epoch=lambda partial: run.write_metrics(TrainResult(), partial))


def _save_student(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _evaluate(run: Run, eval_split: SplitTensors, label_names: tuple[str, ...], device: str, pad_id: int,
              teacher_per_class: dict[str, list], result: TrainResult, eval_split_name: str,
              stage1: TrainResult | None = None, teaching: Teaching | None = None,
              stage1_record: dict | None = None) -> RunReport:
    """Reload the saved best student and score it: the report describes the files on disk, not the loop's state."""
    model, _ = load_saved_student(run.directory / STUDENT_DIR)
    torch_device = resolve_device(device)
    model.to(torch_device)
    started = time.perf_counter()
    preds = predict_logits(model, eval_split.tokens, pad_id, torch_device).argmax(axis=1)
    ms_per_sample = 1000 * (time.perf_counter() - started) / max(1, len(preds))
    metrics = compute_metrics(preds, eval_split.labels, len(label_names))
    per_class = {"student": dict(zip(label_names, metrics.per_class_accuracy))}
    per_class.update({t: dict(zip(label_names, values)) for t, values in teacher_per_class.items()})
    return RunReport(
        accuracy=metrics.accuracy, macro_f1=metrics.macro_f1, mcc=metrics.mcc, per_class_accuracy=per_class,
        median_diff={t: median_difference(metrics.per_class_accuracy, v) for t, v in teacher_per_class.items()},
        confusion_matrix=metrics.confusion_matrix, parameters=count_parameters(model), ms_per_sample=ms_per_sample,
        eval_split=eval_split_name, config=run.config,
        # Epochs are counted from 1 in every file and message (the loop counts from 0).
        best_epoch=result.best_epoch + 1, history=[epoch_json(r) for r in result.history],
        train_seconds=result.train_seconds + (stage1.train_seconds if stage1 else 0.0),
        teaching=teaching, stage1=stage1_record)


def finetune(config: FinetuneConfig, events: ProgressEvents | None = None) -> RunResult:
    """Plain supervised fine-tuning of a teacher or student from a dataset: the same loop, no cache."""
    task = load_task_data(config.dataset)
    selection_split = config.selection_split or ("validation" if "validation" in task.splits else config.eval_split)
    for option, split in (("--train-split", config.train_split), ("--eval-split", config.eval_split),
                          ("--selection-split", selection_split)):
        if split not in task.splits:
            raise ConfigError(f"{option} {split}: the dataset has splits {', '.join(task.splits)}.")
    context = distributed.current()
    events = (events if context.is_main else None) or SilentEvents()
    for note in task.notes:
        events.note(note)
    resolve_device(config.train.device)  # a missing GPU is refused before the run directory exists
    run = Run(config.out, RunIdentity({**config_payload(config), "selection_split": selection_split},
                                      {"dataset_fingerprint": task.fingerprint,
                                       **student_source_digest(config.student)}), context)
    resume = run.checkpoint()
    _note_resume(events, run, resume)
    torch.manual_seed(config.train.seed)
    model, tokenizer, kind = build_student(config.student, task.label_names, config.tokenizer)
    check_max_length(model, config.train.max_length)
    with run.removed_if_refused():
        run.start(student_kind=kind, **student_source_record(config.student))
        tensors = {name: SplitTensors(tokenize_rows(tokenizer, s.texts, s.text_pairs, config.train.max_length), s.labels)
                   for name, s in task.splits.items() if name in (config.train_split, selection_split, config.eval_split)}
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        result = train(model, lambda d: _save_student(model, tokenizer, d), tensors[config.train_split],
                       tensors[selection_split], config.train, run.directory, pad_id, None, macro_f1, run.fingerprint,
                       events, context, resume, on_epoch=run.write_metrics)
        report = None
        if context.is_main:
            _note_evaluation(events, result, config.eval_split)
            report = _evaluate(run, tensors[config.eval_split], task.label_names, config.train.device, pad_id, {}, result,
                               config.eval_split)
            run.finish(report, task.label_names, result)
        return RunResult(run.directory, context.broadcast(report), result)
