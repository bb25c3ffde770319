"""Parquet shards: their schemas, atomic writes and checksum-verified reads.

Two kinds of shard, both keyed by `sample_id` (the row's position in its split; paths from layout.py):
  inputs/<split>/rows-<start>-<end>.parquet           sample_id, text, [text_pair], label (class index or null)
  outputs/<teacher>/<split>/rows-<start>-<end>.parquet sample_id, logits (fixed_size_list<K> of float16|float32), pred

Logits are stored with dictionary encoding off (floats do not repeat, and pyarrow decodes a
dictionary-encoded FixedSizeList<float16> 3-4x slower), BYTE_STREAM_SPLIT on the float leaf and zstd:
the smallest files of the layouts measured, read by pyarrow, polars and `datasets` as a fixed-size list
of halffloat (numbers in the README). The Arrow schema is stored in the file (pyarrow's default); without
it the list comes back variable-sized.
A shard is serialized in memory, hashed, written to a hidden temporary name, fsynced and renamed, so
a final path only ever holds a complete file whose sha256 is known before the manifest lists it.

A shard carries its own identity in the Parquet key-value metadata (key `mtkd_cache.shard`, JSON): its
split, its teacher's name and identity digest (TeacherRecord.identity; null for inputs), its row range and
the dataset fingerprint. A checksum only proves the bytes are the ones the manifest lists; the identity
proves they are the rows, teacher and split it lists them as, so a self-consistent but wrong manifest (one
shard listed as another's, with its sha256 updated) is refused by the reader and by `verify`. Shards of
format 1 have no identity metadata; for them, and for every shard, the sample ids must be the listed range.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtkd_cache.atomic import write_atomically
from mtkd_cache.cache.manifest import LogitsDType as LogitsDType  # defined with the manifest that validates it
from mtkd_cache.cache.manifest import Manifest, ShardRecord, TeacherRecord
from mtkd_cache.errors import CacheFormatError, CacheIntegrityError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import outputs_path as outputs_path  # re-exported for benchmarks/bench_cache_io.py only

IDENTITY_KEY = b"mtkd_cache.shard"

# BYTE_STREAM_SPLIT must name the leaf path; pyarrow silently ignores the plain column name "logits".
# Sample ids are consecutive (delta encoding stores them in a few bytes); predictions repeat (dictionary).
_WRITE_OPTIONS = {"compression": "zstd", "use_dictionary": ["pred"], "write_statistics": ["sample_id"]}
_OUTPUTS_ENCODING = {"logits.list.element": "BYTE_STREAM_SPLIT", "sample_id": "DELTA_BINARY_PACKED"}
_INPUTS_ENCODING = {"sample_id": "DELTA_BINARY_PACKED"}


def inputs_schema(with_pair: bool) -> pa.Schema:
    fields = [pa.field("sample_id", pa.int64(), nullable=False), pa.field("text", pa.string(), nullable=False)]
    if with_pair:
        fields.append(pa.field("text_pair", pa.string(), nullable=False))
    fields.append(pa.field("label", pa.int32()))
    return pa.schema(fields)


def outputs_schema(num_labels: int, logits_dtype: str) -> pa.Schema:
    return pa.schema([
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("logits", pa.list_(pa.field("element", getattr(pa, logits_dtype)(), nullable=False), num_labels),
                 nullable=False),
        pa.field("pred", pa.int16(), nullable=False),
    ])


def inputs_table(sample_ids: np.ndarray, texts: list[str], pairs: list[str] | None, labels: np.ndarray) -> pa.Table:
    columns = {"sample_id": pa.array(sample_ids, pa.int64()), "text": pa.array(texts, pa.string())}
    if pairs is not None:
        columns["text_pair"] = pa.array(pairs, pa.string())
    columns["label"] = pa.array(labels, pa.int32(), mask=labels < 0)
    return pa.table(columns, schema=inputs_schema(pairs is not None))


def outputs_table(sample_ids: np.ndarray, logits: np.ndarray, preds: np.ndarray, logits_dtype: str) -> pa.Table:
    """`logits` [rows, K] already in the cache's label order; cast here to the cache's logit dtype."""
    rows, num_labels = logits.shape
    flat = pa.array(np.ascontiguousarray(logits, dtype=logits_dtype).reshape(-1))
    return pa.table(
        {"sample_id": pa.array(sample_ids, pa.int64()),
         "logits": pa.FixedSizeListArray.from_arrays(flat, num_labels),
         "pred": pa.array(preds.astype(np.int16), pa.int16())},
        schema=outputs_schema(num_labels, logits_dtype),
    )


def shard_identity(record: ShardRecord, dataset_fingerprint: str, teacher: TeacherRecord | None) -> dict:
    """What a shard says it is (stored in its metadata; compared with the manifest on every read)."""
    return {"split": record.split, "teacher": teacher.name if teacher else None,
            "teacher_identity": teacher.identity() if teacher else None,
            "row_start": record.row_start, "row_end": record.row_end, "dataset_fingerprint": dataset_fingerprint}


def expected_identity(manifest: Manifest, record: ShardRecord) -> dict:
    teacher = manifest.teachers[record.teacher] if record.teacher is not None else None
    return shard_identity(record, manifest.dataset.fingerprint, teacher)


def write_shard(cache_dir: Path, relative_path: str, table: pa.Table, expected: pa.Schema,
                identity: dict | None = None) -> tuple[int, str]:
    """Write `table` atomically at `relative_path` with `identity` in its metadata; return (bytes, sha256).
    Refuses a schema drift."""
    if not table.schema.equals(expected):
        # RELIABILITY.md fault 15: mixed logit dtypes or renamed columns never reach a committed shard.
        raise CacheFormatError(f"shard {relative_path} has schema {table.schema}, expected {expected}.")
    if identity is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), IDENTITY_KEY: json.dumps(identity)})
    buffer = io.BytesIO()
    encoding = _OUTPUTS_ENCODING if "logits" in table.column_names else _INPUTS_ENCODING
    pq.write_table(table, buffer, column_encoding=encoding, **_WRITE_OPTIONS)
    data = buffer.getvalue()
    write_bytes_atomically(cache_dir, relative_path, data)
    return len(data), sha256_bytes(data)


def write_bytes_atomically(cache_dir: Path, relative_path: str, data: bytes) -> None:
    """A shard-like file under the cache directory, durably (see atomic.py), with the shard fault points."""
    write_atomically(cache_dir / relative_path, data, durable=True, fault="shard")


def read_verified_bytes(cache_dir: Path, record: ShardRecord) -> bytes:
    """The shard's bytes after checking existence, size (before reading) and sha256."""
    data = read_shard_bytes(cache_dir, record)
    actual = sha256_bytes(data)
    if actual != record.sha256:
        raise CacheIntegrityError(
            f"shard {record.path} is corrupt: sha256 {actual}, the manifest says {record.sha256}; "
            "delete it and re-run `mtkd-cache build`, or pull a good copy."
        )
    return data


