"""Progress events: how a long library call tells its caller what it is doing.

One protocol for every stage. The library never draws anything: the CLI implements these hooks as rich
progress bars, tests and Python callers pass `SilentEvents()` (the default) or their own object.
"""

from __future__ import annotations

from typing import Protocol


class ProgressEvents(Protocol):
    """Progress hooks; all optional to act on."""

    def task(self, description: str, total: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def note(self, message: str) -> None: ...


class SilentEvents:
    def task(self, description: str, total: int) -> None: pass
    def advance(self, rows: int) -> None: pass
    def note(self, message: str) -> None: pass
