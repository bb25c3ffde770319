"""`import-logits`: a teacher whose logits were computed elsewhere (a system's outputs, a file from a team
that ran a model this machine cannot), joined into a cache as a teacher like any other.

A file is one of:
  .parquet / .csv   a row per sample: `sample_id` or `text` (or both: the text is then checked against the
                    cache's inputs), `split` (or --split for a file of one split), and the logits, either as a
                    list column `logits` in --label-names order (default: the cache's) or as one column per
                    label, named by label (then the order is taken from the names).
  .npy              a float array [rows, K] of one split (--split), row i being sample i, in --label-names order.
Every row of each split the file covers must be present exactly once; missing, repeated or unknown sample
ids, texts the cache does not hold, a wrong number of classes and non-finite values are refused naming
them, before anything is written. The shards go through the cache's own committer (checksums, identity
metadata, the manifest as commit point), under the cache lock; an interrupted import resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtkd_cache.atomic import remove_temporaries
from mtkd_cache.cache.committer import ShardCommitter, refuse_symlinks
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.cache.manifest import Manifest, ShardRecord, TeacherRecord, load_manifest
from mtkd_cache.cache.reader import open_cache
from mtkd_cache.cache.shards import outputs_schema, outputs_table, shard_is_intact
from mtkd_cache.errors import CacheMismatchError, ConfigError, DataError
from mtkd_cache.hashing import sha256_file
from mtkd_cache.layout import outputs_path, validate_name

IMPORTED = "imported"  # the backend and scoring a manifest records for an imported teacher
_SUFFIXES = (".parquet", ".csv", ".npy")
_NAMED = 10


@dataclass(frozen=True)
class ImportConfig:
    """One file of logits into the cache at `cache` as teacher `teacher`."""

    cache: Path = field(metadata={"help": "Cache directory to add the teacher to."})
    teacher: str = field(metadata={"help": "Name of the imported teacher in the cache."})
    file: Path = field(metadata={"help": ".parquet, .csv or .npy file of logits (README: imported logits)."})
    split: str | None = field(default=None, metadata={"help": (
        "The split a file without a `split` column (or an .npy file) holds.")})
    label_names: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "Comma-separated label names in the order of the file's logits; default: the cache's order.")})
    source: str = field(default="", metadata={"help": "Where the logits come from (recorded), e.g. a model id."})
    revision: str | None = field(default=None, metadata={"help": "The source's revision (recorded)."})
    note: str = field(default="", metadata={"help": "A free-form note recorded with the teacher."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", Path(self.cache))
        object.__setattr__(self, "file", Path(self.file))
        validate_name(self.teacher, "teacher")
        if self.file.suffix.lower() not in _SUFFIXES:
            raise ConfigError(f"--file {self.file} must be a .parquet, .csv or .npy file.")
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))
            if len(set(self.label_names)) != len(self.label_names):
                raise ConfigError(f"--label-names names a label twice: {', '.join(self.label_names)}.")


@dataclass
class ImportReport:
    teacher: str
    rows: dict[str, int]  # per split
    shards_written: int = 0
    shards_reused: int = 0
    file_sha256: str = ""


def import_logits(config: ImportConfig) -> ImportReport:
    """Check the whole file against the cache, then commit its shards; nothing is written if any check fails."""
    manifest = load_manifest(config.cache)
    if not config.file.is_file():
        raise ConfigError(f"--file {config.file} does not exist.")
    file_sha256 = sha256_file(config.file)
    per_split = _read_logits(config, manifest)
    record = TeacherRecord(
        name=config.teacher, source=config.source or config.file.name, backend=IMPORTED, revision=config.revision,
        weights_sha256="", tokenizer_sha256="", dtype="float32", max_length=0,
        model_label_names=list(manifest.label_names), label_mapping=list(range(len(manifest.label_names))),
        scoring=IMPORTED, file_sha256=file_sha256, note=config.note,
    )
    report = ImportReport(config.teacher, {split: len(logits) for split, logits in per_split.items()},
                          file_sha256=file_sha256)
    with CacheLock(config.cache):
        remove_temporaries(config.cache)
        refuse_symlinks(config.cache)
        manifest = load_manifest(config.cache)  # as committed now, under the lock
        _check_identity(manifest, record)
        schema = outputs_schema(len(manifest.label_names), manifest.logits_dtype)
        with ShardCommitter(config.cache, manifest) as committer:
            for split, logits in per_split.items():
                stored = _stored(logits, manifest.logits_dtype, config.teacher, split)
                for start in range(0, len(logits), manifest.shard_rows):
                    end = min(start + manifest.shard_rows, len(logits))
                    existing = manifest.shard(split, config.teacher, start)
                    if existing is not None and existing.row_end == end and shard_is_intact(config.cache, existing):
                        report.shards_reused += 1
                        continue
                    table = outputs_table(np.arange(start, end), stored[start:end], logits[start:end].argmax(axis=1),
                                          manifest.logits_dtype)
                    shard = ShardRecord(outputs_path(config.teacher, split, start, end), split, config.teacher,
                                        start, end, end - start, 0, "")
                    committer.submit(shard, table, schema, record)
                    report.shards_written += 1
    return report


def _check_identity(manifest: Manifest, record: TeacherRecord) -> None:
    cached = manifest.teachers.get(record.name)
    if cached is None:
        return
    differences = cached.differences(record)
    if differences:
        listed = "; ".join(f"{f}: cached {old!r}, now {new!r}" for f, old, new in differences)
        raise CacheMismatchError(f"teacher '{record.name}' is already in the cache and is not this import ({listed}); "
                                 "import under another --teacher name.")


def _stored(logits: np.ndarray, logits_dtype: str, teacher: str, split: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        stored = logits.astype(logits_dtype)
    bad = np.flatnonzero(~np.isfinite(stored).all(axis=1))
    if len(bad):
        raise DataError(f"teacher '{teacher}': logits too large for {logits_dtype} on split '{split}' for sample ids "
                        f"{_shown(bad)}; import into a cache built with --logits-dtype float32.")
    return stored


# --- reading and checking the file -----------------------------------------------------------------------

def _read_logits(config: ImportConfig, manifest: Manifest) -> dict[str, np.ndarray]:
    """float32 logits [rows, K] in the cache's label order, per split the file covers, all rows checked."""
    names = list(manifest.label_names)
    file_order = list(config.label_names or names)
    if sorted(file_order) != sorted(names):
        raise ConfigError(f"--label-names {', '.join(file_order)} are not the cache's labels ({', '.join(names)}); "
                          "name each of the cache's labels once, in the file's order.")
    to_cache = [file_order.index(name) for name in names]
    if config.file.suffix.lower() == ".npy":
        split = _named_split(config, manifest, None)
        values = _load_npy(config.file)
        _check_width(values.shape[1], len(names), config.file)
        _check_rows(split, np.arange(len(values)), manifest.splits[split].rows, config.file)
        return {split: _finite(values[:, to_cache], split, np.arange(len(values)), config.file)}
    table = _load_table(config.file)
    splits = _split_column(table, config, manifest)
    result = {}
    for split in dict.fromkeys(s for s in splits if s is not None):
        rows = np.flatnonzero(splits == split)
        ids = _sample_ids(table, rows, split, config, manifest)
        values = _table_logits(table, rows, names, file_order, config.file)[:, to_cache]
        _check_rows(split, ids, manifest.splits[split].rows, config.file)
        ordered = np.empty_like(values)
        ordered[ids] = values
        result[split] = _finite(ordered, split, np.arange(len(ordered)), config.file)
    return result


