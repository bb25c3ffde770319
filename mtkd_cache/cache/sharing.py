"""Sharing caches: `push` and `pull` to and from any fsspec URL, and `merge` of caches built apart.

One person pays for the teachers; the team distils from their cache. Transfers are content-addressed:
a shard moves only when the other side lacks it (same path and sha256, checked by hashing the bytes that
are there). Shards land under a temporary name, are verified, then renamed; the manifest is written
last, so an interrupted transfer leaves the destination's previous manifest — and everything it lists —
valid, and a re-run moves only what is still missing. A destination that already holds other teachers
of the same dataset keeps them: push and pull merge manifests, they never drop what is there — not even
when two pushes to one remote run at the same time (remote.py: the directory's lock, S3's conditional
writes; other backends cannot guard it and push says so). A re-run removes the temporaries a killed
transfer left, never a concurrent one's (only those older than itself). `pull` and `merge` write only into
a new or empty directory or a cache, and a destination that is full or read-only is one error line.

Credentials come from each backend's usual places (environment, config files, instance roles), read by
fsspec and its backends (s3fs, gcsfs, huggingface_hub's HfFileSystem); this module never sees or prints them.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.cache.card import render_card
from mtkd_cache.cache.committer import make_directory, refuse_foreign_directory, refuse_symlinks
from mtkd_cache.cache.destination import is_new_or_empty, remove_stale_temporaries, undone_on_failure
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.cache.manifest import Manifest, ShardRecord, load_manifest
from mtkd_cache.cache.remote import (
    commit_manifest,
    filesystem,
    join,
    pushing_alone,
    read_remote_manifest,
    remove_stale_uploads,
    upload,
    write_card,
)
from mtkd_cache.cache.shards import read_verified_bytes, shard_is_intact, write_bytes_atomically
from mtkd_cache.errors import CacheFormatError, CacheIntegrityError, CacheMismatchError, CacheWriteError, ConfigError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import MANIFEST_NAME, OUTPUTS_DIR, validate_name
from mtkd_cache.progress import BYTES, ProgressEvents, SilentEvents

__all__ = ["MergeReport", "TransferReport", "check_compatible", "combine", "merge", "parse_renames", "pull", "push",
           "read_remote_manifest"]

@dataclass
class TransferReport:
    shards_moved: int = 0
    shards_present: int = 0  # already at the destination with the right sha256: not moved
    bytes_moved: int = 0
    bytes_total: int = 0  # of every shard the destination ends up listing from this transfer
    seconds: float = 0.0


@dataclass
class MergeReport:
    out: Path
    teachers: dict[str, str] = field(default_factory=dict)  # merged teacher name -> source cache
    shards: int = 0


def check_compatible(ours: Manifest, theirs: Manifest, where: str) -> None:
    """Caches join only when they describe the same dataset, labels, splits and logit dtype."""
    differences = [
        (name, a, b) for name, a, b in (
            ("dataset fingerprint", ours.dataset.fingerprint, theirs.dataset.fingerprint),
            ("label names", ours.label_names, theirs.label_names),
            ("splits", {k: v.rows for k, v in ours.splits.items()}, {k: v.rows for k, v in theirs.splits.items()}),
            ("logits dtype", ours.logits_dtype, theirs.logits_dtype),
            ("shard rows", ours.shard_rows, theirs.shard_rows),
        ) if a != b
    ]
    if differences:
        listed = "; ".join(f"{name}: {a!r} here, {b!r} in {where}" for name, a, b in differences)
        raise CacheMismatchError(f"{where} holds a cache of other data ({listed}); use another destination.")


def combine(base: Manifest, addition: Manifest, where: str, renames: dict[str, str] | None = None) -> Manifest:
    """`base` plus the teachers and shards of `addition` (teachers renamed by `renames`).

    The same teacher name with another identity is refused; the same teacher twice is kept once.
    """
    check_compatible(base, addition, where)
    renames = renames or {}
    merged = copy.deepcopy(base)
    for name, record in addition.teachers.items():
        new_name = renames.get(name, name)
        existing = merged.teachers.get(new_name)
        candidate = copy.deepcopy(record)
        candidate.name = new_name
        if existing is not None and existing.differences(candidate):
            fields = ", ".join(f for f, _, _ in existing.differences(candidate))
            raise CacheMismatchError(
                f"teacher '{new_name}' in {where} is not the same teacher as the one already here (differs in "
                f"{fields}); rename one of them (merge --rename) or leave it out."
            )
        merged.teachers[new_name] = candidate
    for record in addition.shards:
        shard = copy.deepcopy(record)
        if shard.teacher is not None and shard.teacher in renames:
            shard.teacher = renames[shard.teacher]
            shard.path = shard.path.replace(f"{OUTPUTS_DIR}/{record.teacher}/", f"{OUTPUTS_DIR}/{shard.teacher}/", 1)
        if merged.shard(shard.split, shard.teacher, shard.row_start) is None:
            merged.put_shard(shard)
    return merged


def _only_teachers(manifest: Manifest, teachers: tuple[str, ...] | None) -> Manifest:
    if teachers is None:
        return manifest
    unknown = [t for t in teachers if t not in manifest.teachers]
    if unknown:
        raise ConfigError(f"--teachers {', '.join(unknown)}: the cache has {', '.join(manifest.teachers)}.")
    kept = copy.deepcopy(manifest)
    kept.teachers = {name: record for name, record in kept.teachers.items() if name in teachers}
    kept.shards = [s for s in kept.shards if s.teacher is None or s.teacher in teachers]
    return kept


def push(cache_dir: Path, url: str, events: ProgressEvents | None = None) -> TransferReport:
    """Send the shards `url` lacks, verify each on arrival, then merge this cache into the manifest there.

    Concurrent pushes to one remote all end up listed (remote.py says how each backend guarantees it);
    temporaries of earlier, killed pushes are removed at the end. Progress is one task in bytes: the total
    of the shards found missing."""
    events = events or SilentEvents()
    local = load_manifest(cache_dir)
    fs, root = filesystem(url)
    started = time.time()
    with pushing_alone(fs, root, url, events):
        remote = read_remote_manifest(url)
        merged = combine(remote, local, str(cache_dir)) if remote is not None else copy.deepcopy(local)
        listed = {(r.path, r.sha256) for r in remote.shards} if remote is not None else set()
        report = TransferReport()
        clock = time.perf_counter()
        moving = _moving(merged, local)
        missing = [r for r in moving if not _remote_matches(fs, join(root, r.path), r, (r.path, r.sha256) in listed)]
        report.bytes_total = sum(r.bytes for r in moving)
        report.shards_present = len(moving) - len(missing)
        events.task(f"push → {url}", sum(r.bytes for r in missing), unit=BYTES)
        for record in missing:
            data = read_verified_bytes(cache_dir, record)
            upload(fs, root, record, data)
            report.shards_moved += 1
            report.bytes_moved += len(data)
            events.advance(len(data))
        # Merged again with the manifest as it is now: another push may have committed since it was read.
        committed = commit_manifest(fs, root, url, lambda current: _with_local(current, local, str(cache_dir)))
        write_card(fs, root, render_card(committed, url))  # every teacher the remote now lists
        remove_stale_uploads(fs, root, started)
    report.seconds = time.perf_counter() - clock
    return report


def _with_local(current: Manifest | None, local: Manifest, where: str) -> Manifest:
    return combine(current, local, where) if current is not None else copy.deepcopy(local)


def pull(url: str, cache_dir: Path, teachers: tuple[str, ...] | None = None,
         events: ProgressEvents | None = None) -> TransferReport:
    """Fetch the shards `cache_dir` lacks (inputs and `teachers`, default all), verify each, then commit.

    `cache_dir` must be new, empty or a cache; one this pull made is removed again when it cannot be
    written (disk full, read-only). Progress is one task in bytes: the total of the shards found missing."""
    events = events or SilentEvents()
    refuse_foreign_directory(cache_dir, "destination")
    if cache_dir.is_dir():
        refuse_symlinks(cache_dir)  # a linked folder inside would let the pull write outside the cache
    remote = read_remote_manifest(url)
    if remote is None:
        raise CacheFormatError(f"{url} holds no {MANIFEST_NAME}; is it the URL a cache was pushed to?")
    wanted = _only_teachers(remote, teachers)
    fs, root = filesystem(url)
    fresh = is_new_or_empty(cache_dir)
    created = make_directory(cache_dir)
    # A dropped link keeps what arrived (a re-run resumes); a destination that cannot be written keeps nothing.
    with undone_on_failure(cache_dir, created, CacheWriteError) if fresh else contextlib.nullcontext():
        return _pull_into(fs, root, url, wanted, cache_dir, events)


def _pull_into(fs, root: str, url: str, wanted: Manifest, cache_dir: Path, events: ProgressEvents) -> TransferReport:
    report = TransferReport()
    started, clock = time.time(), time.perf_counter()
    with CacheLock(cache_dir):
        local = load_manifest(cache_dir) if (cache_dir / MANIFEST_NAME).exists() else None
        merged = combine(local, wanted, url) if local is not None else copy.deepcopy(wanted)
        moving = _moving(merged, wanted)
        missing = [record for record in moving if not shard_is_intact(cache_dir, record)]
        report.bytes_total = sum(r.bytes for r in moving)
        report.shards_present = len(moving) - len(missing)
        events.task(f"pull ← {url}", sum(r.bytes for r in missing), unit=BYTES)
        for record in missing:
            data = fs.cat_file(join(root, record.path))
            if len(data) != record.bytes or sha256_bytes(data) != record.sha256:
                raise CacheIntegrityError(
                    f"remote shard {url.rstrip('/')}/{record.path} is corrupt (expected sha256 {record.sha256}, "
                    f"{record.bytes} bytes; got {sha256_bytes(data)}, {len(data)} bytes); nothing was committed here. "
                    "Ask its owner to re-push it."
                )
            write_bytes_atomically(cache_dir, record.path, data)
            report.shards_moved += 1
            report.bytes_moved += len(data)
            events.advance(len(data))
        merged.save(cache_dir)
        remove_stale_temporaries(cache_dir, started)
    report.seconds = time.perf_counter() - clock
    return report


def _moving(merged: Manifest, source: Manifest) -> list[ShardRecord]:
    """The merged manifest's shards that come from `source`; where both sides hold a shard for the same
    rows, the destination's own stays and nothing moves."""
    offered = {(record.path, record.sha256) for record in source.shards}
    return [record for record in merged.shards if (record.path, record.sha256) in offered]


