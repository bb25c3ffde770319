"""Options that come from one place, and `--config FILE` for every command.

Each default and help text is written once, on the library's config dataclass (`field(default=…,
metadata={"help": …})`): `from_config(RunnerConfig, "max_length")` makes the typer option of that field,
and the command's parameter default is the field's own default (`= RunnerConfig.max_length`), so the
help, the CLI and a Python caller agree (tests/cli/test_options.py compares them for every command).

`--config FILE` (TOML or YAML, keys are flag names) fills in options before the command line is read,
through click's default map: a flag given on the command line overrides the file; a key the command
does not have is refused by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from mtkd_cache.config_files import read_options_file
from mtkd_cache.errors import ConfigError

from .common import exit_with_error


def field_help(config_class: type, name: str) -> str:
    """The help text recorded on a config dataclass field (`metadata={"help": ...}`)."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if name not in fields:
        raise KeyError(f"{config_class.__name__} has no field {name!r}")
    return fields[name].metadata.get("help", "")


def from_config(config_class: type, name: str, *param_decls: str, **options: Any) -> Any:
    """A typer option whose help is the config field's; extra typer settings pass through.

    The option remembers its field (`config_field`), so a test can hold every command's defaults to the
    config's. A `help=` given here marks an option that takes the field in another form (a file of words
    for a tuple of words, `mask=0.1,…` for a tuple of pairs) and says so in its own words."""
    own_help = options.pop("help", None)
    info = typer.Option(*param_decls, help=own_help or field_help(config_class, name), **options)
    info.config_field = (config_class, name)
    info.help_is_the_fields = own_help is None
    return info


def _apply_config_file(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    if value is None or ctx.resilient_parsing:
        return value
    # Raised while click parses, before the command's own error boundary: reported the same way, one line.
    try:
        options = read_options_file(value, what="--config file")
    except ConfigError as error:
        exit_with_error(error)
    known = {p.name for p in ctx.command.params if p.name != param.name}
    unknown = sorted(set(options) - known)
    if unknown:
        exit_with_error(f"--config {value} sets {', '.join(unknown)}, which `{ctx.info_name}` does not take; "
                        f"its options are {', '.join(sorted(known))}.")
    ctx.default_map = {**(ctx.default_map or {}), **options}
    return value


ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", is_eager=True, callback=_apply_config_file, dir_okay=False,
                 help="TOML or YAML file of this command's options (flag names as keys, e.g. max-length = 64); "
                      "flags on the command line override it."),
]


def _apply_threads(ctx: typer.Context, param: typer.CallbackParam, value: int | None) -> int | None:
    if value is None or ctx.resilient_parsing:
        return value
    from mtkd_cache.devices import set_threads

    try:
        set_threads(value)
    except ConfigError as error:
        exit_with_error(error)
    return value


# Every compute command takes `threads: Threads = None`; the thread count is applied while the options are
# parsed (from the command line or a --config file, so a sweep's config file can set it too).
Threads = Annotated[
    int | None,
    typer.Option("--threads", callback=_apply_threads,
                 help="CPU threads for torch in this process (default: one per core). Several jobs side by side "
                      "on one machine run faster with fewer each."),
]
