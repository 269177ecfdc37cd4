"""What the tool shows while it works: progress, messages and tables.

Every stage reports progress through one protocol, :class:`Progress`: ``progress(desc, done, total,
info)`` for work counted in items (images, rows, sweep points) and ``progress.log(desc, epoch, epochs,
losses)`` for training. The stages never know where it goes. :class:`Reporter` sends it to a terminal
as rich bars (items/s, ETA), to anything else (a CI log, a pipe into ``tee``) as plain lines, or
nowhere (``--quiet``). This module imports no stage package.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

# Plain lines: at most one line per task this often. Often enough for a CI log to show a run is alive,
# rarely enough that a long extraction does not drown the log.
PLAIN_INTERVAL_S = 5.0

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "R@1%", "AP")

# Width of tables written to a file or pipe (they take only the width their content needs).
NON_TERMINAL_WIDTH = 240


@runtime_checkable
class Progress(Protocol):
    """How a stage reports long work. ``total`` 0 means the amount is unknown (a wait, a status)."""

    def __call__(self, desc: str, done: int, total: int, info: Mapping[str, Any] | None = None) -> None:
        """``done`` of ``total`` items of the task named ``desc``; ``info``: numbers shown beside it."""

    def log(self, desc: str, epoch: int, epochs: int, losses: Mapping[str, Any]) -> None:
        """Training: ``epoch`` of ``epochs`` completed, with the epoch's losses."""


class SilentProgress:
    """A :class:`Progress` that shows nothing (``--quiet``, and the Python API's default)."""

    def __call__(self, desc: str, done: int, total: int, info: Mapping[str, Any] | None = None) -> None:
        """Ignore the update."""

    def log(self, desc: str, epoch: int, epochs: int, losses: Mapping[str, Any]) -> None:
        """Ignore the epoch."""


