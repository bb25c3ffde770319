"""Shared pieces of the CLI: the typer app, the error boundary and the consoles."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.markup import escape

from mtkd_cache import MtkdError

from .progress import ResultConsole, stderr

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
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
