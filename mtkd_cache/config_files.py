"""Options files: a TOML or YAML table of option names to values, read for `--config FILE` on every command.

Keys are the command's flag names, with dashes or underscores (`max-length = 64` or `max_length: 64`);
they come back with underscores, the names of the config fields. Which keys a command accepts is its
own business: this module only parses, and says in one sentence what is wrong with a file.
"""

from __future__ import annotations

from pathlib import Path

from mtkd_cache.errors import ConfigError

SUFFIXES = (".toml", ".yaml", ".yml")


def read_options_file(path: Path, what: str = "options file") -> dict:
    """The table in `path` with keys normalised to underscores; ConfigError naming the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist.")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        parse, parse_errors = tomllib.loads, (tomllib.TOMLDecodeError,)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        parse, parse_errors = yaml.safe_load, (yaml.YAMLError,)
    else:
        raise ConfigError(f"{what} {path}: use a .toml, .yaml or .yml file.")
    try:
        options = parse(path.read_text()) or {}
    except (*parse_errors, UnicodeDecodeError) as error:
        raise ConfigError(f"{what} {path} cannot be parsed: {error}") from error
    if not isinstance(options, dict):
        raise ConfigError(f"{what} {path} must hold a table of options, e.g. max-length = 64.")
    return {str(key).replace("-", "_"): value for key, value in options.items()}
