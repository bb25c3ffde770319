"""The remote side of `push` and `pull`: opening a URL, reading its manifest, committing a new one without
losing a concurrent pusher's teachers, uploading a shard, and clearing what killed pushes left.

Concurrent pushes to one remote (each what the backend can guarantee):
- a directory (a local path, file://, an NFS mount): a push holds the remote's `.lock` (the same fcntl
  lock as `build`, cache/lock.py) from the first upload to the manifest, so pushes take turns; the next
  one waits for it (up to LOCK_WAIT_SECONDS) and then merges with what the first one committed.
- S3 (s3://): no lock exists, so the manifest is replaced by a conditional PUT — `If-None-Match: *` when
  there is none yet, `If-Match: <the ETag read>` otherwise. A pusher that lost the race re-reads the
  manifest, merges again and retries, so every pusher's teachers end up listed. Shards need no guard: a
  shard's path and bytes follow from its content, so two pushers upload the same bytes. The one case left:
  two pushers of *different* teachers under the same name at once. The later manifest merge refuses it,
  but its uploads may already have replaced the other's shards. Those are never read as good — `pull`
  re-hashes every shard and refuses them as corrupt, naming each — and the remedy is to delete the named
  objects and push the first cache again (push trusts a listed shard by its size, so it must be gone).
  AWS S3 honours both headers (since 2024); an S3-compatible store that ignores them gives no guard.
- any other backend (gs://, hf://, memory://, …): fsspec offers no lock and no conditional write there,
  so the read-merge-write of the manifest is not guarded; push says so on every run (a progress note)
  and its help asks for one pusher at a time.
"""

from __future__ import annotations

import contextlib
import errno
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from mtkd_cache.atomic import TEMP_PREFIX, temporary_name, write_atomically
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.cache.manifest import Manifest, ShardRecord, parse_manifest
from mtkd_cache.errors import CacheIntegrityError, CacheWriteError, ConfigError, LockError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import CARD_NAME, MANIFEST_NAME, SHARD_FOLDERS
from mtkd_cache.progress import ProgressEvents

LOCK_WAIT_SECONDS = 300.0  # how long a push waits for another push (or a build) holding a directory remote
MANIFEST_ATTEMPTS = 20  # conditional manifest writes tried before giving up on a remote that keeps changing
# An object store's LastModified is whole seconds of the server's clock: a temporary counts as left by an
# earlier push only when it is older than this push's start by more than that rounding plus some clock skew.
OBJECT_STORE_GRACE_SECONDS = 5.0
# push's own temporaries: atomic's `.tmp-<name>.<unique>` with 8 hex digits (a pid never has 8 digits on
# Linux, so a killed local writer's `.tmp-<name>.<pid>` is not taken for one).
_UPLOAD_TEMPORARY = re.compile(rf"^{re.escape(TEMP_PREFIX)}.+\.[0-9a-f]{{8}}$")
# Refusals by the destination a user can fix (disk full, quota, read-only, permissions), unlike a dropped link.
_WRITE_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}


def filesystem(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"cannot open {url}: {error}. Install the backend for its scheme (s3fs for s3://, "
                          "gcsfs for gs://, huggingface_hub for hf://).") from error


def join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def read_remote_manifest(url: str) -> Manifest | None:
    """The manifest at `url`, or None when nothing is there yet."""
    fs, root = filesystem(url)
    try:
        data = fs.cat_file(join(root, MANIFEST_NAME))
    except FileNotFoundError:
        return None
    return parse_manifest(data, f"{url.rstrip('/')}/{MANIFEST_NAME}")


def write_card(fs, root: str, text: str) -> None:
    """The dataset card (CARD_NAME) at the remote's root: a derived file, rewritten whole by every push."""
    path = join(root, CARD_NAME)
    with _refusals_are_one_line(path):
        if _is_directory(fs):
            write_atomically(Path(root) / CARD_NAME, text, durable=False)
        else:
            fs.pipe_file(path, text.encode())


