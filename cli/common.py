"""Shared pieces of the CLI: the typer app, the error boundary and the consoles."""

from __future__ import annotations

import functools
import importlib
import os
import sys

import typer
import typer.core
import typer.main
from rich.markup import escape

from mtkd_cache import MtkdError

from .progress import ResultConsole, stderr

# Commands whose module loads only when the command runs (they import torch, transformers or onnx on the
# way): command -> (module of this package, the one-line summary `mtkd-cache --help` lists it by). app.py
# fills it; tests/cli/test_startup.py holds each summary to the command's own docstring.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {}


class LazyCommands(typer.core.TyperGroup):
    """The top-level group: a lazy command's module is imported when that command is looked up to run
    (or to show its own --help); the top-level --help lists it by its summary without importing it, so
    `mtkd-cache --help`, `info` and `verify` start without torch (README, "Performance")."""

    _listing = False

    def list_commands(self, ctx) -> list[str]:
        return [*self.commands, *(name for name in LAZY_COMMANDS if name not in self.commands)]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, summary = LAZY_COMMANDS[cmd_name]
            if self._listing:
                return typer.core.TyperCommand(name=cmd_name, help=summary, short_help=summary)
            load_commands(module)
            # The module registered its commands on `app`; typer turns them into click commands here.
            for name, command in typer.main.get_group(app).commands.items():
                self.commands.setdefault(name, command)
        return self.commands.get(cmd_name)

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def load_commands(*modules: str) -> None:
    """Import command modules (all the lazy ones when none is named), registering their commands on `app`."""
    for module in modules or dict.fromkeys(module for module, _ in LAZY_COMMANDS.values()):
        importlib.import_module(f"{__package__}.{module}")


app = typer.Typer(cls=LazyCommands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-teacher knowledge distillation from an offline teacher-logit cache.")
stdout = ResultConsole()


def user_errors(command):
    """Turn an MtkdError into `error: <message>` on stderr and exit code 2; leave bugs their traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MtkdError as error:
            exit_with_error(error)

    return wrapper


def exit_with_error(error: MtkdError | str) -> None:
    """`error: <message>` as one line on stderr (never wrapped, markup escaped), then exit code 2."""
    if stderr.quiet:
        print(f"error (rank {os.environ.get('RANK')}): {error}", file=sys.stderr)
    else:
        stderr.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2) from None


def quiet_console() -> None:
    stdout.quiet = stderr.quiet = True


def split_list(value: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in value.split(",") if part.strip()) if value else None