def _remote_matches(fs, path: str, record: ShardRecord, listed: bool) -> bool:
    """A shard the remote manifest lists is trusted at the right size (pushes verify on arrival, and
    `pull` re-hashes whatever it fetches); an unlisted one, left by an interrupted push, is read back and
    hashed before it is reused."""
    try:
        if fs.size(path) != record.bytes:
            return False
        return listed or sha256_bytes(fs.cat_file(path)) == record.sha256
    except FileNotFoundError:
        return False


def parse_renames(items: list[str], caches: int) -> dict[int, dict[str, str]]:
    """`--rename N:OLD=NEW` arguments as {cache index (0-based): {old name: new name}}."""
    renames: dict[int, dict[str, str]] = {}
    for item in items:
        position, _, pair = item.partition(":")
        old, _, new = pair.partition("=")
        if not position.isdigit() or not old or not new or not 1 <= int(position) <= caches:
            raise ConfigError(f"--rename '{item}' must look like N:OLD=NEW with N between 1 and {caches}.")
        renames.setdefault(int(position) - 1, {})[old] = new
    return renames


def merge(cache_dirs: list[Path], out: Path, renames: dict[int, dict[str, str]] | None = None) -> MergeReport:
    """Join caches of the same dataset into `out`; `renames[i]` renames teachers of the i-th cache (0-based)."""
    if len(cache_dirs) < 2:
        raise ConfigError("merge needs at least two caches.")
    refuse_foreign_directory(out)
    if out.is_dir():
        refuse_symlinks(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; merge writes a new cache.")
    renames = renames or {}
    manifests = [load_manifest(d) for d in cache_dirs]
    merged = _only_teachers(manifests[0], ())
    sources: dict[str, tuple[Path, ShardRecord]] = {}
    report = MergeReport(out=out)
    for index, (directory, manifest) in enumerate(zip(cache_dirs, manifests)):
        mapping = renames.get(index, {})
        for new_name in mapping.values():
            validate_name(new_name, "teacher")
        unknown = [name for name in mapping if name not in manifest.teachers]
        if unknown:
            raise ConfigError(f"--rename names teacher(s) {', '.join(unknown)} that {directory} does not hold.")
        merged = combine(merged, manifest, str(directory), mapping)
        for record in manifest.shards:
            teacher = mapping.get(record.teacher, record.teacher) if record.teacher else None
            target = merged.shard(record.split, teacher, record.row_start)
            sources.setdefault(target.path, (directory, record))
        report.teachers.update({mapping.get(n, n): str(directory) for n in manifest.teachers
                                if mapping.get(n, n) not in report.teachers})
    created = make_directory(out)
    # merge writes only new caches: nothing of a failed one is worth keeping.
    with undone_on_failure(out, created), CacheLock(out):
        for record in merged.shards:
            directory, source = sources[record.path]
            write_bytes_atomically(out, record.path, read_verified_bytes(directory, source))
            report.shards += 1
        merged.save(out)
    return report
