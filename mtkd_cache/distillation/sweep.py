"""`sweep`: a grid of distill runs from one loaded cache, a leaderboard and a robustness summary.

The grid is strategies × α × T × seeds × teacher subsets, where subset size k means every
k-combination of the teacher pool (the robustness study compared 1 to 6 teachers over every
combination). All runs share one PreparedCache: the cache is read and verified once, each split is
tokenized once, and a deterministic strategy's targets are computed once per teacher subset.

Each run writes OUT/runs/<name>-<hash>/ exactly as `distill` does; the hash is the start of the run's
fingerprint (run.py: the whole resolved configuration, the dataset fingerprint and the teachers'
weights), so re-running a sweep skips finished runs, resumes a killed one from its last epoch checkpoint
and never mixes runs of another grid. `run_sweep` writes leaderboard.* and robustness.* itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import polars as pl

from mtkd_cache import distributed
from mtkd_cache._faults import fault_point
from mtkd_cache.atomic import write_atomically
from mtkd_cache.config_files import read_options_file
from mtkd_cache.distillation.checks import require_in_range
from mtkd_cache.distillation.configs import DistillConfig
from mtkd_cache.distillation.experts import parse_teacher_subset
from mtkd_cache.distillation.run import check_run_directory, prepare_directory
from mtkd_cache.distillation.runs import RunResult, distill, distill_identity, resolve_splits
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.strategies import Strategy, StrategyConfig
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.errors import ConfigError, MtkdError
from mtkd_cache.layout import CHECKPOINT, LEADERBOARD, SWEEP_RUN_DONE, SWEEP_RUNS_DIR
from mtkd_cache.progress import ProgressEvents, SilentEvents
from mtkd_cache.report.leaderboard import Metric, RunRow, write_leaderboard

RUNS_DIR = SWEEP_RUNS_DIR
DONE_MARKER = SWEEP_RUN_DONE  # written last: a run directory without it is unfinished


@dataclass(frozen=True)
class SweepGrid:
    strategies: tuple[Strategy, ...] = field(default=(Strategy.EXPERT,), metadata={"help": "Strategy; repeat for several."})
    alphas: tuple[float, ...] = field(default=(0.5,), metadata={"help": "α; repeat for several."})
    temperatures: tuple[float, ...] = field(default=(2.0,), metadata={"help": "T; repeat for several."})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "Seed; repeat for several."})
    subset_sizes: tuple[int, ...] = field(default=(), metadata={
        "help": "k: run every k-combination of the teacher pool; repeat for several k (none given: the whole pool)."})

    def __post_init__(self) -> None:
        for name, values in (("--strategy", self.strategies), ("--alpha", self.alphas),
                             ("--temperature", self.temperatures), ("--seed", self.seeds)):
            if not values:
                raise ConfigError(f"{name} needs at least one value.")
        unknown = [str(s) for s in self.strategies if s not in set(Strategy)]
        if unknown:
            raise ConfigError(f"--strategy {', '.join(unknown)}: choose from {', '.join(s.value for s in Strategy)}.")
        object.__setattr__(self, "strategies", tuple(Strategy(s) for s in self.strategies))
        # Every run's DistillConfig checks these too, but only once the grid is expanded; checking here refuses
        # a bad value before the sweep creates anything.
        for alpha in self.alphas:
            require_in_range("--alpha", alpha, 0, 1)
        for temperature in self.temperatures:
            require_in_range("--temperature", temperature, 0, low_open=True)

    def check_subset_sizes(self, pool_size: int) -> None:
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
    max_minutes: float | None = field(default=None, metadata={"help": "Start no new run after this many minutes."})
    metric: Metric = field(default=Metric.ACCURACY, metadata={"help": "accuracy, macro_f1 or mcc: what the leaderboard "
                                                                      "ranks by."})
    parallel: int = field(default=1, metadata={"help": "Runs trained at once, each in its own process on the same "
                                                       "device (small students on one GPU); 1: one after another."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", Metric.parse(self.metric))
        if not isinstance(self.parallel, int) or isinstance(self.parallel, bool) or self.parallel < 1:
            raise ConfigError(f"--parallel must be a whole number of at least 1, not {self.parallel!r}.")
        if self.max_minutes is not None:  # NaN would never stop the sweep: `elapsed > nan` is always False
            require_in_range("--max-minutes", self.max_minutes, 0)  # 0: start no run, write the leaderboard


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
    leaderboard: pl.DataFrame | None = None  # the frame of leaderboard.parquet (main rank)

    @property
    def trained(self) -> list[RunRow]:
        return [r for r in self.rows if r.status == "trained"]


class SweepEvents(ProgressEvents, Protocol):
    """The progress hooks of every run's epochs, and a hook before and after each run."""

    def run_started(self, index: int, total: int, name: str) -> None: ...
    def run_finished(self, row: RunRow) -> None: ...


