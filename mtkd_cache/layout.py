"""Names: what may be called a teacher (or a split), and the package version recorded in what it writes.

A name ends up in file paths under CACHE/ (outputs/<teacher>/<split>/…), so it is restricted to
characters that are safe in a path on every platform and cannot climb out of the cache ("..").
"""

from __future__ import annotations

import re

from mtkd_cache.errors import ConfigError

PACKAGE_VERSION = "0.1.0"
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME_PATTERN = re.compile(rf"^{NAME}$")


def validate_name(name: str, what: str) -> None:
    if not _NAME_PATTERN.match(name):
        raise ConfigError(f"{what} name '{name}' may hold only letters, digits, '_', '.' and '-'.")


# --- CACHE/: the cache directory (owned by the cache stage; DESIGN.md "The cache") ---------------------


# --- RUN/: a distill, finetune or sweep run directory (owned by the distill and report stages) ---------
