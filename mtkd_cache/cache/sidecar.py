"""Decoded sidecars: a teacher shard's logits and predictions as raw arrays, so later reads skip Parquet.

Decoding `FixedSizeList<float16>` from Parquet is most of a cold read (benchmarks/bench_cache_io.py); a
raw array is read at memory speed. The first read of a teacher shard (hashed against the manifest,
identity-checked, finite) writes CACHE/decoded/<shard sha256>.logits; later reads by any process use it
when all of these hold, and otherwise read the shard as before:
  - its header names the shard's sha256 as the manifest lists it, and the record's rows, classes and
    logit dtype (a sidecar is only ever the decoding of that exact shard content);
  - the shard file is still the file it was when the sidecar was written (inode, size, modification and
    change times): a shard replaced or written since is read, and refused if damaged, as without a sidecar;
  - its payload hashes to the sha256 in its header (once per process and file state, like the shards).
A damaged, truncated or foreign sidecar is never used: it is ignored and rewritten from the shard. The
Parquet shards stay the cache's interface (push, pull, verify, other readers); the sidecars are derived
files like experts/ and student-inputs/, written atomically and not durably, skipped on a read-only cache.

File: b"MTKDDEC1", a uint32 header length, the JSON header, zero padding to a 64-byte boundary, then the
payload: logits [rows, classes] in the logit dtype, then predictions int16 [rows], both C order.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from mtkd_cache.atomic import write_atomically
from mtkd_cache.cache.manifest import ShardRecord
from mtkd_cache.errors import CacheWriteError
from mtkd_cache.layout import decoded_path

MAGIC = b"MTKDDEC1"
_ALIGN = 64
PRED_DTYPE = np.int16  # as in the shard's `pred` column: a cache has at most 32,767 classes
_verified: set[tuple] = set()  # (path, payload sha256, size, mtime_ns, inode) hashed in this process


def _shard_state(cache_dir: Path, record: ShardRecord) -> list[int] | None:
    """What changes when the shard file is replaced (inode) or written (size, mtime, ctime: utime cannot
    set the ctime back). An in-place write within the filesystem's timestamp tick of the sidecar's own
    write, keeping the size, is the one change this misses; `verify` still finds it."""
    try:
        stat = os.stat(cache_dir / record.path, follow_symlinks=False)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def write_sidecar(cache_dir: Path, record: ShardRecord, logits: np.ndarray, preds: np.ndarray) -> bool:
    """Store the decoded `logits` [rows, K] and `preds` [rows] of the verified shard `record`; False (and
    nothing written) where the cache cannot take it, e.g. a read-only shared cache."""
    state = _shard_state(cache_dir, record)
    if state is None:
        return False
    logits = np.ascontiguousarray(logits)
    payload = logits.tobytes() + np.ascontiguousarray(preds, dtype=PRED_DTYPE).tobytes()
    header = json.dumps({"shard_sha256": record.sha256, "rows": record.rows, "classes": int(logits.shape[1]),
                         "dtype": logits.dtype.name, "shard_state": state,
                         "payload_sha256": hashlib.sha256(payload).hexdigest()}).encode()
    start = len(MAGIC) + 4 + len(header)
    padding = b"\0" * (-start % _ALIGN)
    try:
        write_atomically(cache_dir / decoded_path(record.sha256),
                         MAGIC + struct.pack("<I", len(header)) + header + padding + payload, durable=False)
    except (OSError, CacheWriteError):
        return False
    return True


def read_sidecar(cache_dir: Path, record: ShardRecord, logits_out: np.ndarray, preds_out: np.ndarray) -> bool:
    """Fill `logits_out` [rows, K] (the cache's logit dtype) and `preds_out` [rows] with `record`'s decoded
    values from its sidecar; False, with nothing filled, when there is no usable one (missing, damaged, of
    other content, or the shard changed since it was written): read the shard then."""
    path = cache_dir / decoded_path(record.sha256)
    rows, classes = logits_out.shape
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return False
    with mapped:
        header = _header(mapped)
        if header is None or rows != record.rows or not _matches(header, record, classes, logits_out.dtype.name,
                                                                 _shard_state(cache_dir, record)):
            return False
        offset = len(MAGIC) + 4 + struct.unpack_from("<I", mapped, len(MAGIC))[0]
        offset += -offset % _ALIGN
        logits_bytes = rows * classes * logits_out.dtype.itemsize
        if len(mapped) != offset + logits_bytes + rows * np.dtype(PRED_DTYPE).itemsize:
            return False
        payload = memoryview(mapped)[offset:]
        try:
            key = (str(path), header["payload_sha256"], stat.st_size, stat.st_mtime_ns, stat.st_ino)
            if key not in _verified:  # hashlib releases the GIL: shards verify in parallel threads
                if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
                    return False
                _verified.add(key)
            logits_out[...] = np.frombuffer(payload, dtype=logits_out.dtype, count=rows * classes).reshape(rows, classes)
            preds_out[...] = np.frombuffer(payload, dtype=PRED_DTYPE, count=rows, offset=logits_bytes)
            return True
        finally:
            payload.release()  # the mapping closes with no view left on it


def _header(mapped: mmap.mmap) -> dict | None:
    if len(mapped) < len(MAGIC) + 4 or mapped[:len(MAGIC)] != MAGIC:
        return None
    length = struct.unpack_from("<I", mapped, len(MAGIC))[0]
    try:
        header = json.loads(mapped[len(MAGIC) + 4:len(MAGIC) + 4 + length])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def _matches(header: dict, record: ShardRecord, classes: int, dtype: str, shard: list[int] | None) -> bool:
    expected = {"shard_sha256": record.sha256, "rows": record.rows, "classes": classes, "dtype": dtype,
                "shard_state": shard}
    return shard is not None and all(header.get(key) == value for key, value in expected.items()) \
        and isinstance(header.get("payload_sha256"), str)
