"""`--threads N` on every compute command (and `threads` in a sweep file): one function applies it."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from helpers.cli import assert_user_error
from mtkd_cache.devices import set_threads
from mtkd_cache.errors import ConfigError
from mtkd_cache_cli.app import app
from mtkd_cache_cli.common import load_commands

load_commands()  # the command modules load lazily (tests/cli/test_startup.py); this test reads every command
runner = CliRunner()
COMPUTE_COMMANDS = ("build", "demo", "augment", "select", "distill", "finetune", "report", "export", "predict", "sweep")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _command(name: str):
    import typer.main

    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", COMPUTE_COMMANDS)
def test_every_compute_command_takes_threads(name):
    option = next(p for p in _command(name).params if p.name == "threads")
    assert option.opts == ["--threads"] and "threads for torch" in option.help


def test_threads_are_applied_before_the_command_runs(restore_threads, tmp_path):
    torch.set_num_threads(2)
    result = runner.invoke(app, ["distill", str(tmp_path / "no-cache"), "--student", "bert", "--out",
                                 str(tmp_path / "run"), "--threads", "1"])
    assert result.exit_code == 2  # no cache there: the command ran, after the option was applied
    assert torch.get_num_threads() == 1


def test_a_sweep_file_sets_threads(restore_threads, tmp_path):
    torch.set_num_threads(2)
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text('threads = 1\nstudent = "bert"\nout = "x"\n')
    result = runner.invoke(app, ["sweep", str(tmp_path / "no-cache"), "--config", str(sweep_file)])
    assert result.exit_code == 2 and "unknown sweep option" not in result.output
    assert torch.get_num_threads() == 1


def test_a_bad_thread_count_is_one_line(restore_threads, tmp_path):
    assert_user_error(runner.invoke(app, ["distill", str(tmp_path), "--student", "s", "--out", str(tmp_path / "o"),
                                          "--threads", "0"]), "--threads must be a whole number of at least 1")
    with pytest.raises(ConfigError, match="--threads"):
        set_threads(True)
