"""`sweep`: a grid of distill runs from one loaded cache, a leaderboard and a robustness summary.

The grid is strategies × α × T × seeds × teacher subsets, where subset size k means every
k-combination of the teacher pool (the robustness study compared 1 to 6 teachers over every
combination). All runs share one PreparedCache: the cache is read and verified once, each split is
tokenized once, and a deterministic strategy's targets are computed once per teacher subset.

Each run writes OUT/runs/<name>-<hash>/ exactly as `distill` does; the hash covers the whole run
configuration, the dataset fingerprint and the teachers' weights, so re-running a sweep skips finished
runs, resumes a killed one from its last epoch checkpoint and never mixes runs of another grid.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache import distributed
from mtkd_cache._faults import fault_point
from mtkd_cache.config_files import read_options_file
from mtkd_cache.distill.experts import parse_teacher_subset
from mtkd_cache.distill.runs import DistillConfig, RunResult, _config_dict, _fingerprint, _portable, distill, resolve_splits
from mtkd_cache.distill.session import PreparedCache
from mtkd_cache.distill.strategies import STRATEGIES, StrategyConfig
from mtkd_cache.errors import ConfigError
from mtkd_cache.report.leaderboard import METRICS, RunRow

RUNS_DIR = "runs"
DONE_MARKER = "sweep_run.json"  # written last: a run directory without it is unfinished


@dataclass(frozen=True)
class SweepGrid:
    strategies: tuple[str, ...] = ("expert",)
    alphas: tuple[float, ...] = (0.5,)
    temperatures: tuple[float, ...] = (2.0,)
    seeds: tuple[int, ...] = (0,)
    subset_sizes: tuple[int, ...] = ()  # every k-combination of the pool for each k; empty = the whole pool

    def validate(self, pool_size: int) -> None:
        for name, values in (("--strategy", self.strategies), ("--alpha", self.alphas),
                             ("--temperature", self.temperatures), ("--seed", self.seeds)):
            if not values:
                raise ConfigError(f"{name} needs at least one value.")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ConfigError(f"--strategy {', '.join(unknown)}: choose from {', '.join(STRATEGIES)}.")
        bad_sizes = [k for k in self.subset_sizes if not 1 <= k <= pool_size]
        if bad_sizes:
            raise ConfigError(f"--teacher-subsets {bad_sizes[0]}: the pool has {pool_size} teacher(s), so k must be "
                              f"between 1 and {pool_size}.")


@dataclass(frozen=True)
class SweepConfig:
    """`base` holds every distill option; its strategy, α, T, seed and teachers are replaced per run.
    `base.teachers` is the pool the subsets are drawn from (None = every teacher in the cache)."""

    base: DistillConfig
    grid: SweepGrid = SweepGrid()
    max_minutes: float | None = None  # no new run starts after this much time
    metric: str = "accuracy"  # what the leaderboard ranks by


@dataclass(frozen=True)
class SweepRun:
    name: str
    config: DistillConfig


@dataclass
class SweepResult:
    rows: list[RunRow] = field(default_factory=list)
    planned: int = 0
    stopped_by_budget: bool = False
    seconds: float = 0.0  # this invocation, load included

    @property
    def trained(self) -> list[RunRow]:
        return [r for r in self.rows if r.status == "trained"]


class SweepEvents:
    """Hooks for a progress display; the default does nothing."""

    def run_started(self, index: int, total: int, name: str) -> None: ...
    def run_finished(self, row: RunRow) -> None: ...
    def epoch_progress(self) -> tuple[Callable | None, Callable | None]:
        return None, None


def expand_grid(config: SweepConfig, cache_teachers: tuple[str, ...]) -> list[SweepRun]:
    pool = parse_teacher_subset(config.base.teachers, cache_teachers)
    config.grid.validate(len(pool))
    subsets = [c for k in config.grid.subset_sizes for c in itertools.combinations(pool, k)] or [pool]
    runs = []
    for strategy, alpha, temperature, seed, subset in itertools.product(
            config.grid.strategies, config.grid.alphas, config.grid.temperatures, config.grid.seeds, subsets):
        base = config.base
        run_config = dataclasses.replace(
            base, strategy=dataclasses.replace(base.strategy, name=strategy), alpha=alpha, temperature=temperature,
            teachers=",".join(subset), train=dataclasses.replace(base.train, seed=seed))
        runs.append(SweepRun(f"{strategy}-a{alpha:g}-T{temperature:g}-s{seed}-{'+'.join(subset)}", run_config))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("the grid repeats a value (e.g. --alpha 0.5 --alpha 0.5); give each value once.")
    return runs


def run_sweep(config: SweepConfig, events: SweepEvents | None = None) -> SweepResult:
    events = events or SweepEvents()
    started = time.perf_counter()
    if config.metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, not '{config.metric}'.")
    prepared = PreparedCache(config.base.cache)
    runs = expand_grid(config, prepared.cache.teacher_names)
    resolve_splits(config.base, prepared.cache.split_names)
    manifest = prepared.cache.manifest
    context = distributed.current()
    config.base.out.mkdir(parents=True, exist_ok=True)
    done: list[tuple[int, RunRow]] = []
    stopped = False
    # Under torchrun each rank trains its own runs (every world_size-th), each on one device: simpler and
    # faster than DDP when a student fits one GPU.
    for index in range(context.rank, len(runs), context.world_size):
        run = runs[index]
        identity = _fingerprint({**_portable(_config_dict(run.config)), "cache_fingerprint": manifest.dataset.fingerprint,
                                 "teacher_weights": [manifest.teachers[t].weights_sha256 for t in run.config.teachers.split(",")]})
        run_dir = config.base.out / RUNS_DIR / f"{run.name}-{identity[:10]}"
        finished = _finished_row(run_dir)
        if finished is not None:
            done.append((index, finished))
            events.run_finished(finished)
            continue
        if config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes:
            stopped = True
            break
        events.run_started(index, len(runs), run.name)
        run_started = time.perf_counter()
        outcome = distill(dataclasses.replace(run.config, out=run_dir), *events.epoch_progress(), prepared=prepared,
                          data_parallel=False)
        row = _row(run_dir.name, run.config, outcome, time.perf_counter() - run_started)
        _write_json_atomically(run_dir / DONE_MARKER, dataclasses.asdict(row))
        fault_point("sweep_run_finished")
        done.append((index, row))
        events.run_finished(row)
    gathered = context.all_gather((done, stopped))
    rows = [row for _, row in sorted((pair for part, _ in gathered for pair in part), key=lambda pair: pair[0])]
    return SweepResult(rows=rows, planned=len(runs), stopped_by_budget=any(flag for _, flag in gathered),
                       seconds=time.perf_counter() - started)


def _row(name: str, config: DistillConfig, outcome: RunResult, run_seconds: float) -> RunRow:
    report = outcome.report
    return RunRow(run=name, strategy=config.strategy.name, alpha=config.alpha, temperature=config.temperature,
                  seed=config.train.seed, teachers=config.teachers, num_teachers=len(config.teachers.split(",")),
                  accuracy=report["accuracy"], macro_f1=report["macro_f1"], mcc=report["mcc"],
                  best_epoch=report["best_epoch"], train_seconds=report["train_seconds"], run_seconds=run_seconds,
                  status="trained")


def _finished_row(run_dir: Path) -> RunRow | None:
    try:
        return RunRow(**{**json.loads((run_dir / DONE_MARKER).read_text()), "status": "skipped"})
    except (OSError, ValueError, TypeError):
        return None  # absent, or cut short by a kill: the run is (re)done, resuming from its checkpoint


def _write_json_atomically(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)



# A sweep from options (CLI flags or a TOML/YAML file): the keys are the `sweep` command's flag names.
_GRID_KEYS = {"strategy": str, "alpha": float, "temperature": float, "seed": int, "teacher_subsets": int}
_TRAIN_KEYS = {"epochs": int, "batch_size": int, "lr": float, "max_length": int, "device": str, "patience": int,
               "warmup_epochs": int}
_RUN_KEYS = {"cache": Path, "student": str, "out": Path, "teachers": str, "tokenizer": str, "train_split": str,
             "eval_split": str, "selection_split": str, "expert_split": str, "noise_std": float, "gamma": float}
_SWEEP_KEYS = {"max_minutes": float, "metric": str}
OPTION_KEYS = {**_GRID_KEYS, **_TRAIN_KEYS, **_RUN_KEYS, **_SWEEP_KEYS}


def load_sweep_file(path: Path) -> dict:
    """Options from a .toml, .yaml or .yml file; list values for the grid keys, scalars for the rest."""
    return read_options_file(path, what="sweep file")


def _coerce(key: str, value, kind):
    try:
        if kind is bool or isinstance(value, (dict, list)):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sweep option {key}: {value!r} is not a valid {kind.__name__}.") from None


def sweep_config_from_options(options: dict) -> SweepConfig:
    """Build a SweepConfig; unknown keys are refused by name, absent ones take `distill`'s defaults."""
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTION_KEYS))}.")
    missing = [key for key in ("cache", "student", "out") if options.get(key) is None]
    if missing:
        raise ConfigError(f"the sweep needs {' and '.join(missing)} (a flag or a key in the sweep file).")
    values = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in _GRID_KEYS:
            values[key] = tuple(_coerce(key, v, _GRID_KEYS[key]) for v in (value if isinstance(value, list) else [value]))
        else:
            values[key] = _coerce(key, value, OPTION_KEYS[key])
    defaults_grid, defaults_run = SweepGrid(), DistillConfig(cache=Path(), student="", out=Path())
    grid = SweepGrid(strategies=values.get("strategy", defaults_grid.strategies),
                     alphas=values.get("alpha", defaults_grid.alphas),
                     temperatures=values.get("temperature", defaults_grid.temperatures),
                     seeds=values.get("seed", defaults_grid.seeds), subset_sizes=values.get("teacher_subsets", ()))
    train_fields = {"lr": "learning_rate"}
    train = dataclasses.replace(defaults_run.train, **{train_fields.get(k, k): values[k] for k in _TRAIN_KEYS if k in values})
    strategy = StrategyConfig(noise_std=values.get("noise_std", 1.0), gamma=values.get("gamma", 2.0))
    run_options = {k: values[k] for k in _RUN_KEYS if k in values and k not in ("noise_std", "gamma")}
    base = dataclasses.replace(defaults_run, **run_options, strategy=strategy, train=train)
    base.train.validate()
    return SweepConfig(base=base, grid=grid, max_minutes=values.get("max_minutes"),
                       metric=values.get("metric", "accuracy"))
