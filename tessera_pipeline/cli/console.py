"""Terminal-aware output for the commands: rich on a terminal, plain unwrapped lines in pipes and logs.

On a terminal: colour, a live progress bar. Anywhere else (a pipe, a file, a batch scheduler's log):
no colour, no wrapping at 80 columns, tables at their full width, and progress as a plain line every
`PLAIN_PROGRESS_EVERY_S` seconds plus one at the end, so a log shows how far a long encode got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_PROGRESS_EVERY_S = 30.0


def is_terminal(stream: TextIO) -> bool:
    """True when `stream` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """A rich Console for stdout or stderr; off a terminal it neither wraps nor colours."""
    stream = sys.stderr if stderr else sys.stdout
    if is_terminal(stream):
        return Console(stderr=stderr, quiet=quiet)
    return Console(stderr=stderr, quiet=quiet, soft_wrap=True, no_color=True, highlight=False, emoji=False)


def print_table(console: Console, table: Table) -> None:
    """Print a table at its natural width when not on a terminal (no cut column titles)."""
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        console.width = max(console.width, natural)
    console.print(table)


class _PlainProgress:
    """Progress as plain lines: one at the start, one every `every_s` seconds, one at the end."""

    def __init__(self, console: Console, label: str, total: int, unit: str, every_s: float) -> None:
        self.console, self.label, self.total, self.unit, self.every_s = console, label, total, unit, every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self._line()

    def _line(self) -> None:
        """Write one progress line: done/total, percent, elapsed and the estimated time left."""
        elapsed = time.monotonic() - self.start
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = f", ~{elapsed * (self.total - self.done) / self.done:.0f} s left" if 0 < self.done < self.total else ""
        self.console.print(
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), {elapsed:.0f} s elapsed{left}",
            markup=False,
        )

    def advance(self, n: int) -> None:
        """Count `n` more done; print a line when `every_s` has passed since the last one."""
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._line()

    def close(self) -> None:
        """The final line."""
        self._line()


@contextmanager
def progress(console: Console, label: str, total: int, *, unit: str = "px") -> Iterator[Callable[[int], Any]]:
    """Yield an `advance(n)` callback: a transient rich bar on a terminal, plain periodic lines otherwise."""
    if console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn(label), BarColumn(), TextColumn(f"{{task.completed:,}}/{{task.total:,}} {unit}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
        return
    plain = _PlainProgress(console, label, total, unit, PLAIN_PROGRESS_EVERY_S)
    yield plain.advance
    plain.close()