def read_shard_bytes(cache_dir: Path, record: ShardRecord) -> bytes:
    """The bytes of a listed shard, refusing a symbolic link (O_NOFOLLOW): a cache holds its own files, and a
    link could make a reader (or a build that reuses the shard) act on a file outside the cache. The size is
    checked from the open file before its bytes are read, so a truncated or swapped shard is never parsed."""
    path = cache_dir / record.path
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CacheIntegrityError(
            f"shard {record.path} listed in the manifest is missing; re-run `mtkd-cache build` to recompute it."
        ) from None
    except OSError as error:
        if path.is_symlink():
            raise CacheIntegrityError(f"shard {record.path} is a symbolic link; a cache holds only plain files: "
                                      "delete the link and re-run `mtkd-cache build`, or pull a good copy.") from None
        raise CacheIntegrityError(f"shard {record.path} cannot be read ({error.strerror or error}); "
                                  "re-run `mtkd-cache build` to recompute it.") from None
    with os.fdopen(descriptor, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != record.bytes:
            raise CacheIntegrityError(
                f"shard {record.path} is {size} bytes, the manifest says {record.bytes} (truncated or replaced); "
                "re-run `mtkd-cache build` to recompute it."
            )
        return handle.read()


def check_identity(table: pa.Table, record: ShardRecord, manifest: Manifest) -> None:
    """Refuse a shard that is not what the manifest lists it as: its metadata (where it has any: format 1
    shards have none) must match the manifest, and its sample ids must be exactly the listed row range."""
    stored = (table.schema.metadata or {}).get(IDENTITY_KEY)
    if stored is not None:
        try:
            identity = json.loads(stored)
        except ValueError:  # not JSON, or not UTF-8: no identity this package wrote
            identity = {}
        for key, expected in expected_identity(manifest, record).items():
            if key == "teacher":  # names are labels (merge --rename changes them); the identity digest decides
                continue
            if not isinstance(identity, dict) or identity.get(key) != expected:
                actual = identity.get(key) if isinstance(identity, dict) else identity
                raise _wrong_shard(record, f"its metadata says {key} {actual!r}, the manifest lists {expected!r}")
    ids = table.column("sample_id").to_numpy()
    if len(ids) != record.rows or not np.array_equal(ids, np.arange(record.row_start, record.row_end)):
        shown = f"{ids[0]}..{ids[-1]}" if len(ids) else "no rows"
        raise _wrong_shard(record, f"it holds sample ids {shown}, the manifest lists rows "
                                   f"{record.row_start}..{record.row_end - 1}")


def _wrong_shard(record: ShardRecord, detail: str) -> CacheIntegrityError:
    return CacheIntegrityError(f"shard {record.path} is not the shard the manifest lists ({detail}); "
                               "the manifest or the shard was replaced: pull a good copy or rebuild the cache.")


def check_finite_logits(table: pa.Table, record: ShardRecord) -> np.ndarray:
    """The shard's logits [rows, K], refusing NaN or infinite values (an older mtkd-cache committed float16
    overflow as inf, and distilling from it trains on NaN losses)."""
    logits = logits_array(table)
    finite = np.isfinite(logits).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0]) + record.row_start
        raise CacheIntegrityError(
            f"shard {record.path} holds NaN or infinite logits in {int((~finite).sum())} row(s) (first: sample {first}); "
            "rebuild the cache into a new --out, with --logits-dtype float32 if the teacher's logits overflow float16."
        )
    return logits


def shard_is_intact(cache_dir: Path, record: ShardRecord) -> bool:
    try:
        read_verified_bytes(cache_dir, record)
    except CacheIntegrityError:
        return False
    return True


def parse_shard(data: bytes, columns: list[str] | None = None) -> pa.Table:
    # ParquetFile.read skips read_table's dataset layer (and its pandas import); one thread per shard is
    # faster here than pyarrow's pool for single-row-group files.
    return pq.ParquetFile(pa.BufferReader(data)).read(columns=columns, use_threads=False)


def logits_array(table: pa.Table) -> np.ndarray:
    """The `logits` column as a [rows, K] numpy array without a per-row copy."""
    column = table.column("logits").combine_chunks()
    num_labels = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, num_labels)
