"""Rich progress bars behind the library's ProgressEvents hooks, and the consoles results are printed on."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich import filesize
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
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


LOG_INTERVAL_SECONDS = 30.0  # outside a terminal: at most one progress line per task this often


class ProgressEvents:
    """The one display of the library's ProgressEvents hooks for every command: a bar per task, with its
    amount and rate in the task's unit (rows for build, augment and training, bytes for push and pull).

    Outside a terminal (a log file, a pipe) a live bar shows nothing until its task ends, so a 9-minute
    fine-tune printed nothing for 9 minutes: there each task prints plain lines instead — when it starts,
    at most every `log_interval` seconds while it runs (done/total, rate, ETA), and when it is done."""

    def __init__(self, console: Console = stderr, log_interval: float = LOG_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console
        self._plain = None if console.is_terminal else _PlainLines(console, log_interval, clock)
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), _AmountColumn(), _RateColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressEvents:
        if self._plain is None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._plain is None:
            self._progress.stop()

    def task(self, description: str, total: int, unit: str = ROWS) -> None:
        if self._plain is not None:
            self._plain.task(description, total, unit)
            return
        self._task = self._progress.add_task(description, total=total, unit=unit)

    def advance(self, rows: int) -> None:
        if self._plain is not None:
            self._plain.advance(rows)
        elif self._task is not None:
            self._progress.advance(self._task, rows)

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{escape(message)}[/dim]", highlight=False)


class _PlainLines:
    """Progress as log lines, at a bounded rate: `<task>: 480/1,000 rows (48%), 12 rows/s, ETA 43 s`."""

    def __init__(self, console: Console, interval: float, clock: Callable[[], float]):
        self.console, self.interval, self.clock = console, interval, clock
        self.description, self.total, self.unit, self.done = "", 0, ROWS, 0
        self.started = self.last_line = 0.0

    def task(self, description: str, total: int, unit: str) -> None:
        self.description, self.total, self.unit, self.done = description, total, unit, 0
        self.started = self.last_line = self.clock()
        self.console.print(f"{escape(description)}: started, {self._amount(total)} {'' if unit == BYTES else unit}".rstrip(),
                           highlight=False)

    def advance(self, amount: int) -> None:
        self.done += amount
        now = self.clock()
        finished = self.total > 0 and self.done >= self.total
        if finished or now - self.last_line >= self.interval:
            self.last_line = now
            self.console.print(self._line(now, finished), highlight=False)

    def _line(self, now: float, finished: bool) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        unit = "" if self.unit == BYTES else f" {self.unit}"
        speed = f"{filesize.decimal(int(rate))}/s" if self.unit == BYTES else f"{rate:,.1f} {self.unit}/s"
        if finished:
            tail = f"done in {_duration(elapsed)}"
        else:
            tail = f"ETA {_duration((self.total - self.done) / rate)}" if rate > 0 and self.total else "ETA -"
        return (f"{escape(self.description)}: {self._amount(self.done)}/{self._amount(self.total)}{unit}{share}, "
                f"{speed}, {tail}")

    def _amount(self, value: int) -> str:
        return filesize.decimal(value) if self.unit == BYTES else f"{value:,}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        (f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s")
