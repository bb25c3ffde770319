"""lock.py: one writer per cache directory, the holder named, a dead holder's lock taken over."""

from __future__ import annotations

import json
import os

import pytest

from mtkd_cache import LockError
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.layout import LOCK_NAME


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    with CacheLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(LockError, match=f"is locked by pid {os.getpid()} on "), CacheLock(tmp_path):
            pass
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: an empty file means nobody holds it
    with CacheLock(tmp_path) as again:
        assert again.took_over_from is None


def test_a_record_left_by_a_dead_holder_is_taken_over_and_said(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "gone", "pid": 999999, "command": "x", "since": 0}))
    with CacheLock(tmp_path) as lock:
        assert lock.took_over_from["pid"] == 999999


def test_a_lock_in_a_missing_directory_creates_it(tmp_path):
    with CacheLock(tmp_path / "new" / "cache"):
        assert (tmp_path / "new" / "cache" / LOCK_NAME).exists()