def format_info(info: Mapping[str, Any] | None) -> str:
    """The numbers of ``info`` as ``k=v`` pairs (4 significant digits); anything else is left out."""
    return "  ".join(
        f"{k}={v:.4g}"
        for k, v in (info or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    )


@dataclass
class _Task:
    """One task of :class:`PlainProgress`: where it started, where it is, what was written about it."""

    start: float
    first_done: int
    done: int
    total: int
    info: str = ""
    last_line: float = 0.0
    written: bool = False  # a line about this task has been written
    unwritten_change: bool = False  # its state changed since its last line
    final_pending: bool = False  # it reached its total and its final line is still to be written
    end: float | None = None  # when it reached its total


class PlainProgress:
    """A :class:`Progress` writing plain log lines, for output that is not a terminal.

    A task gets a line at most every ``interval`` seconds while it runs, and a final line (items, rate,
    seconds) once it is done. A task that finishes within its first ``interval`` seconds has its final
    line written when anything else is next written, or when the work ends successfully: so a command
    that fails within seconds writes its one error line and nothing else, as on a terminal, where
    the bars are erased. A task of unknown size (``total`` 0: a wait) is written at once.
    """

    def __init__(
        self,
        write: Callable[[str], None] | None = None,
        *,
        interval: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write or _stderr_line
        self.interval = interval
        self.clock = clock
        self.tasks: dict[str, _Task] = {}

    def __call__(self, desc: str, done: int, total: int, info: Mapping[str, Any] | None = None) -> None:
        """Record the update; write a line when the task is due one."""
        now = self.clock()
        task = self.tasks.get(desc)
        finished = (
            task is not None and bool(task.total) and task.done >= task.total and not task.final_pending
        )
        if finished and done == task.done and total == task.total:
            return  # its final line is written; nothing new
        if task is None or finished or done < task.done:
            # A new task, or the same description starting over (another entry, a new sweep group).
            if task is not None and task.final_pending:
                self._flush_finals()
            task = self.tasks[desc] = _Task(start=now, first_done=done, done=done, total=total, last_line=now)
            if not total:
                self._emit(desc, task, now)
                return
        task.done, task.total = done, total
        text = format_info(info)
        if text:
            task.info = text
        task.unwritten_change = True
        if total and done >= total:
            task.end = now
            if task.written:
                self._flush_finals()
                self._emit(desc, task, now)
            else:
                task.final_pending = True
        elif now - task.last_line >= self.interval:
            self._flush_finals()
            self._emit(desc, task, now)

    def log(self, desc: str, epoch: int, epochs: int, losses: Mapping[str, Any]) -> None:
        """A training epoch: one task counted in epochs."""
        self(desc, epoch, epochs, losses)

    def close(self, *, ok: bool) -> None:
        """End of the work: on success write every task's last state not yet written; on failure nothing."""
        if ok:
            now = self.clock()
            for desc, task in self.tasks.items():
                if task.unwritten_change or task.final_pending:
                    self._emit(desc, task, now)
        self.tasks.clear()

    def _flush_finals(self) -> None:
        now = self.clock()
        for desc, task in self.tasks.items():
            if task.final_pending:
                self._emit(desc, task, now)

    def _emit(self, desc: str, task: _Task, now: float) -> None:
        self._write(self.line(desc, task, now))
        task.last_line, task.written = now, True
        task.unwritten_change = task.final_pending = False

    @staticmethod
    def line(desc: str, task: _Task, now: float) -> str:
        """``desc: done/total (pct %), rate it/s, seconds s, info`` (only what is known)."""
        if not task.total and not task.done:
            return f"{desc} …"
        elapsed = max((task.end if task.end is not None else now) - task.start, 0.0)
        if task.total:
            parts = [f"{task.done:,}/{task.total:,} ({100.0 * task.done / task.total:.0f} %)"]
        else:
            parts = [f"{task.done:,}"]
        if elapsed > 0 and task.done > task.first_done:
            parts.append(f"{(task.done - task.first_done) / elapsed:,.1f} it/s")
        parts.append(f"{elapsed:.1f} s")
        if task.info:
            parts.append(task.info)
        return f"{desc}: {', '.join(parts)}"


def _stderr_line(line: str) -> None:
    # Looked up at each call, not bound at import: whoever replaced sys.stderr gets the line.
    print(line, file=sys.stderr, flush=True)


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:  # type: ignore[override]
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} it/s" if speed else "– it/s", style="progress.data.speed")


class BarProgress:
    """A :class:`Progress` drawing rich bars (items/s, ETA) on a terminal console."""

    def __init__(self, console: Console) -> None:
        self.bars = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.bars.start()

    def __call__(self, desc: str, done: int, total: int, info: Mapping[str, Any] | None = None) -> None:
        """Move the bar of ``desc`` (created on its first update)."""
        if desc not in self.tasks:
            self.tasks[desc] = self.bars.add_task(desc, total=total or None, info="")
        self.bars.update(self.tasks[desc], completed=done, total=total or None, info=format_info(info))

    def log(self, desc: str, epoch: int, epochs: int, losses: Mapping[str, Any]) -> None:
        """A training epoch: one bar counted in epochs."""
        self(desc, epoch, epochs, losses)

    def close(self, *, ok: bool) -> None:
        """Leave the bars on screen after success; erase them after a failure."""
        if ok:
            self.bars.stop()
            return
        # The error must be the only thing on stderr. stop() would render the bars once more and add
        # a blank line after them; stopping the live display as transient erases the bars instead.
        self.bars.live.transient = True
        self.bars.live.stop()


class Reporter:
    """The command line's :class:`Progress`, as a context manager: bars on a terminal, plain lines
    elsewhere, nothing with ``quiet``. Leaving it on an exception shows nothing more, so the error
    line stands alone."""

    def __init__(
        self, quiet: bool, console: Console | None = None, *, interval: float = PLAIN_INTERVAL_S
    ) -> None:
        self.quiet = quiet
        self.console = console or stderr_console()
        self.interval = interval
        self.sink: BarProgress | PlainProgress | None = None

    def __enter__(self) -> Reporter:
        if not self.quiet:
            if self.console.is_terminal:
                self.sink = BarProgress(self.console)
            else:
                self.sink = PlainProgress(interval=self.interval)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.close(ok=exc_type is None)

    def __call__(self, desc: str, done: int, total: int, info: Mapping[str, Any] | None = None) -> None:
        """Pass the update on (nothing with ``quiet`` or outside the ``with`` block)."""
        if self.sink is not None:
            self.sink(desc, done, total, info)

    def log(self, desc: str, epoch: int, epochs: int, losses: Mapping[str, Any]) -> None:
        """Pass the epoch on."""
        if self.sink is not None:
            self.sink.log(desc, epoch, epochs, losses)


# -- consoles, messages, tables ------------------------------------------------------------------------
def stdout_console() -> Console:
    """Results (tables, JSON) go to stdout; long lines wrap softly so they can be copied."""
    console = Console(soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # A file or pipe has no width; rich would assume 80 columns and cut entry names in tables.
        console.width = NON_TERMINAL_WIDTH
    return console


def stderr_console() -> Console:
    """Messages and progress go to stderr."""
    console = Console(stderr=True)
    if not console.is_terminal:
        # In a log a message stays one line, however long: rich would break it at 80 columns.
        console.soft_wrap = True
    return console


def say(console: Console, message: str, *, quiet: bool) -> None:
    """A message for the user on ``console`` (stderr); nothing with ``quiet``."""
    if not quiet:
        console.print(message)


def metric_cell(key: str, value: Any, n_gallery: Any = None) -> str:
    """A metric as a table shows it: two decimals, "–" where absent, and "–" for R@1% on a gallery of
    fewer than 100 items (⌊G/100⌋ = 0: one percent of it is not one item; metrics.json keeps the
    protocol's number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    if key == "R@1%" and isinstance(n_gallery, (int, float)) and int(n_gallery) // 100 == 0:
        return "–"
    return f"{value:.2f}"


def metrics_table(rows: Iterable[tuple[str, Mapping[str, Any]]], title: str = "retrieval") -> Table:
    """One row per (label, metrics) pair: protocol, R@1, R@5, R@10, R@1%, AP (see :func:`metric_cell`); with
    metres (protocol=map) also the median error per frame and, when smoothed, per flight."""
    rows = list(rows)
    columns = list(METRIC_COLUMNS)
    metres = [("median m", "dist_m_median"), ("flight median m", "seq.dist_m_median")]
    extra = [(name, key) for name, key in metres if any(key in m for _, m in rows)]
    table = Table(title=title)
    table.add_column("descriptors")
    table.add_column("protocol")
    for k in columns + [name for name, _ in extra]:
        table.add_column(k, justify="right")
    for label, m in rows:
        cells = [metric_cell(k, m.get(k), m.get("n_gallery")) for k in columns]
        cells += [f"{m[key]:.1f}" if key in m else "–" for _, key in extra]
        table.add_row(label, str(m["protocol"]), *cells)
    return table


def human_bytes(n: float) -> str:
    """``n`` bytes as B, KB, MB, GB or TB (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cache_table(title: str, rows: Sequence[Mapping[str, Any]]) -> Table:
    """The ``cache ls`` table: one row per entry as ``CacheStore.ls()`` describes it."""
    table = Table(title=title)
    for c in ("key", "aliases", "kind", "rows", "shape", "dtype", "size", "state"):
        table.add_column(c)
    for r in rows:
        table.add_row(
            r["key"][:12],
            ", ".join(r["aliases"]) or "–",
            r["kind"] or "–",
            str(r["count"] or "–"),
            "×".join(map(str, r["shape"])) if r["shape"] else "–",
            r["dtype"] or "–",
            human_bytes(r["bytes"]),
            r.get("state") or ("complete" if r["complete"] else "incomplete"),
        )
    return table


__all__ = [
    "BarProgress",
    "PlainProgress",
    "Progress",
    "Reporter",
    "SilentProgress",
    "cache_table",
    "format_info",
    "human_bytes",
    "metric_cell",
    "metrics_table",
    "say",
    "stderr_console",
    "stdout_console",
]
