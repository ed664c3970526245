"""Human and JSON output: tables, local times with relative hints, stable JSON.

JSON output is ``codec.to_builtins`` of the chronos types (JobRecord, DLQEntry,
WorkerHeartbeat, Event, ...), whose field names are versioned with the wire
format, so scripts can rely on them. Times in JSON are epoch seconds (UTC).
Every listing prints one envelope, ``{"items": [...], "count": n, "next": cursor
or null}`` (``print_listing``); ``next`` goes to the same command's ``--cursor``.

Table cells hold one line, cut to the terminal's width (and to ``MAX_CELL``
characters before rich sees them: a 300 KB task name is one short cell).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any, Iterable

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chronos import codec


# Width for output that is not a terminal (pipes, files): wide enough that rows stay on one line.
PIPE_WIDTH = 200


def console(stderr: bool = False) -> Console:
    """A Console bound to the current stdout/stderr (looked up per call, so test runners can swap them)."""
    file = sys.stderr if stderr else sys.stdout
    tty = hasattr(file, "isatty") and file.isatty()
    return Console(file=file, highlight=False, soft_wrap=False, width=None if tty else PIPE_WIDTH)


def plain(obj: Any) -> Any:
    """Builtins for JSON output, with every field present (records omit defaults on the wire)."""
    if isinstance(obj, msgspec.Struct):
        return {f: plain(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return codec.to_builtins(obj)


def print_json(obj: Any) -> None:
    typer.echo(msgspec.json.format(codec.to_json(plain(obj)), indent=2).decode())


def print_listing(items: Iterable[Any], next_cursor: str | int | None = None) -> None:
    """The one JSON shape of every listing: items, how many, and the cursor of the next page (or null)."""
    rows = [plain(i) for i in items]
    print_json({"items": rows, "count": len(rows), "next": None if next_cursor is None else str(next_cursor)})


def print_json_line(obj: Any) -> None:
    typer.echo(codec.to_json(plain(obj)).decode())


# Longest text put in a table cell, and in a key/value row; the table then cuts cells to the width.
MAX_CELL = 200
MAX_VALUE = 2000


def table(*columns: str, title: str | None = None) -> Table:
    t = Table(title=title, box=None, header_style="bold", pad_edge=False, show_edge=False)
    for c in columns:
        if c in ("ID", "JOB", "SEQ"):
            t.add_column(c, no_wrap=True, overflow="ignore", min_width=4)
        else:
            t.add_column(c, no_wrap=True, overflow="ellipsis")
    return t


def print_table(t: Table) -> None:
    console().print(t)


def cell(value: Any, limit: int = MAX_CELL) -> str:
    """One line of text safe to put in a rich table: no markup, no line breaks, at most ``limit`` characters."""
    if value is None:
        return ""
    text = str(value)[: limit + 1]
    if "\n" in text or "\r" in text or "\t" in text:
        text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return escape(text)


def block(text: str, limit: int = 64 * 1024) -> str:
    """Multi-line text (a traceback) safe to print: no markup, at most ``limit`` characters."""
    text = text.rstrip()
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters)"
    return escape(text)


def attempt_text(attempt: int, max_attempts: int) -> str:
    """``attempt 4 of 5``. Attempts count every run of the job; a retry by hand grants
    max_attempts more, so past the first budget the count says so."""
    if attempt <= max_attempts:
        return f"attempt {attempt} of {max_attempts}"
    return f"attempt {attempt} ({max_attempts} per retry by hand)"


def human_duration(seconds: float) -> str:
    """3m, 1h30m, 5s, 250ms: the largest two units that matter."""
    s = abs(seconds)
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s".replace(".0s", "s")
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    parts: list[str] = []
    rest = int(s)
    for name, size in units:
        if rest >= size:
            parts.append(f"{rest // size}{name}")
            rest %= size
        if len(parts) == 2:
            break
    return "".join(parts)


def relative(ts: float, now: float | None = None) -> str:
    """'5s ago', 'in 3m', 'now' (whole seconds at most: a hint, not a measurement)."""
    now = time.time() if now is None else now
    delta = round(ts - now)
    if delta == 0:
        return "now"
    return f"in {human_duration(delta)}" if delta > 0 else f"{human_duration(delta)} ago"


def local_time(ts: float, now: float | None = None, *, full: bool = False) -> str:
    """Local time: HH:MM:SS today, otherwise the date too."""
    now = time.time() if now is None else now
    dt = datetime.fromtimestamp(ts).astimezone()
    if full:
        return dt.isoformat(timespec="seconds")
    if dt.date() == datetime.fromtimestamp(now).date():
        return dt.strftime("%H:%M:%S")
    return dt.strftime("%Y-%m-%d %H:%M")


def when(ts: float | None, now: float | None = None, *, full: bool = False) -> str:
    """Local time with a relative hint: '14:03:22 (5s ago)'."""
    if ts is None:
        return ""
    return f"{local_time(ts, now, full=full)} ({relative(ts, now)})"


def short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def compact_json(value: Any, width: int = 40) -> str:
    try:
        text = codec.to_json(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return short(text, width)


def key_values(rows: Iterable[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for k, v in rows:
        if v not in (None, "", [], {}):
            grid.add_row(k, cell(v, MAX_VALUE))
    return grid


def progress_text(p: Any, now: float | None = None) -> str:
    """A job's last progress report: ``40% copying part 4 (attempt 1, 2s ago)``."""
    text = f"{p.fraction * 100:.0f}%" + (f" {p.message}" if p.message else "")
    return f"{text} (attempt {p.attempt}, {relative(p.at, now)})"


class ProgressView:
    """``submit --wait``'s view of a job's progress reports: a Rich bar on a terminal, one plain
    line per new report otherwise (pipes, logs, CI). Disabled for ``--json``."""

    def __init__(self, enabled: bool = True) -> None:
        file = sys.stdout
        self.enabled = enabled
        self.tty = enabled and hasattr(file, "isatty") and file.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._last: Any = None

    def __enter__(self) -> "ProgressView":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, rec: Any) -> None:
        p = getattr(rec, "progress", None)
        if not self.enabled or p is None or p.attempt != rec.attempt or p == self._last:
            return
        self._last = p
        if not self.tty:
            typer.echo(f"progress {p.fraction * 100:.0f}%" + (f" {p.message}" if p.message else ""))
            return
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 console=console(), transient=True)
            self._task = self._bar.add_task(rec.id, total=1.0)
            self._bar.start()
        self._bar.update(self._task, completed=p.fraction, description=escape(p.message or rec.id))
