"""Rich progress bars behind the library's ProgressEvents hooks, and the consoles results are printed on."""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from mtkd_cache.progress import BYTES, ROWS

# Wide enough that no result line is ever re-wrapped, short of a line no program would read anyway.
UNWRAPPED_WIDTH = 10_000


class ResultConsole(Console):
    """A console that wraps for a person at a terminal and never for a program reading a pipe or a file.

    rich wraps to 80 columns (or $COLUMNS) when the output is not a terminal, which splits result lines
    such as "C: 24 shards" after a long path; scripts and tests read those lines, so outside a terminal
    the width is unbounded and text is soft-wrapped (never cut by inserted newlines)."""

    def __init__(self, **options) -> None:
        super().__init__(soft_wrap=True, **options)

    @property
    def size(self) -> ConsoleDimensions:
        measured = super().size
        return measured if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, measured.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


stderr = ResultConsole(stderr=True)


class _AmountColumn(ProgressColumn):
    """Done / total as a count of rows, or as sizes for a task in bytes (`unit` field of the task)."""

    def __init__(self) -> None:
        super().__init__()
        self._rows, self._bytes = MofNCompleteColumn(), DownloadColumn()

    def render(self, task: Task) -> Text:
        return (self._bytes if task.fields.get("unit") == BYTES else self._rows).render(task)


class _RateColumn(ProgressColumn):
    """rows/s, or bytes/s (as kB/s, MB/s…) for a task in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", ROWS)
        if unit == BYTES:
            return self._bytes.render(task)
        return Text(f"{task.speed:,.0f} {unit}/s" if task.speed else "")


class ProgressEvents:
    """The one display of the library's ProgressEvents hooks for every command: a bar per task, with its
    amount and rate in the task's unit (rows for build, augment and training, bytes for push and pull)."""

    def __init__(self, console: Console = stderr):
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), _AmountColumn(), _RateColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressEvents:
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    def task(self, description: str, total: int, unit: str = ROWS) -> None:
        self._task = self._progress.add_task(description, total=total, unit=unit)

    def advance(self, rows: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, rows)

    def note(self, message: str) -> None:
        self._progress.console.print(f"[dim]{message}[/dim]")
