"""Rich progress bars behind the library's BuildEvents hooks (rows/s and ETA per teacher and split)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

stderr = Console(stderr=True)


class ProgressEvents:
    def __init__(self, console: Console = stderr):
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> "ProgressEvents":
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
