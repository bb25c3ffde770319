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
    # JSON is for scripts: full hashes (the table shortens them for a person)
    manifest = json.loads((cache / "manifest.json").read_text())
    [teacher] = facts["teachers"]
    assert teacher["weights_sha256"] == manifest["teachers"]["bert"]["weights_sha256"] and len(teacher["weights_sha256"]) == 64
    assert len(facts["dataset_fingerprint"]) == 64
    assert teacher["weights_sha256"][:12] in shown.stdout and teacher["weights_sha256"] not in shown.stdout

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


def _log_console():
    import io

    from mtkd_cache_cli.progress import ResultConsole

    return ResultConsole(file=io.StringIO(), force_terminal=False)


def test_progress_in_a_log_is_plain_lines_at_a_bounded_rate():
    from mtkd_cache_cli.progress import ProgressEvents

    now = [0.0]
    console = _log_console()
    with ProgressEvents(console, log_interval=30, clock=lambda: now[0]) as events:
        events.task("epoch 1/2 (distill)", 1000)
        for _ in range(99):  # 99 batches of 10 rows, one every second: 99 s, so three lines in between
            now[0] += 1.0
            events.advance(10)
        now[0] += 1.0
        events.advance(10)
        events.note("a [bracketed] note")
        events.task("push", 2_000_000, unit="bytes")
        now[0] += 4.0
        events.advance(2_000_000)
    lines = console.file.getvalue().splitlines()
    assert lines[0] == "epoch 1/2 (distill): started, 1,000 rows"
    assert lines[1] == "epoch 1/2 (distill): 300/1,000 rows (30%), 10.0 rows/s, ETA 1:10"
    assert [line.split(":")[1].split()[0] for line in lines[1:4]] == ["300/1,000", "600/1,000", "900/1,000"]
    assert lines[4] == "epoch 1/2 (distill): 1,000/1,000 rows (100%), 10.0 rows/s, done in 1:40"
    assert lines[5] == "a [bracketed] note"
    assert lines[6:] == ["push: started, 2.0 MB", "push: 2.0 MB/2.0 MB (100%), 500.0 kB/s, done in 4 s"]
    assert "\x1b" not in console.file.getvalue()  # no cursor movement or colour codes in a log


def test_result_tables_in_a_log_are_sized_for_their_content():
    from rich.table import Table

    console = _log_console()
    headers = [f"student-{i} averaged\n(teacher-weighted)" for i in range(6)]
    table = Table("class", *headers)
    table.add_row("business", *["0.911"] * 6)
    console.print(table)
    text = console.file.getvalue()
    assert all(part in text for header in headers for part in header.split("\n"))
    assert "…" not in text and max(map(len, text.splitlines())) > 80
