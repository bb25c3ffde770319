"""Reading a cache: a split's inputs, and teacher logits [S, N, K] / predictions [S, N] as arrays.

Every shard is checked against its manifest checksum the first time this process reads it; later
reads of the same shard skip the hash. A teacher shard read once leaves a verified decoded sidecar
(cache/sidecar.py) that later reads, in any process, use instead of decoding the Parquet again.
Every read of a shard also checks that it is the one listed (its identity metadata and sample ids,
shards.check_identity) and that its logits are finite. Only shards the
manifest lists are ever opened, never a glob, and never through a symbolic link.

    cache = open_cache("cache/")
    inputs = cache.inputs("train")                       # texts, labels (-1 = unlabeled), sample ids
    outputs = cache.teacher_outputs("train", ["bert", "roberta"])
    outputs.logits.shape                                 # (rows, 2, num_labels), float16 by default
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtkd_cache.cache.manifest import Manifest, ShardRecord, load_manifest
from mtkd_cache.cache.shards import check_finite_logits, check_identity, parse_shard, read_shard_bytes, read_verified_bytes
from mtkd_cache.cache.sidecar import read_sidecar, write_sidecar
from mtkd_cache.errors import CacheIntegrityError, ConfigError

_verified: set[tuple[str, str]] = set()  # (absolute path, sha256) already hashed in this process


@dataclass
class SplitInputs:
    sample_ids: np.ndarray  # int64 [S]
    texts: list[str]
    text_pairs: list[str] | None
    labels: np.ndarray  # int64 [S], -1 where the row has no label


@dataclass
class TeacherOutputs:
    teachers: tuple[str, ...]
    logits: np.ndarray  # [S, N, K] in the cache's logit dtype, classes in the cache's label order
    preds: np.ndarray  # int64 [S, N], argmax of the full-precision logits


class Cache:
    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.label_names)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.teachers)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.splits)

    def inputs(self, split: str) -> SplitInputs:
        table = self._read_split(split, None, None)
        labels = table.column("label").to_numpy(zero_copy_only=False)
        labels = np.where(np.isnan(labels), -1, labels).astype(np.int64) if labels.dtype.kind == "f" else labels.astype(np.int64)
        pairs = table.column("text_pair").to_pylist() if "text_pair" in table.column_names else None
        return SplitInputs(table.column("sample_id").to_numpy(), table.column("text").to_pylist(), pairs, labels)

    def teacher_outputs(self, split: str, teachers: Sequence[str] | None = None) -> TeacherOutputs:
        names = tuple(teachers) if teachers else self.teacher_names
        unknown = [n for n in names if n not in self.manifest.teachers]
        if unknown:
            raise ConfigError(f"teacher(s) {', '.join(unknown)} not in the cache; it has {', '.join(self.teacher_names)}.")
        # Every teacher's shards are known to cover the split before anything is allocated for it.
        work = [(position, record) for position, name in enumerate(names) for record in self._shards(split, name)]
        rows = self._split_record(split).rows
        logits = np.empty((rows, len(names), len(self.label_names)), dtype=self.manifest.logits_dtype)
        preds = np.empty((rows, len(names)), dtype=np.int64)

        def fill(position: int, record: ShardRecord) -> None:
            # Each shard lands straight in its slice: no concatenated intermediate table. Its decoded
            # sidecar, when a valid one exists, stands in for parsing the Parquet (cache/sidecar.py).
            shard_logits = logits[record.row_start:record.row_end, position, :]
            shard_preds = preds[record.row_start:record.row_end, position]
            if read_sidecar(self.path, record, shard_logits, shard_preds):
                return
            table = self._parse_aligned(record, ["sample_id", "logits", "pred"])
            shard_logits[...] = check_finite_logits(table, record)
            shard_preds[...] = table.column("pred").to_numpy()
            write_sidecar(self.path, record, shard_logits, shard_preds)

        # pyarrow decodes and hashlib hashes without the GIL, so shards parse in parallel on every core.
        with ThreadPoolExecutor(max_workers=min(len(work), os.cpu_count() or 1) or 1) as pool:
            for future in [pool.submit(fill, position, record) for position, record in work]:
                future.result()
        return TeacherOutputs(names, logits, preds)

    def _split_record(self, split: str):
        if split not in self.manifest.splits:
            raise ConfigError(f"split '{split}' is not in the cache; it has {', '.join(self.split_names)}.")
        return self.manifest.splits[split]

    def _shards(self, split: str, teacher: str | None) -> list[ShardRecord]:
        """The shards of a split in row order; refuses a split that is not fully committed."""
        self._split_record(split)
        if not self.manifest.complete(split, teacher):
            what = f"teacher '{teacher}'" if teacher else "inputs"
            raise CacheIntegrityError(
                f"the cache's {what} for split '{split}' are incomplete (an interrupted build?); "
                f"re-run `mtkd-cache build` with --out {self.path} to finish it."
            )
        return self.manifest.shards_of(split, teacher)

    def _parse_aligned(self, record: ShardRecord, columns: list[str] | None):
        table = parse_shard(self._verified_bytes(record), columns)
        check_identity(table, record, self.manifest)
        return table

    def _read_split(self, split: str, teacher: str | None, columns: list[str] | None):
        import pyarrow as pa

        return pa.concat_tables([self._parse_aligned(record, columns) for record in self._shards(split, teacher)])

    def _verified_bytes(self, record: ShardRecord) -> bytes:
        key = (str((self.path / record.path).resolve()), record.sha256)
        if key in _verified:
            return read_shard_bytes(self.path, record)
        data = read_verified_bytes(self.path, record)
        _verified.add(key)
        return data


def open_cache(path: str | Path) -> Cache:
    """Open a committed cache directory; raises CacheFormatError when it has no valid manifest."""
    directory = Path(path)
    return Cache(directory, load_manifest(directory))
