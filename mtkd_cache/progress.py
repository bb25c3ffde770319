"""Progress events: how a long library call tells its caller what it is doing.

One protocol for every stage. The library never draws anything: the CLI implements these hooks as rich
progress bars, tests and Python callers pass `SilentEvents()` (the default) or their own object.

A call announces each piece of work with `task(description, total, unit)` and then reports what it got
done with `advance(amount)` in that task's unit: "rows" (a build's teacher rows, augmented texts) or
"bytes" (push and pull), so a display can show rows/s or MB/s. `note` is a one-line remark between tasks.
"""

from __future__ import annotations

from typing import Protocol

ROWS = "rows"
BYTES = "bytes"


class ProgressEvents(Protocol):
    """Progress hooks; all optional to act on."""

    def task(self, description: str, total: int, unit: str = ROWS) -> None: ...
    def advance(self, rows: int) -> None: ...  # in the current task's unit (rows unless it said otherwise)
    def note(self, message: str) -> None: ...


class SilentEvents:
    def task(self, description: str, total: int, unit: str = ROWS) -> None: pass
    def advance(self, rows: int) -> None: pass
    def note(self, message: str) -> None: pass
