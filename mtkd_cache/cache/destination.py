"""Local destinations of `pull` and `merge`: which directories they may write into, undoing a new one
that could not be written, and clearing what a killed writer left in one."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from mtkd_cache.atomic import remove_temporaries
from mtkd_cache.errors import LockError
from mtkd_cache.layout import SHARD_FOLDERS


def remove_stale_temporaries(cache_dir: Path, started: float) -> None:
    """Delete the shard temporaries a killed writer left before `started`; the lock held keeps any other
    writer out, and the age rule spares whatever is not a leftover."""
    for folder in SHARD_FOLDERS:
        if (cache_dir / folder).is_dir():
            remove_temporaries(cache_dir / folder, older_than=started)


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
