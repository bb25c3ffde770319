"""A cache at a URL, read where it is: the shards a command needs are fetched once into a local
content-addressed store and reused by every later command.

    $MTKD_CACHE_HOME (default ~/.cache/mtkd-cache)/
        shards/<sha256[:2]>/<sha256>     each shard's bytes, once, whatever cache lists it (verified on arrival)
        caches/<manifest sha256[:32]>/   one remote manifest as a cache directory: its manifest.json (the
                                         remote's bytes) and the fetched shards at their paths (hard links
                                         into shards/, copies where links are impossible)

`fetch(url, teachers, splits)` reads the remote manifest, fetches only the inputs of `splits` and the
outputs of `teachers` on them (`distill --teachers a,b` moves nothing of c), checks each shard's sha256
before it is stored (a corrupted remote shard is refused by name and never stored), and returns the local
directory, which every reader opens like any cache. A second command finds everything there and moves 0
bytes. A new push to the URL is a new manifest, hence a new directory; its unchanged shards are already in
shards/. A local path is returned as it is. Writes are atomic (temporary + rename), so two commands
fetching at once both end with complete files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtkd_cache.atomic import link_atomically, write_atomically
from mtkd_cache.cache.manifest import Manifest, ShardRecord, load_manifest, parse_manifest
from mtkd_cache.cache.remote import filesystem, join
from mtkd_cache.errors import CacheFormatError, CacheIntegrityError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import MANIFEST_NAME
from mtkd_cache.progress import BYTES, ProgressEvents, SilentEvents

HOME_VARIABLE = "MTKD_CACHE_HOME"


def store_home() -> Path:
    """Where fetched caches live: $MTKD_CACHE_HOME, else ~/.cache/mtkd-cache."""
    configured = os.environ.get(HOME_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mtkd-cache"


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and "://" in source


@dataclass
class FetchedCache:
    path: Path  # a local cache directory holding (at least) what was asked for
    url: str | None  # where it came from; None for a local cache
    manifest_sha256: str  # of the manifest's bytes: which version of the cache this is
    shards_moved: int = 0
    bytes_moved: int = 0


def fetch(source: str | Path, teachers: Sequence[str] | None = None, splits: Sequence[str] | None = None,
          events: ProgressEvents | None = None) -> FetchedCache:
    """The local directory of the cache at `source` with the inputs of `splits` and the outputs of `teachers`
    on them (None: all). Names the cache lacks are skipped here: the command that reads them refuses them
    with its own message."""
    if not is_url(source):
        path = Path(source)
        load_manifest(path)  # a missing or invalid manifest is refused here, once
        return FetchedCache(path, None, sha256_bytes((path / MANIFEST_NAME).read_bytes()))
    events = events or SilentEvents()
    url = str(source).rstrip("/")
    fs, root = filesystem(url)
    try:
        manifest_bytes = fs.cat_file(join(root, MANIFEST_NAME))
    except FileNotFoundError:
        raise CacheFormatError(f"{url} holds no {MANIFEST_NAME}; is it the URL a cache was pushed to?") from None
    manifest = parse_manifest(manifest_bytes, f"{url}/{MANIFEST_NAME}")
    digest = sha256_bytes(manifest_bytes)
    home = store_home()
    view = home / "caches" / digest[:32]
    wanted = _wanted(manifest, teachers, splits)
    missing = [r for r in wanted if not _present(view, r)]
    fetched = FetchedCache(view, url, digest)
    if missing:
        events.task(f"fetch ← {url}", sum(r.bytes for r in missing), unit=BYTES)
    for record in missing:
        blob = home / "shards" / record.sha256[:2] / record.sha256
        if not (blob.is_file() and blob.stat().st_size == record.bytes):
            data = fs.cat_file(join(root, record.path))
            actual = sha256_bytes(data)
            if actual != record.sha256:
                raise CacheIntegrityError(f"{url}/{record.path} is corrupt: sha256 {actual}, its manifest says "
                                          f"{record.sha256}; nothing was stored — push a good copy of the cache again.")
            write_atomically(blob, data, durable=False)
            fetched.shards_moved += 1
            fetched.bytes_moved += len(data)
            events.advance(len(data))
        link_atomically(blob, view / record.path)  # the view's file is the stored shard, not a copy
    if not (view / MANIFEST_NAME).is_file():
        write_atomically(view / MANIFEST_NAME, manifest_bytes, durable=False)  # last: the view is usable once listed
    return fetched


def _wanted(manifest: Manifest, teachers: Sequence[str] | None, splits: Sequence[str] | None) -> list[ShardRecord]:
    split_names = [s for s in (splits or manifest.splits) if s in manifest.splits]
    teacher_names = [t for t in (teachers or manifest.teachers) if t in manifest.teachers]
    return [r for r in manifest.shards if r.split in split_names and (r.teacher is None or r.teacher in teacher_names)]


def _present(view: Path, record: ShardRecord) -> bool:
    path = view / record.path
    return path.is_file() and path.stat().st_size == record.bytes