class SilentSweepEvents(SilentEvents):
    def run_started(self, index: int, total: int, name: str) -> None: pass
    def run_finished(self, row: RunRow) -> None: pass


def expand_grid(config: SweepConfig, cache_teachers: tuple[str, ...]) -> list[SweepRun]:
    pool = parse_teacher_subset(config.base.teachers, cache_teachers)
    config.grid.check_subset_sizes(len(pool))
    subsets = [c for k in config.grid.subset_sizes for c in itertools.combinations(pool, k)] or [pool]
    runs, floors = [], set()
    for strategy, alpha, temperature, seed, subset in itertools.product(
            config.grid.strategies, config.grid.alphas, config.grid.temperatures, config.grid.seeds, subsets):
        if strategy is Strategy.NONE:
            # The floor has no KD term, so α and T change nothing: one run per seed and subset, named without them.
            if (seed, subset) in floors:
                continue
            floors.add((seed, subset))
            alpha, temperature = 1.0, config.grid.temperatures[0]
        base = config.base
        run_config = dataclasses.replace(
            base, strategy=dataclasses.replace(base.strategy, name=strategy), alpha=alpha, temperature=temperature,
            teachers=subset, train=dataclasses.replace(base.train, seed=seed))
        configuration = "" if strategy is Strategy.NONE else f"-a{alpha:g}-T{temperature:g}"
        runs.append(SweepRun(f"{strategy}{configuration}-s{seed}-{'+'.join(subset)}", run_config))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("the grid repeats a value (e.g. --alpha 0.5 --alpha 0.5); give each value once.")
    return runs


def run_sweep(config: SweepConfig, events: SweepEvents | None = None) -> SweepResult:
    """Train every run of the grid not finished yet; write the leaderboard and robustness files in OUT."""
    events = events or SilentSweepEvents()
    started = time.perf_counter()
    prepared = PreparedCache(config.base.cache)
    runs = expand_grid(config, prepared.cache.teacher_names)
    resolve_splits(config.base, prepared.cache.split_names)
    context = distributed.current()
    if config.parallel > 1 and context.active:
        raise ConfigError("--parallel and torchrun both share the runs out (processes on one device, ranks on "
                          "several); use one of them.")
    out = config.base.out
    check_run_directory(out, ours=(RUNS_DIR, LEADERBOARD))  # a sweep's own directory, or a new or empty one
    # This rank's runs and their directories, each checked before the sweep writes anything.
    mine = [(index, runs[index], _run_directory(config, runs[index], prepared))
            for index in range(context.rank, len(runs), context.world_size)]
    for _, _, run_dir in mine:
        check_run_directory(run_dir)
    created = prepare_directory(out)
    try:
        return _run_grid(config, len(runs), mine, prepared, context, events, started)
    except MtkdError:
        # Nothing to resume (no run got to a checkpoint): a fresh --out is removed rather than left half-made.
        if created and context.is_main and not any(out.rglob(CHECKPOINT)):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_directory(config: SweepConfig, run: SweepRun, prepared: PreparedCache) -> Path:
    identity = distill_identity(run.config, prepared.cache)  # the very identity `distill` checks inside
    return config.base.out / RUNS_DIR / f"{run.name}-{identity.fingerprint[:10]}"


