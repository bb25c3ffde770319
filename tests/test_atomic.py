"""atomic.py: a final path holds its old content or the complete new one, and nothing else writes files."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

import mtkd_cache
from mtkd_cache.atomic import TEMP_PREFIX, recover_directory, replace_directory, temporary_path, write_atomically
from mtkd_cache.errors import CacheWriteError


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))


@pytest.mark.parametrize("durable", [True, False])
def test_str_is_written_as_utf8_and_bytes_as_they_are(tmp_path, durable):
    write_atomically(tmp_path / "a.txt", "naïve ✓\n", durable=durable)
    write_atomically(tmp_path / "deep" / "b.bin", b"\x00\xff", durable=durable)
    assert (tmp_path / "a.txt").read_bytes() == "naïve ✓\n".encode()
    assert (tmp_path / "deep" / "b.bin").read_bytes() == b"\x00\xff"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "deep") == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    write_atomically(target, "old")

    def refuse(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mtkd_cache.atomic.os.replace", refuse)
    with pytest.raises(CacheWriteError, match="No space left on device.*free disk space"):
        write_atomically(target, "new")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_write_into_a_read_only_directory_is_a_one_line_error(tmp_path, monkeypatch):
    # The kernel's answer is simulated: root (as on CI) ignores directory permissions, so a chmod cannot refuse it.
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "kept.txt").write_text("kept")

    def refuse(file, *_args, **_kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

    monkeypatch.setattr("mtkd_cache.atomic.open", refuse, raising=False)
    with pytest.raises(CacheWriteError, match="Permission denied.*permissions") as raised:
        write_atomically(locked / "kept.txt", "new")
    assert "\n" not in str(raised.value)
    assert (locked / "kept.txt").read_text() == "kept"
    assert _leftovers(locked) == []


def test_replace_directory_replaces_the_old_directory_as_a_whole(tmp_path):
    target = tmp_path / "best"
    replace_directory(target, lambda d: (d / "old-only.txt").write_text("1"))
    replace_directory(target, lambda d: (d / "new.txt").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


def test_a_failing_fill_keeps_the_old_directory(tmp_path):
    target = tmp_path / "best"
    replace_directory(target, lambda d: (d / "old.txt").write_text("1"))

    def fill(directory: Path) -> None:
        (directory / "half.txt").write_text("2")
        raise OSError(28, "No space left on device")

    with pytest.raises(CacheWriteError):
        replace_directory(target, fill)
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path) == []


def test_recover_directory_puts_back_what_a_killed_replace_moved_aside(tmp_path):
    target = tmp_path / "best"
    aside = temporary_path(target).with_name(temporary_path(target).name + ".old")
    aside.mkdir()
    (aside / "model.bin").write_text("weights")
    assert recover_directory(target) is True
    assert (target / "model.bin").read_text() == "weights" and not aside.exists()
    assert recover_directory(target) is False  # present: nothing to do


# Every way this package has put a file at its final path by hand; atomic.py is the one place they belong.
_HAND_ROLLED = re.compile(r"os\.replace\(|os\.rename\(|mkstemp\(|NamedTemporaryFile\(|[\"'][^\"'\n]*\.tmp")
_PACKAGE = Path(mtkd_cache.__file__).parent


def _hand_rolled_writes(modules) -> list[str]:
    return [f"{path.relative_to(_PACKAGE)}:{number}: {line.strip()}"
            for path in modules for number, line in enumerate(path.read_text().splitlines(), 1)
            if _HAND_ROLLED.search(line) and not line.lstrip().startswith("#")]


def _library_modules() -> list[Path]:
    return sorted(p for p in _PACKAGE.rglob("*.py") if p.name != "atomic.py" or p.parent != _PACKAGE)


def test_no_library_module_but_atomic_writes_a_temporary_or_renames_one():
    assert _hand_rolled_writes(_library_modules()) == []


def test_a_path_below_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(CacheWriteError, match="a-file/x.parquet") as raised:
        write_atomically(tmp_path / "a-file" / "x.parquet", b"data")
    assert "\n" not in str(raised.value)
