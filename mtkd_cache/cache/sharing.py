"""Sharing caches: `push` and `pull` to and from any fsspec URL, and `merge` of caches built apart.

One person pays for the teachers; the team distils from their cache. Transfers are content-addressed:
a shard moves only when the other side lacks it (same path and sha256, checked by hashing the bytes that
are there). Shards land under a temporary name, are verified, then renamed; the manifest is written
last, so an interrupted transfer leaves the destination's previous manifest — and everything it lists —
valid, and a re-run moves only what is still missing. A destination that already holds other teachers
of the same dataset keeps them: push and pull merge manifests, they never drop what is there.

Credentials come from each backend's usual places (environment, config files, instance roles), read by
fsspec and its backends (s3fs, gcsfs, huggingface_hub's HfFileSystem); this module never sees or prints them.
"""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.atomic import temporary_name
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.cache.manifest import Manifest, ShardRecord, load_manifest, parse_manifest
from mtkd_cache.cache.shards import read_verified_bytes, shard_is_intact, write_bytes_atomically
from mtkd_cache.errors import CacheFormatError, CacheIntegrityError, CacheMismatchError, ConfigError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import MANIFEST_NAME, OUTPUTS_DIR, validate_name
from mtkd_cache.progress import BYTES, ProgressEvents, SilentEvents


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


def _filesystem(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"cannot open {url}: {error}. Install the backend for its scheme (s3fs for s3://, "
                          "gcsfs for gs://, huggingface_hub for hf://).") from error


def _join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def read_remote_manifest(url: str) -> Manifest | None:
    """The manifest at `url`, or None when nothing is there yet."""
    fs, root = _filesystem(url)
    path = _join(root, MANIFEST_NAME)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return parse_manifest(data, f"{url.rstrip('/')}/{MANIFEST_NAME}")


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
    """Send the shards `url` lacks, verify each on arrival, then write the merged manifest there.

    Progress is one task in bytes: the total of the shards found missing."""
    events = events or SilentEvents()
    local = load_manifest(cache_dir)
    fs, root = _filesystem(url)
    remote = read_remote_manifest(url)
    merged = combine(remote, local, str(cache_dir)) if remote is not None else copy.deepcopy(local)
    listed = {(r.path, r.sha256) for r in remote.shards} if remote is not None else set()
    report = TransferReport()
    started = time.perf_counter()
    moving = _moving(merged, local)
    missing = [r for r in moving if not _remote_matches(fs, _join(root, r.path), r, (r.path, r.sha256) in listed)]
    report.bytes_total = sum(r.bytes for r in moving)
    report.shards_present = len(moving) - len(missing)
    events.task(f"push → {url}", sum(r.bytes for r in missing), unit=BYTES)
    for record in missing:
        data = read_verified_bytes(cache_dir, record)
        destination = _join(root, record.path)
        temporary = _join(root, _temporary_name(record.path))
        fs.makedirs(temporary.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(temporary, data)
        try:
            if sha256_bytes(fs.cat_file(temporary)) != record.sha256:
                raise CacheIntegrityError(f"{destination} arrived damaged (sha256 differs after upload); re-run push.")
            fs.mv(temporary, destination)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the original error is the one to report
                fs.rm_file(temporary)
            raise
        report.shards_moved += 1
        report.bytes_moved += len(data)
        events.advance(len(data))
    _write_remote_manifest(fs, root, merged)
    report.seconds = time.perf_counter() - started
    return report


def pull(url: str, cache_dir: Path, teachers: tuple[str, ...] | None = None,
         events: ProgressEvents | None = None) -> TransferReport:
    """Fetch the shards `cache_dir` lacks (inputs and `teachers`, default all), verify each, then commit.

    Progress is one task in bytes: the total of the shards found missing."""
    events = events or SilentEvents()
    remote = read_remote_manifest(url)
    if remote is None:
        raise CacheFormatError(f"{url} holds no {MANIFEST_NAME}; is it the URL a cache was pushed to?")
    wanted = _only_teachers(remote, teachers)
    fs, root = _filesystem(url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    report = TransferReport()
    started = time.perf_counter()
    with CacheLock(cache_dir):
        local = load_manifest(cache_dir) if (cache_dir / MANIFEST_NAME).exists() else None
        merged = combine(local, wanted, url) if local is not None else copy.deepcopy(wanted)
        moving = _moving(merged, wanted)
        missing = [record for record in moving if not shard_is_intact(cache_dir, record)]
        report.bytes_total = sum(r.bytes for r in moving)
        report.shards_present = len(moving) - len(missing)
        events.task(f"pull ← {url}", sum(r.bytes for r in missing), unit=BYTES)
        for record in missing:
            data = fs.cat_file(_join(root, record.path))
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
    report.seconds = time.perf_counter() - started
    return report


def _moving(merged: Manifest, source: Manifest) -> list[ShardRecord]:
    """The merged manifest's shards that come from `source`; where both sides hold a shard for the same
    rows, the destination's own stays and nothing moves."""
    offered = {(record.path, record.sha256) for record in source.shards}
    return [record for record in merged.shards if (record.path, record.sha256) in offered]


def _temporary_name(relative_path: str) -> str:
    # A remote object, not a local file: write_atomically's os.replace does not exist on an object store, so
    # push uploads under atomic's temporary name (random: two pushers never share one), verifies, then moves.
    folder, _, name = relative_path.rpartition("/")
    return f"{folder}/{temporary_name(name, uuid.uuid4().hex[:8])}"


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


def _write_remote_manifest(fs, root: str, manifest: Manifest) -> None:
    from fsspec.implementations.local import LocalFileSystem

    data = manifest.to_json().encode()
    if isinstance(fs, LocalFileSystem):
        manifest.save(Path(root))  # temp file, fsync, atomic rename
    else:
        fs.pipe_file(_join(root, MANIFEST_NAME), data)  # one PUT: object stores replace an object atomically


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
    out.mkdir(parents=True, exist_ok=True)
    with CacheLock(out):
        for record in merged.shards:
            directory, source = sources[record.path]
            write_bytes_atomically(out, record.path, read_verified_bytes(directory, source))
            report.shards += 1
        merged.save(out)
    return report