def _run_grid(config: SweepConfig, planned: int, mine: list[tuple[int, SweepRun, Path]], prepared: PreparedCache,
              context, events: SweepEvents, started: float) -> SweepResult:
    """Train `mine`: under torchrun each rank trains its own runs (every world_size-th), each on one device,
    simpler and faster than DDP when a student fits one GPU."""
    done: list[tuple[int, RunRow]] = []
    stopped = False
    pending = []
    for index, run, run_dir in mine:
        finished = _finished_row(run_dir)
        if finished is not None:
            done.append((index, finished))
            events.run_finished(finished)
        else:
            pending.append((index, run, run_dir))
    if config.parallel > 1 and len(pending) > 1:
        trained, stopped = _train_in_processes(config, planned, pending, events, started)
        done += trained
        pending = []
    for index, run, run_dir in pending:
        if config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes:
            stopped = True
            break
        events.run_started(index, planned, run.name)
        row = _train_one(run, run_dir, prepared, events)
        done.append((index, row))
        events.run_finished(row)
    gathered = context.all_gather((done, stopped))
    rows = [row for _, row in sorted((pair for part, _ in gathered for pair in part), key=lambda pair: pair[0])]
    # Under torchrun rank 0 writes the leaderboard of every rank's runs.
    leaderboard = write_leaderboard(config.base.out, rows, config.metric) if context.is_main else None
    return SweepResult(rows=rows, planned=planned, stopped_by_budget=any(flag for _, flag in gathered),
                       seconds=time.perf_counter() - started, leaderboard=leaderboard)


def _train_one(run: SweepRun, run_dir: Path, prepared: PreparedCache, events: ProgressEvents) -> RunRow:
    run_started = time.perf_counter()
    outcome = distill(dataclasses.replace(run.config, out=run_dir), events, prepared=prepared, data_parallel=False)
    row = _row(run_dir.name, run.config, outcome, time.perf_counter() - run_started)
    write_atomically(run_dir / DONE_MARKER, json.dumps(dataclasses.asdict(row), indent=1), durable=False)
    fault_point("sweep_run_finished")
    return row


