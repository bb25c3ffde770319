"""Local destinations of `pull` and `merge`: which directories they may write into, undoing a new one
that could not be written, and clearing what a killed writer left in one."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from mtkd_cache.atomic import TEMP_PREFIX
from mtkd_cache.cache.committer import refuse_foreign_directory
from mtkd_cache.errors import ConfigError, LockError
from mtkd_cache.layout import SHARD_FOLDERS

# What write_atomically leaves when killed: `.tmp-<name>.<pid>` (atomic.temporary_path).
_LOCAL_TEMPORARY = re.compile(rf"^{re.escape(TEMP_PREFIX)}.+\.\d+$")


def remove_stale_temporaries(cache_dir: Path, started: float) -> None:
    """Delete the shard temporaries (atomic's names, ending in a pid) a killed writer left before `started`;
    the lock held keeps any other writer out, and the age rule spares whatever is not a leftover."""
    for folder in SHARD_FOLDERS:
        for path in (cache_dir / folder).rglob(f"{TEMP_PREFIX}*"):
            if _LOCAL_TEMPORARY.match(path.name) and path.is_file() and path.stat().st_mtime < started:
                path.unlink(missing_ok=True)


def refuse_foreign(directory: Path, what: str) -> None:
    """committer's rule for build's --out, worded for `what` the directory is to this command."""
    try:
        refuse_foreign_directory(directory)
    except ConfigError as error:
        raise ConfigError(str(error).replace("--out ", f"{what} ", 1)) from None


def is_new_or_empty(directory: Path) -> bool:
    return not directory.exists() or (directory.is_dir() and not any(directory.iterdir()))


@contextlib.contextmanager
def undone_on_failure(directory: Path, created: bool, errors: type[BaseException] = BaseException) -> Iterator[None]:
    """Empty again (or remove, when `created`) a directory that was new or empty, when `errors` end the block;
    not when its lock is held by someone else: then nothing in it is ours."""
    try:
        yield
    except LockError:
        raise
    except errors:
        _empty_again(directory, created)
        raise


def _empty_again(directory: Path, created: bool) -> None:
    """Undo what a failed pull or merge wrote into a directory that was new or empty before it."""
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
