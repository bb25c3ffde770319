"""Rich progress bars behind the library's ProgressEvents hooks (rows/s and ETA per teacher and split)."""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

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


class ProgressEvents:
    def __init__(self, console: Console = stderr):
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressEvents:
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    def task(self, description: str, total: int) -> None:
        self._task = self._progress.add_task(description, total=total, rate="")

    def advance(self, rows: int) -> None:
        if self._task is None:
            return
        self._progress.advance(self._task, rows)
        speed = self._progress.tasks[self._task].speed
        if speed:
            self._progress.update(self._task, rate=f"{speed:,.0f} rows/s")

    def note(self, message: str) -> None:
        self._progress.console.print(f"[dim]{message}[/dim]")


def byte_progress(description: str, console: Console = stderr) -> Progress:
    """A bar in bytes with bytes/s, for push and pull (the total grows as shards are found missing)."""
    return Progress(TextColumn(description), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeElapsedColumn(), console=console)
