"""Writing into a cache directory: claiming it, clearing what a killed build left, committing shards.

The manifest is the commit point (RELIABILITY.md): a shard is written under a temporary name, fsynced
and renamed, then the manifest that lists it is replaced atomically. `ShardCommitter` does both on one
background thread so the next shard computes meanwhile; at most one commit is in flight.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from mtkd_cache.atomic import TEMP_PREFIX, write_error
from mtkd_cache.cache.manifest import Manifest, ShardRecord, TeacherRecord, load_manifest
from mtkd_cache.cache.shards import shard_identity, write_shard
from mtkd_cache.cache.verify import symlinks_inside
from mtkd_cache.errors import ConfigError, MtkdError
from mtkd_cache.layout import LOCK_NAME, MANIFEST_NAME, RECEIPTS_DIR, SHARD_FOLDERS


def make_directory(out: Path) -> bool:
    """Create `out`; True when this call created it (decided atomically, so a racing build cannot confuse it)."""
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as error:
        raise write_error(out, error) from error
    return True


def holds_teacher_outputs(out: Path) -> bool:
    try:
        return any(record.teacher is not None for record in load_manifest(out).shards)
    except MtkdError:
        return False


def refuse_foreign_directory(out: Path, what: str = "--out") -> None:
    """`out` is new, empty or a cache (a manifest, or only what a killed build left); `what` names it in
    the message (build's `--out`, pull's `destination`)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is a file; give a directory for the cache.")
    if not out.exists() or (out / MANIFEST_NAME).exists():
        return
    ours = {LOCK_NAME, *SHARD_FOLDERS, RECEIPTS_DIR}
    foreign = [p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith((TEMP_PREFIX, f".{MANIFEST_NAME}"))]
    if foreign:
        raise ConfigError(
            f"{what} {out} is not empty and holds no cache (found {', '.join(sorted(foreign)[:5])}); choose an empty "
            "or new directory."
        )


def refuse_symlinks(out: Path) -> None:
    """A build writes only into the cache's own folders: a symbolic link inside it (a shard folder linked
    elsewhere, a linked shard) would let it write or truncate files outside the cache."""
    links = symlinks_inside(out)
    if links:
        raise ConfigError(
            f"{out} holds symbolic link(s) ({', '.join(links[:5])}); a cache holds only plain files and folders: "
            "replace each link with what it points to, or delete it, and re-run."
        )


class ShardCommitter:
    """Writes shards and commits the manifest on one background thread, at most one commit in flight."""

    def __init__(self, cache_dir: Path, manifest: Manifest):
        self.cache_dir = cache_dir
        self.manifest = manifest
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtkd-writer")
        self._pending: Future | None = None

    def submit(self, record: ShardRecord, table: pa.Table, schema: pa.Schema,
               teacher: TeacherRecord | None = None) -> None:
        self.wait()
        self._pending = self._executor.submit(self._commit, record, table, schema, teacher)

    def _commit(self, record: ShardRecord, table: pa.Table, schema: pa.Schema, teacher: TeacherRecord | None) -> None:
        owner = teacher if teacher is not None or record.teacher is None else self.manifest.teachers[record.teacher]
        identity = shard_identity(record, self.manifest.dataset.fingerprint, owner)
        record.bytes, record.sha256 = write_shard(self.cache_dir, record.path, table, schema, identity)
        if teacher is not None:
            self.manifest.teachers[teacher.name] = teacher
        self.manifest.put_shard(record)
        self.manifest.save(self.cache_dir)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> ShardCommitter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()  # let the in-flight commit finish; the original error wins
        finally:
            self._executor.shutdown(wait=True)