def _is_directory(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _is_s3(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "s3" in protocols


@contextlib.contextmanager
def pushing_alone(fs, root: str, url: str, events: ProgressEvents) -> Iterator[None]:
    """Hold what keeps concurrent pushes to `url` apart for the whole push (see the module docstring)."""
    if not _is_directory(fs):
        if not _is_s3(fs):
            events.note(f"{url}: this backend cannot guard against a second push at the same time; "
                        "push to it from one place at a time.")
        yield
        return
    with _wait_for_lock(Path(root), events):
        yield


@contextlib.contextmanager
def _wait_for_lock(directory: Path, events: ProgressEvents) -> Iterator[None]:
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    noted = False
    while True:
        try:
            lock = CacheLock(directory).__enter__()
            break
        except LockError as error:
            if time.monotonic() > deadline:
                raise LockError(f"{error} (waited {LOCK_WAIT_SECONDS:.0f} s)") from None
            if not noted:
                events.note(f"waiting for the other writer of {directory} to finish")
                noted = True
            time.sleep(0.1)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def commit_manifest(fs, root: str, url: str, merge_into: Callable[[Manifest | None], Manifest]) -> Manifest:
    """Write `merge_into(the remote's manifest now)` as the remote's manifest; return what was written.

    On S3 the write is conditional on the manifest being the one just read; a lost race merges again."""
    if _is_directory(fs):  # the caller holds the remote's lock (pushing_alone)
        merged = merge_into(read_remote_manifest(url))
        with _refusals_are_one_line(join(root, MANIFEST_NAME)):
            merged.save(Path(root))
        return merged
    if not _is_s3(fs):
        merged = merge_into(read_remote_manifest(url))
        with _refusals_are_one_line(join(root, MANIFEST_NAME)):
            fs.pipe_file(join(root, MANIFEST_NAME), merged.to_json().encode())
        return merged
    path = join(root, MANIFEST_NAME)
    for _ in range(MANIFEST_ATTEMPTS):
        etag, current = _read_with_etag(fs, path, url)
        merged = merge_into(current)
        condition = {"IfMatch": etag} if etag is not None else {"mode": "create"}
        try:
            with _refusals_are_one_line(path):
                fs.pipe_file(path, merged.to_json().encode(), **condition)
        except OSError as error:
            if _lost_the_race(error):
                continue
            raise
        return merged
    raise CacheWriteError(f"{url}: its manifest changed {MANIFEST_ATTEMPTS} times while this push was merging "
                          "into it; re-run push (the shards are uploaded already).")


def _read_with_etag(fs, path: str, url: str) -> tuple[str | None, Manifest | None]:
    # The ETag is read before the bytes: if the manifest is replaced in between, the bytes are newer than
    # the ETag, the conditional write fails, and the merge is redone — never a merge into stale bytes.
    fs.invalidate_cache(path)
    try:
        etag = fs.info(path)["ETag"]
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None, None
    return etag, parse_manifest(data, f"{url.rstrip('/')}/{MANIFEST_NAME}")


def _lost_the_race(error: OSError) -> bool:
    """The conditional PUT was refused because another pusher replaced (or created, or removed) the manifest."""
    if isinstance(error, FileExistsError | FileNotFoundError):  # s3fs: If-None-Match / If-Match on a gone key
        return True
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in _PRECONDITION_CODES


def upload(fs, root: str, record: ShardRecord, data: bytes) -> None:
    """Put a shard at its path on the remote: under a temporary name, verified, then moved; a failure
    removes the temporary, and a full, read-only or forbidden destination is a one-line CacheWriteError."""
    destination = join(root, record.path)
    temporary = join(root, _upload_temporary(record.path))
    try:
        fs.makedirs(temporary.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(temporary, data)
        if sha256_bytes(fs.cat_file(temporary)) != record.sha256:
            raise CacheIntegrityError(f"{destination} arrived damaged (sha256 differs after upload); re-run push.")
        fs.mv(temporary, destination)
    except BaseException as error:
        with contextlib.suppress(Exception):  # best effort: the original error is the one to report
            fs.rm_file(temporary)
        if isinstance(error, OSError) and _is_write_refusal(error):
            raise _remote_write_error(destination, error) from error
        raise


def _upload_temporary(relative_path: str) -> str:
    # A remote object, not a local file: write_atomically's os.replace does not exist on an object store, so
    # push uploads under atomic's temporary name (random: two pushers never share one), verifies, then moves.
    folder, _, name = relative_path.rpartition("/")
    return f"{folder}/{temporary_name(name, uuid.uuid4().hex[:8])}"


def remove_stale_uploads(fs, root: str, started: float) -> int:
    """Delete push temporaries under the remote's shard folders written before `started` (a killed push's;
    a concurrent push's in-flight ones are newer and stay); return how many went."""
    grace = 0.0 if _is_directory(fs) else OBJECT_STORE_GRACE_SECONDS
    removed = 0
    for folder in SHARD_FOLDERS:
        try:
            found = fs.find(join(root, folder), detail=True)
        except FileNotFoundError:
            continue
        for path, info in found.items():
            modified = _modified(info)
            if _UPLOAD_TEMPORARY.match(path.rsplit("/", 1)[-1]) and modified is not None and modified < started - grace:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(path)
                    removed += 1
    return removed


def _modified(info: dict) -> float | None:
    if isinstance(info.get("mtime"), int | float):  # a local directory
        return float(info["mtime"])
    stamp = info.get("LastModified") or info.get("last_modified") or info.get("updated")
    return stamp.timestamp() if hasattr(stamp, "timestamp") else None


@contextlib.contextmanager
def _refusals_are_one_line(where: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if _is_write_refusal(error):
            raise _remote_write_error(where, error) from error
        raise


def _is_write_refusal(error: OSError) -> bool:
    return isinstance(error, PermissionError) or error.errno in _WRITE_REFUSALS


def _remote_write_error(where: str, error: OSError) -> CacheWriteError:
    return CacheWriteError(f"cannot write {where}: {error.strerror or error}; free space on the remote or fix its "
                           "permissions, then re-run push (what the remote listed before is kept).")