def _load_npy(path: Path) -> np.ndarray:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"--file {path} is not a readable .npy array ({error}).") from error
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
        raise DataError(f"--file {path} holds a {values.dtype} array of shape {values.shape}; it must be float "
                        "logits of shape [rows, classes].")
    return values.astype(np.float32)


def _load_table(path: Path) -> pa.Table:
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"--file {path} cannot be read ({str(error).splitlines()[0]}).") from error


def _named_split(config: ImportConfig, manifest: Manifest, in_file: str | None) -> str:
    split = config.split or in_file or (next(iter(manifest.splits)) if len(manifest.splits) == 1 else None)
    if split is None:
        raise ConfigError(f"--file {config.file} has no `split` column; name its split with --split "
                          f"({', '.join(manifest.splits)}).")
    if split not in manifest.splits:
        raise ConfigError(f"split '{split}' is not in the cache ({', '.join(manifest.splits)}).")
    return split


def _split_column(table: pa.Table, config: ImportConfig, manifest: Manifest) -> np.ndarray:
    if "split" not in table.column_names:
        return np.full(table.num_rows, _named_split(config, manifest, None), dtype=object)
    splits = np.asarray(table.column("split").cast(pa.string()).to_pylist(), dtype=object)
    unknown = sorted({s for s in splits if s not in manifest.splits}, key=str)
    if unknown:
        raise DataError(f"--file {config.file} names split(s) {', '.join(map(str, unknown))}, which the cache does not "
                        f"hold ({', '.join(manifest.splits)}).")
    if config.split is not None:
        keep = splits == config.split
        if not keep.any():
            raise DataError(f"--file {config.file} has no rows of split '{config.split}'.")
        return np.where(keep, splits, None)
    return splits


