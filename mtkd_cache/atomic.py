"""Atomic file writes: the one way this package puts a file or a directory at its final path.

Invariant: a final path holds either its previous content or the complete new content, never a torn
file. Data goes to a hidden temporary beside the target (`.tmp-<name>.<pid>`, so a killed writer's
leftovers are recognisable and never mistaken for results), is flushed, and is renamed over the
target. `durable=True` also fsyncs the file before the rename and the directory after it, so the
rename survives a power cut; the cache's shards and manifest need that, a report that can be re-made
does not pay for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mtkd_cache._faults import fault_point
from mtkd_cache.errors import CacheWriteError

TEMP_PREFIX = ".tmp-"
_ASIDE_SUFFIX = ".old"


def temporary_name(name: str, unique: str) -> str:
    """The hidden name a file called `name` is written under first; `unique` keeps two writers apart.

    Other writers of whole files (sharing's uploads to object stores, which cannot use `os.replace`) name
    their temporaries with this too, so every leftover of a killed writer looks the same."""
    return f"{TEMP_PREFIX}{name}.{unique}"


def temporary_path(final: Path) -> Path:
    """The hidden path `final` is written under first, unique per process."""
    return final.parent / temporary_name(final.name, str(os.getpid()))


def write_atomically(path: Path, data: bytes | str, *, durable: bool = True, fault: str | None = None) -> None:
    """Write `data` (str as UTF-8) to `path` atomically; OSError becomes a one-line CacheWriteError.

    `fault` names the test-only fault points hit after the temporary is written (`<fault>_written`) and
    after the rename (`<fault>_renamed`), see _faults.py."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _create_new(temporary) as handle:
            handle.write(payload)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if fault:
            fault_point(f"{fault}_written")
        os.replace(temporary, path)
        if durable:
            fsync_directory(path.parent)
    except OSError as error:
        # The cleanup can fail for the same reason as the write (a parent that is a file, a read-only
        # directory); the write's error is the one to report.
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise write_error(path, error) from error
    if fault:
        fault_point(f"{fault}_renamed")


def link_atomically(source: Path, target: Path) -> None:
    """Put `source`'s bytes at `target` atomically without a second copy: a hard link under the temporary
    name, renamed into place; a copy (write_atomically) where the filesystem has no hard links between them."""
    temporary = temporary_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)  # a leftover of this pid
        os.link(source, temporary)
    except OSError:
        write_atomically(target, source.read_bytes(), durable=False)
        return
    try:
        os.replace(temporary, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise write_error(target, error) from error


def _create_new(path: Path):
    """A fresh file at `path` for writing, never through a symbolic link: a leftover of this pid (or a link
    planted under the temporary's name) is removed first — unlinking a link removes the link, not its target —
    and exclusive creation without following links (O_EXCL | O_NOFOLLOW) refuses anything that appears meanwhile."""
    path.unlink(missing_ok=True)
    return open(path, "wb", opener=_new_file_no_follow)


def _new_file_no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def replace_directory(target: Path, fill: Callable[[Path], None]) -> None:
    """Make `target` a directory that `fill(directory)` populated, replacing any previous one as a whole.

    `fill` writes into a hidden temporary directory beside `target`; the old directory is moved aside and
    the new one renamed into place, so a crash leaves the old or the new one (a kill between the two
    renames leaves the old one as `.tmp-<name>.<pid>.old`, which `recover_directory` puts back)."""
    temporary = temporary_path(target)
    aside = temporary.with_name(temporary.name + _ASIDE_SUFFIX)
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        fill(temporary)
        if target.exists():
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(target, aside)
        os.replace(temporary, target)
        shutil.rmtree(aside, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise write_error(target, error) from error


def recover_directory(target: Path) -> bool:
    """Put back the directory a writer killed inside `replace_directory` had moved aside, when `target` is
    missing; True when one was put back. Call it before reading `target`."""
    if target.exists():
        return False
    asides = sorted(target.parent.glob(temporary_name(target.name, "*") + _ASIDE_SUFFIX), key=lambda p: p.stat().st_mtime)
    if not asides:
        return False
    os.replace(asides[-1], target)
    return True


def remove_temporaries(directory: Path, recursive: bool = True, older_than: float | None = None) -> None:
    """Delete what killed writers left under `directory`: their temporaries were never at a final path, so
    nothing ever read them. A temporary directory (`replace_directory`'s) goes as a whole. `older_than` (a
    time.time()) spares newer ones: the in-flight files of a writer running beside this one."""
    found = directory.rglob(f"{TEMP_PREFIX}*") if recursive else directory.glob(f"{TEMP_PREFIX}*")
    for path in sorted(found, reverse=True):  # deepest first
        if older_than is not None and path.lstat().st_mtime >= older_than:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_error(path: Path, error: OSError) -> CacheWriteError:
    return CacheWriteError(
        f"cannot write {path}: {error.strerror or error}; free disk space or fix the directory's permissions, "
        "then re-run (everything committed so far is kept)."
    )
