"""Result lines read by scripts and tests never depend on the console's width or on path lengths.

rich wraps at 80 columns (or $COLUMNS) when output is not a terminal; a result line once broke after a long
temporary path ("C: 24\\nshards"), so `make test` failed on a user's machine and passed in CI. Outside a
terminal the CLI's consoles do not wrap; here a 40-column $COLUMNS and a path longer than that prove it.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mtkd_cache import FORMAT_VERSION, BuildConfig, DatasetSpec, TeacherSpec, build_cache
from mtkd_cache_cli.app import app

runner = CliRunner()


def _cache_at_a_long_path(assets, tmp_path):
    out = tmp_path / ("a-directory-name-longer-than-any-console-" + "x" * 80) / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])),
                            teachers=(TeacherSpec("bert", str(assets["bert"])),), out=out, shard_rows=64))
    return out


def test_info_and_verify_lines_stay_whole_in_a_narrow_console(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    cache = _cache_at_a_long_path(assets, tmp_path)
    facts = json.loads(runner.invoke(app, ["info", str(cache), "--json"]).stdout)

    shown = runner.invoke(app, ["info", str(cache)])
    assert shown.exit_code == 0, shown.output
    first = shown.stdout.splitlines()[0]
    assert first.startswith(str(cache)) and f"format {FORMAT_VERSION}" in first  # the path, then the facts: one line
    summary = next(line for line in shown.stdout.splitlines() if " shards, " in line)
    assert summary.startswith(f"{facts['shards']} shards, ")

    verified = runner.invoke(app, ["verify", str(cache)])
    assert verified.exit_code == 0, verified.output
    assert any(line.startswith(f"{facts['shards']} shards, ") and "verified in" in line
               for line in verified.stdout.splitlines()), verified.stdout


def test_an_error_naming_a_long_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    missing = tmp_path / ("no-such-cache-" + "y" * 120)
    result = runner.invoke(app, ["verify", str(missing)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0]