def _sample_ids(table: pa.Table, rows: np.ndarray, split: str, config: ImportConfig, manifest: Manifest) -> np.ndarray:
    """The rows' sample ids: the file's own, or found by text; a text given beside an id must match the cache's."""
    has_ids, has_texts = "sample_id" in table.column_names, "text" in table.column_names
    if not has_ids and not has_texts:
        raise DataError(f"--file {config.file} has neither a `sample_id` nor a `text` column to key its rows by.")
    cached_texts = open_cache(config.cache).inputs(split).texts if has_texts else None
    if has_ids:
        column = table.column("sample_id")
        if not pa.types.is_integer(column.type) or column.null_count:
            raise DataError(f"--file {config.file}: column sample_id must hold integers, not {column.type}.")
        ids = column.to_numpy(zero_copy_only=False)[rows].astype(np.int64)
        if has_texts:
            texts = table.column("text").to_pylist()
            inside = (ids >= 0) & (ids < len(cached_texts))
            differing = [int(i) for i, row in zip(ids, rows) if 0 <= i < len(cached_texts) and texts[row] != cached_texts[i]]
            if inside.all() and differing:
                raise DataError(f"--file {config.file}: the text of sample id(s) {_shown(np.array(differing))} of split "
                                f"'{split}' is not the cache's; the file belongs to other data.")
        return ids
    position = {}
    repeated = set()
    for i, text in enumerate(cached_texts):
        if text in position:
            repeated.add(text)
        position[text] = i
    texts = table.column("text").to_pylist()
    keyed = [texts[row] for row in rows]
    ambiguous = sorted({t for t in keyed if t in repeated})
    if ambiguous:
        raise DataError(f"--file {config.file}: split '{split}' holds {len(ambiguous)} text(s) more than once "
                        f"(e.g. {ambiguous[0][:60]!r}), so rows keyed by text are ambiguous; add a sample_id column.")
    unknown = [t for t in keyed if t not in position]
    if unknown:
        raise DataError(f"--file {config.file}: {len(unknown)} text(s) of split '{split}' are not in the cache "
                        f"(first: {unknown[0][:60]!r}); the file belongs to other data.")
    return np.array([position[t] for t in keyed], dtype=np.int64)


def _table_logits(table: pa.Table, rows: np.ndarray, names: list[str], file_order: list[str], path: Path) -> np.ndarray:
    """[rows, K] in `file_order` (a label-per-column file is read in that order by name)."""
    if "logits" in table.column_names:
        column = table.column("logits").combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or
                pa.types.is_large_list(column.type)):
            raise DataError(f"--file {path}: column logits must be a list of numbers per row, not {column.type}.")
        lengths = np.asarray(column.value_lengths().to_numpy(zero_copy_only=False))[rows]
        wrong = np.flatnonzero(lengths != len(names))
        if len(wrong):
            raise DataError(f"--file {path}: {len(wrong)} row(s) hold {int(lengths[wrong[0]])} logits, the cache has "
                            f"{len(names)} classes ({', '.join(names)}).")
        values = np.stack([np.asarray(column[int(r)].as_py(), dtype=np.float32) for r in rows]) if len(rows) else \
            np.zeros((0, len(names)), np.float32)
        return values
    present = [name for name in names if name in table.column_names]
    if not present:
        raise DataError(f"--file {path} has no `logits` column and no column named by a label ({', '.join(names)}).")
    _check_width(len(present), len(names), path)
    return np.stack([table.column(name).cast(pa.float32()).to_numpy(zero_copy_only=False)[rows] for name in file_order],
                    axis=1)


def _check_width(got: int, want: int, path: Path) -> None:
    if got != want:
        raise DataError(f"--file {path} holds {got} logits per row, the cache has {want} classes.")


def _check_rows(split: str, ids: np.ndarray, rows: int, path: Path) -> None:
    """Every sample id of the split exactly once."""
    unknown = ids[(ids < 0) | (ids >= rows)]
    if len(unknown):
        raise DataError(f"--file {path}: sample id(s) {_shown(unknown)} are not in split '{split}' (ids 0..{rows - 1}).")
    counts = np.bincount(ids, minlength=rows)
    repeated = np.flatnonzero(counts > 1)
    if len(repeated):
        raise DataError(f"--file {path}: sample id(s) {_shown(repeated)} of split '{split}' appear more than once.")
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise DataError(f"--file {path}: split '{split}' lacks sample id(s) {_shown(missing)} ({len(missing)} of "
                        f"{rows}); every row of a split must be in the file.")


def _finite(values: np.ndarray, split: str, ids: np.ndarray, path: Path) -> np.ndarray:
    bad = ids[~np.isfinite(values).all(axis=1)]
    if len(bad):
        raise DataError(f"--file {path}: NaN or infinite logits for sample id(s) {_shown(bad)} of split '{split}'.")
    return values


def _shown(ids: np.ndarray) -> str:
    ids = np.asarray(ids)
    return ", ".join(map(str, ids[:_NAMED].tolist())) + (" …" if len(ids) > _NAMED else "")
