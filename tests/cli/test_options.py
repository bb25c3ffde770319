"""Each default is written once: every CLI option backed by a config field shows that field's default and help.

The options come from `cli/options.py from_config(ConfigClass, "field")`, which records the field on the
option; these tests walk every registered command, so a new command or option is checked without being
listed here.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import typer.main

from mtkd_cache_cli.app import app
from mtkd_cache_cli.common import load_commands
from mtkd_cache_cli.options import field_help

load_commands()  # every command module, not only those `--help` and `info` load (tests/cli/test_startup.py)

# The commands whose options are the library's config fields (each must have at least one).
CONFIGURED_COMMANDS = {"build", "augment", "experts", "select", "distill", "finetune", "sweep", "export", "predict"}


def _config_backed_options() -> list[tuple[str, str, object, type, str, bool]]:
    """(command, parameter, its default, config class, field name, help is the field's) per config-backed option."""
    found = []
    for command in app.registered_commands:
        function = inspect.unwrap(command.callback)
        name = command.name or function.__name__.replace("_", "-")
        hints = typing.get_type_hints(function, include_extras=True)
        parameters = inspect.signature(function).parameters
        for parameter, hint in hints.items():
            for metadata in getattr(hint, "__metadata__", ()):
                field = getattr(metadata, "config_field", None)
                if field is not None:
                    found.append((name, parameter, parameters[parameter].default, *field, metadata.help_is_the_fields))
    return found


def _field(config_class: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(config_class)}[name]


def _click_params(command: str) -> dict[str, object]:
    return {param.name: param for param in typer.main.get_command(app).commands[command].params}


def test_every_configured_command_takes_its_options_from_the_configs():
    commands = {command for command, *_ in _config_backed_options()}
    assert CONFIGURED_COMMANDS <= commands, sorted(CONFIGURED_COMMANDS - commands)


def _plain(value):
    """A default as --help shows it: an enum member as its value, a tuple as a list."""
    value = getattr(value, "value", value)
    return ", ".join(map(str, value)) if isinstance(value, tuple) else value


@pytest.mark.parametrize(("command", "parameter", "default", "config_class", "field_name", "fields_help"),
                         _config_backed_options(), ids=lambda value: value if isinstance(value, str) else None)
def test_an_option_shows_its_config_fields_default_and_help(command, parameter, default, config_class, field_name,
                                                            fields_help):
    field = _field(config_class, field_name)
    param = _click_params(command)[parameter]
    assert field.metadata.get("help"), f"{config_class.__name__}.{field_name} has no help text"
    if fields_help:
        assert param.help == field_help(config_class, field_name)
    if field.default is dataclasses.MISSING:  # a required field has no default to agree with
        return
    if default is None and field.default is not None:
        # Unset unless given: the field's default applies (sweep: a sweep file may set it). --help must still
        # show that default — as typer's default, or in the option's own help text.
        shown = param.show_default if isinstance(param.show_default, str) else param.help
        assert str(_plain(field.default)) in shown or not fields_help and "default" in shown.lower(), \
            f"{command} --{parameter} hides its default {field.default!r}"
        return
    assert _plain(default) == _plain(field.default), f"{command} --{parameter}: {default!r} != {field.default!r}"
    assert _plain(param.default) == _plain(field.default), f"{command} --{parameter} (click): {param.default!r}"


def test_every_command_accepts_a_config_file():
    for name, command in typer.main.get_command(app).commands.items():
        assert "config" in {param.name for param in command.params}, name