def _train_in_processes(config: SweepConfig, planned: int, pending: list[tuple[int, SweepRun, Path]],
                        events: SweepEvents, started: float) -> tuple[list[tuple[int, RunRow]], bool]:
    """`--parallel N`: N processes on the same device, each with its own PreparedCache (a later cache read is
    fast: cache/sidecar.py) training every N-th pending run. A small student leaves most of a GPU idle
    between its kernels; N at once fill it. Runs finish as they would one at a time (same seeds, same
    files, DONE markers), so a killed parallel sweep resumes like any other. (trained rows, budget hit)."""
    import multiprocessing

    import torch

    workers = min(config.parallel, len(pending))
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be initialised again in a forked child
    errors = spawn.SimpleQueue()
    budget_left = None if config.max_minutes is None else 60 * config.max_minutes - (time.perf_counter() - started)
    threads = max(1, torch.get_num_threads() // workers)  # the CPU's intra-op threads shared out, not multiplied
    processes = [spawn.Process(target=_train_share, args=(pending[w::workers], budget_left, threads, errors),
                               name=f"mtkd-sweep-{w}") for w in range(workers)]
    for index, run, _ in pending[:workers]:
        events.run_started(index, planned, run.name)
    for process in processes:
        process.start()
    done: dict[int, RunRow] = {}
    try:
        while True:
            running = any(process.is_alive() for process in processes)
            for index, _, run_dir in pending:
                row = None if index in done else _finished_row(run_dir)
                if row is not None:
                    done[index] = dataclasses.replace(row, status="trained")
                    events.run_finished(done[index])
            if not running:
                break
            time.sleep(0.2)
    finally:
        for process in processes:  # an interrupted parent (Ctrl-C) stops its workers too
            if process.is_alive():
                process.terminate()
            process.join()
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        messages = []
        while not errors.empty():
            messages.append(errors.get())
        raise MtkdError("; ".join(messages) or f"sweep worker(s) {', '.join(failed)} died (exit codes "
                        f"{', '.join(str(p.exitcode) for p in processes if p.exitcode != 0)}); re-run the same "
                        "command to resume.")
    return sorted(done.items()), len(done) < len(pending)


def _train_share(share: list[tuple[int, SweepRun, Path]], budget_left: float | None, threads: int, errors) -> None:
    """One `--parallel` worker (a spawned process): its runs one after another, from its own loaded cache."""
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    name = share[0][1].name
    try:
        prepared = PreparedCache(share[0][1].config.cache)
        for _, run, run_dir in share:
            if budget_left is not None and time.perf_counter() - started > budget_left:
                return
            name = run.name
            _train_one(run, run_dir, prepared, SilentEvents())
    except MtkdError as error:
        errors.put(f"run {name}: {error}")
        raise SystemExit(2) from None


def _row(name: str, config: DistillConfig, outcome: RunResult, run_seconds: float) -> RunRow:
    report = outcome.report
    return RunRow(run=name, strategy=config.strategy.name.value, alpha=config.alpha, temperature=config.temperature,
                  seed=config.train.seed, teachers=",".join(config.teachers), num_teachers=len(config.teachers),
                  accuracy=report.accuracy, macro_f1=report.macro_f1, mcc=report.mcc, best_epoch=report.best_epoch,
                  train_seconds=report.train_seconds, run_seconds=run_seconds, status="trained",
                  student=config.student, student_kind=report.config.get("student_kind", ""),
                  parameters=report.parameters, ms_per_sample=report.ms_per_sample)


def _finished_row(run_dir: Path) -> RunRow | None:
    try:
        return RunRow(**{**json.loads((run_dir / DONE_MARKER).read_text()), "status": "skipped"})
    except (OSError, ValueError, TypeError):
        return None  # absent, or cut short by a kill: the run is (re)done, resuming from its checkpoint


# A sweep from options (CLI flags or a TOML/YAML file): the keys are the `sweep` command's flag names.
_GRID_KEYS = {"strategy": str, "alpha": float, "temperature": float, "seed": int, "teacher_subsets": int}
_TRAIN_KEYS = {"epochs": int, "batch_size": int, "lr": float, "max_length": int, "device": str, "patience": int,
               "warmup_epochs": int}
_RUN_KEYS = {"cache": Path, "student": str, "out": Path, "teachers": str, "tokenizer": str, "train_split": str,
             "eval_split": str, "selection_split": str, "expert_split": str, **{
                 "noise_std": float, "gamma": float, "unlabeled": str, "correct_fallback": str,
                 "expert_confidence": float, "calibrate": bool}}
_STRATEGY_KEYS = ("noise_std", "gamma", "unlabeled", "correct_fallback", "expert_confidence", "calibrate")
_SWEEP_KEYS = {"max_minutes": float, "metric": str, "parallel": int}
OPTION_KEYS = {**_GRID_KEYS, **_TRAIN_KEYS, **_RUN_KEYS, **_SWEEP_KEYS}
_GRID_FIELDS = {"strategy": "strategies", "alpha": "alphas", "temperature": "temperatures", "seed": "seeds",
                "teacher_subsets": "subset_sizes"}
_TRAIN_FIELDS = {"lr": "learning_rate"}


def load_sweep_file(path: Path) -> dict:
    """Options from a .toml, .yaml or .yml file; list values for the grid keys, scalars for the rest."""
    return read_options_file(path, what="sweep file")


def _coerce(key: str, value, kind):
    if kind is bool:  # bool("false") is True: only a real boolean (a TOML/YAML true/false, or a flag) counts
        if isinstance(value, bool):
            return value
        raise ConfigError(f"sweep option {key}: {value!r} is not true or false.")
    try:
        if isinstance(value, (dict, list)):
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
    grid = SweepGrid(**{field_name: values[key] for key, field_name in _GRID_FIELDS.items() if key in values})
    train = TrainConfig(**{_TRAIN_FIELDS.get(k, k): values[k] for k in _TRAIN_KEYS if k in values})
    strategy = StrategyConfig(**{k: values[k] for k in _STRATEGY_KEYS if k in values})
    run_options = {k: values[k] for k in _RUN_KEYS if k in values and k not in _STRATEGY_KEYS}
    base = DistillConfig(**run_options, strategy=strategy, train=train)
    return SweepConfig(base=base, grid=grid, **{k: values[k] for k in _SWEEP_KEYS if k in values})
