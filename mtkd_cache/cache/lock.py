"""An exclusive lock per cache directory, so two builders never write one cache (RELIABILITY.md, 22).

The lock is an OS advisory lock (fcntl.flock) on `<cache>/.lock`: the kernel releases it when its
holder dies, so a lock left by a killed process is stale by construction and is simply taken over.
The file also records who holds it (host, pid, command, start time) so the second builder can say so.
It is opened without following a symbolic link (O_NOFOLLOW): taking the lock truncates the file, and a
`.lock` linking elsewhere would otherwise truncate whatever it points to, outside the cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from mtkd_cache.errors import CacheWriteError, LockError
from mtkd_cache.layout import LOCK_NAME


class CacheLock:
    def __init__(self, cache_dir: Path):
        self.path = cache_dir / LOCK_NAME
        self._handle = None
        self.took_over_from: dict | None = None  # holder info of a stale lock this one replaced

    def __enter__(self) -> CacheLock:
        if self.path.is_symlink():
            raise LockError(f"{self.path} is a symbolic link, not this cache's lock file; delete the link "
                            "(nothing it points to is touched) and re-run.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            handle = os.fdopen(descriptor, "a+")
        except OSError as error:
            if self.path.is_symlink():  # made between the check above and the open: still never followed
                raise LockError(f"{self.path} is a symbolic link, not this cache's lock file; delete the link "
                                "and re-run.") from None
            raise CacheWriteError(
                f"cannot create the lock file {self.path}: {error.strerror or error}; check the directory's permissions."
            ) from error
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            handle.close()
            raise LockError(
                f"{self.path.parent} is locked by {_describe(holder)}; wait for that build to finish "
                "(if that process no longer exists, the lock is released automatically)."
            ) from None
        previous = _read_holder(handle)
        if previous.get("pid"):
            self.took_over_from = previous
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "command": " ".join(sys.argv[:3]), "since": time.time()}))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            # Clear the holder record before unlocking, so an empty file means "nobody holds it".
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.flush()
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _read_holder(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} ('{holder.get('command', '?')}', since {since})"
