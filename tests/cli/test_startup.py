"""A CLI that starts at once (issue #17): `--help`, `info`, `verify` and `experts` never import torch or
transformers, and the commands whose modules load on demand are listed by `--help` exactly as they would
be if loaded. Each command runs in a fresh interpreter, the way a user starts it, so an import added
anywhere on its path (a library module, another engineer's new command module) fails here by name."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.manifests import write_tiny_cache
from mtkd_cache_cli.app import app
from mtkd_cache_cli.common import LAZY_COMMANDS, load_commands

HEAVY = ("torch", "transformers", "onnxruntime", "datasets")
REPO = Path(__file__).resolve().parents[2]

# Runs the CLI in this interpreter as `python -m mtkd_cache` would, then reports its exit code and which
# heavy modules ended up imported.
_PROBE = """
import contextlib, io, json, sys
from mtkd_cache_cli.app import main
from mtkd_cache_cli.common import LAZY_COMMANDS
sys.argv = ["mtkd-cache", *sys.argv[1:]]
captured = io.StringIO()
try:
    with contextlib.redirect_stdout(captured):
        main()
    code = 0
except SystemExit as exit:
    code = exit.code or 0
lazy = sorted({"mtkd_cache_cli." + module for module, _ in LAZY_COMMANDS.values()} & set(sys.modules))
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules), "modules": lazy,
                  "stdout": captured.getvalue()}), file=sys.__stderr__)
""".replace("HEAVY", repr(HEAVY))


def _probe(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "250"}
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("startup") / "cache"
    write_tiny_cache(out, splits={"train": 6, "validation": 6})
    return out


@pytest.mark.parametrize("command", [("--help",), ("info", "{cache}"), ("info", "{cache}", "--json"),
                                     ("verify", "{cache}"), ("experts", "{cache}", "--split", "validation"),
                                     ("experts", "--help"), ("merge", "--help")], ids=" ".join)
def test_a_light_command_never_imports_torch_or_transformers(cache, command):
    result = _probe(*(part.format(cache=cache) for part in command))
    assert (result["code"], result["heavy"]) == (0, []), f"mtkd-cache {' '.join(command)}: {result}"


def test_a_command_that_trains_still_loads_what_it_needs(cache):
    # The probe would report torch here: proof that it sees an import when one happens.
    result = _probe("select", str(cache), "--split", "validation", "--strategy", "average",
                    "--expert-split", "validation", "--out", str(cache.parent / "weights.parquet"))
    assert result["code"] == 0 and "torch" in result["heavy"], result


def _first_paragraph(help_text: str) -> str:
    return inspect.cleandoc(help_text).split("\n\n")[0].replace("\n", " ").strip()


def test_every_lazy_summary_is_its_commands_own_first_paragraph():
    load_commands()
    registered = {(c.name or c.callback.__name__.replace("_", "-")): c for c in app.registered_commands}
    assert set(LAZY_COMMANDS) <= set(registered), sorted(set(LAZY_COMMANDS) - set(registered))
    for name, (module, summary) in LAZY_COMMANDS.items():
        command = registered[name]
        assert command.callback.__module__ == f"mtkd_cache_cli.{module}", name
        assert summary == _first_paragraph(command.help or command.callback.__doc__), name


def test_top_level_help_lists_every_command_without_loading_them():
    load_commands()
    fresh = _probe("--help")
    assert fresh["heavy"] == [] and fresh["modules"] == [], fresh["modules"]  # no lazy module was imported
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        summary = _first_paragraph(command.help or command.callback.__doc__)
        assert f" {name} " in fresh["stdout"] and summary[:40] in fresh["stdout"], name


def test_a_lazy_commands_own_help_and_errors_are_its_own():
    shown = CliRunner().invoke(app, ["merge", "--help"])
    assert shown.exit_code == 0 and "Join caches built separately" in shown.stdout, shown.output
    wrong = CliRunner().invoke(app, ["experts"])  # missing argument: click's usage error, from the loaded command
    assert wrong.exit_code == 2 and "Missing argument 'cache'" in wrong.output, wrong.output
