"""`select`: a strategy's per-sample teacher weights on one split, written for other tools to read."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtkd_cache.atomic import write_atomically
from mtkd_cache.distillation.experts import parse_teacher_subset
from mtkd_cache.distillation.run import check_output_file
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.strategies import Strategy, StrategyConfig, who_taught
from mtkd_cache.errors import ConfigError


@dataclass
class Selection:
    """Who taught which row: per-sample weights over the teacher subset, as `select` writes them."""

    split: str
    strategy: Strategy
    teachers: tuple[str, ...]
    sample_ids: np.ndarray
    weights: np.ndarray  # float32 [S, N]
    followed: dict[str, int] | None  # one-hot strategies: rows that followed each teacher; None otherwise
    fallbacks: int | None  # `expert`, `expert-gold`: rows that followed M because |S| was 0 or > 1
    mean_weight: dict[str, float]  # each teacher's mean weight over the rows


def select_teachers(cache_dir: Path, split: str, strategy: StrategyConfig,
                    teachers: str | tuple[str, ...] | None = None, expert_split: str = "test", seed: int = 0,
                    out: Path | None = None) -> Selection:
    """The strategy's weights on `split`; `out`, where they will be written, is checked before any work."""
    if out is not None:
        check_output_file(out)
    prepared = PreparedCache(cache_dir)
    subset = parse_teacher_subset(teachers, prepared.cache.teacher_names)
    for option, name in (("--split", split), ("--expert-split", expert_split)):
        if name not in prepared.cache.split_names:
            raise ConfigError(f"{option} {name}: the cache has splits {', '.join(prepared.cache.split_names)}.")
    signal = prepared.signal(strategy, subset, split, expert_split, seed, 0)
    followed, mean_weight = who_taught(strategy.name, signal, subset)
    return Selection(split, strategy.name, subset, prepared.inputs(split).sample_ids,
                     signal.weights.numpy().astype(np.float32), followed,
                     int(signal.fell_back.sum()) if signal.fell_back is not None else None, mean_weight)


def write_selection(path: Path, selection: Selection) -> None:
    """Parquet with `sample_id` and `weights` (list of N float32); teacher names in the `teachers` metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_output_file(path)
    num_teachers = len(selection.teachers)
    table = pa.table({"sample_id": pa.array(selection.sample_ids, pa.int64()),
                      "weights": pa.FixedSizeListArray.from_arrays(pa.array(selection.weights.reshape(-1)), num_teachers)})
    table = table.replace_schema_metadata({"teachers": json.dumps(list(selection.teachers)),
                                           "strategy": selection.strategy.value, "split": selection.split})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomically(path, buffer.getvalue(), durable=False)
