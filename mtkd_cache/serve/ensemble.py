"""Ensembles of distilled students (the TMKD report's m-o-m ensemble): a majority vote and a mean probability.

    probabilities  [M, S, K]  softmax of each of M students' logits on S rows
    mean probability:  argmax_k mean_m p[m, s, k]
    majority vote:     the class most students predict; a tie goes to the tied class with the higher mean
                       probability (deterministic, and never worse informed than an arbitrary pick)
The students are scored on a split of the cache their runs were distilled from, so the ensemble is
evaluated exactly like each member.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.cache.store import fetch, is_url
from mtkd_cache.devices import resolve_device
from mtkd_cache.distillation.run import read_run_config
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.students import load_saved_student
from mtkd_cache.distillation.training import predict_logits
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import RUN_CONFIG, STUDENT_DIR
from mtkd_cache.report.evaluation import Metrics, compute_metrics


def mean_probability_vote(probabilities: np.ndarray) -> np.ndarray:
    """[M, S, K] -> predicted class [S]."""
    return probabilities.mean(axis=0).argmax(axis=1)


def majority_vote(probabilities: np.ndarray) -> np.ndarray:
    """[M, S, K] -> predicted class [S]; ties broken by mean probability."""
    num_classes = probabilities.shape[2]
    votes = np.eye(num_classes, dtype=np.int64)[probabilities.argmax(axis=2)].sum(axis=0)  # [S, K]
    tied = votes == votes.max(axis=1, keepdims=True)
    return np.where(tied, probabilities.mean(axis=0), -np.inf).argmax(axis=1)


@dataclass
class EnsembleReport:
    split: str
    rows: int
    members: dict[str, Metrics]  # run name -> that student alone
    majority_vote: Metrics
    mean_probability: Metrics

    def table_rows(self) -> list[tuple[str, list[str]]]:
        """(model, [accuracy, macro-F1, MCC]) for every member, then the two ensembles."""
        rows = [*self.members.items(), ("ensemble: majority vote", self.majority_vote),
                ("ensemble: mean probability", self.mean_probability)]
        return [(name, [f"{m.accuracy:.4f}", f"{m.macro_f1:.4f}", f"{m.mcc:.4f}"]) for name, m in rows]

    def markdown(self) -> list[str]:
        """The ensemble section of comparison.md."""
        return [f"## Ensemble on `{self.split}`", "", "| model | accuracy | macro-F1 | MCC |", "|---|---|---|---|",
                *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in self.table_rows())]


def _run_config(run_dir: Path) -> dict:
    record = read_run_config(run_dir)  # run.json, or an older run's config.json
    if not (run_dir / STUDENT_DIR).is_dir() or record is None:
        raise ConfigError(f"{run_dir} is not a finished run (no {STUDENT_DIR}/ or {RUN_CONFIG}); pass `distill` run "
                          "directories.")
    return record


def evaluate_ensemble(run_dirs: list[Path], split: str | None = None, cache: Path | str | None = None,
                      device: str = "auto") -> EnsembleReport:
    """Score each run's best student and the two ensembles on `split` (default: the first run's eval split)."""
    if len(run_dirs) < 2:
        raise ConfigError("an ensemble needs at least two runs.")
    configs = [_run_config(d) for d in run_dirs]
    cache_dir = cache or configs[0].get("cache")  # a directory or the URL the run distilled from
    if cache_dir is None:
        raise ConfigError(f"{run_dirs[0]} is not a `distill` run; pass --cache to say which cache to score on.")
    split = split or configs[0].get("eval_split", "test")
    prepared = PreparedCache(fetch(cache_dir if is_url(cache_dir) else Path(cache_dir), None, (split,)).path)
    if split not in prepared.cache.split_names:
        raise ConfigError(f"split '{split}' is not in {cache_dir}; it has {', '.join(prepared.cache.split_names)}.")
    labels = prepared.inputs(split).labels
    torch_device = resolve_device(device)
    probabilities, members = [], {}
    for run_dir, config in zip(run_dirs, configs):
        model, tokenizer = load_saved_student(run_dir / STUDENT_DIR)
        if model.config.num_labels != len(prepared.cache.label_names):
            raise ConfigError(f"{run_dir}: its student has {model.config.num_labels} labels, the cache "
                              f"{len(prepared.cache.label_names)}; ensemble students of one task.")
        tokens = prepared.tokens(tokenizer, config.get("train", {}).get("max_length", 128), split)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        logits = predict_logits(model.to(torch_device), tokens, pad_id, torch_device)
        probabilities.append(torch.softmax(torch.from_numpy(logits), dim=1).numpy())
        members[run_dir.name] = compute_metrics(logits.argmax(axis=1), labels, len(prepared.cache.label_names))
    stacked = np.stack(probabilities)
    num_labels = len(prepared.cache.label_names)
    return EnsembleReport(split, len(labels), members, compute_metrics(majority_vote(stacked), labels, num_labels),
                          compute_metrics(mean_probability_vote(stacked), labels, num_labels))
