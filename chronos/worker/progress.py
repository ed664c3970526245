"""Progress of running jobs: ``current_job().progress(fraction, message)`` -> the record and an event.

::

    task (loop or thread) --report--> ProgressHub --(first report of a run)--> ProgressWriter
        writer task: latest report --compare-and-set, at most one per ``interval``--> job record
                                   --after each write--> ``progress`` event
    Executor._finish --close()--> last report written, then the outcome on the revision it left

A report only replaces the run's latest value; one writer task per run writes it, so a tight
loop costs about two writes a second, not one per call. A report from a sync task's thread is
handed to the loop (``call_soon_threadsafe``) before anything else happens.

Writes are compare-and-set without a state change (``progress`` is not a state): a conflict (a
cancel request, ...) re-reads and writes again while the record is still this run's (running,
this worker, this gen and attempt); otherwise the writer stops. The executor closes the writer
before it writes the outcome: the last report is written first, and the outcome goes on the
revision the writer left, so the outcome never loses to a progress write and no progress write
lands after it. A job whose ``running`` write is still deferred (a job younger than
``worker.running_write_after``) waits for it: progress is written on top of ``running``; a job
that ends before that gets its last report in the outcome's own write.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

import msgspec

from .. import cas
from ..clock import Clock
from ..errors import ChronosError, JobNotFoundError
from ..events import EventPublisher
from ..jobs import JobOps
from ..models import Event, JobRecord, Progress
from ..states import JobState

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds between two progress writes of one job
CLOSED = "closed"  # ``Running.progress`` once the outcome is being written: later reports are dropped


class ProgressWriter:
    """The progress of one run: the latest report, and the task that writes it."""

    def __init__(self, hub: "ProgressHub", run: Any, record: JobRecord, rev: int) -> None:
        self.hub = hub
        self.run = run
        self.record = record  # the executor's view when the call started
        self.rev = rev
        self.latest: Progress | None = None
        self.written: Progress | None = None
        self.base: tuple[JobRecord, int] | None = None  # the record this writer last wrote, and its revision
        self.writes = 0
        self._last_write = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._stopped = False  # the record is no longer this run's: nothing more is written

    def report(self, fraction: float, message: str | None) -> None:
        if self._closed or self._stopped:
            return
        self.latest = Progress(fraction=fraction, at=self.hub.clock.now(), message=message,
                               attempt=self.record.attempt)
        if self._task is None:
            # Owned here: close() awaits it; it never raises.
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"progress-{self.record.id}")

    async def _loop(self) -> None:
        try:
            while not self._closed and not self._stopped and self.latest is not self.written:
                wait = self._last_write + self.hub.interval - self.hub.clock.monotonic()
                if wait > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)  # close() wakes it early
                    except TimeoutError:
                        pass
                    continue
                assert self.latest is not None
                await self._write(self.latest)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # progress is a view: never let it break the job
            log.warning("job %s: writing progress failed: %r", self.record.id, exc)
            self._stopped = True
        finally:
            self._task = None

    async def _base(self) -> tuple[JobRecord, int] | None:
        """The record to write progress on: the last one written here, else the running record."""
        if self.base is not None:
            return self.base
        run = self.run
        deferred = run.deferred
        if deferred is None:
            return self.record, self.rev
        while run.running_write is None and run.deferred is not None and not self._closed:
            # The service writes `running` once the job is older than worker.running_write_after.
            await asyncio.sleep(0.02)
        task = run.running_write
        if task is None:
            return None  # the job ended first: its outcome write carries the last report
        rev = await asyncio.shield(task)
        if rev is None:
            return None  # the record moved (cancelled before it started, or taken over)
        return deferred[0], rev

    async def _write(self, p: Progress) -> None:
        base = await self._base()
        if base is None:
            self._stopped = not self._closed
            return
        rec, rev = base
        ops = self.hub.ops

        def decide(cur: JobRecord, _rev: int) -> JobRecord | cas.Stop[None]:
            if (cur.state is not JobState.RUNNING or cur.worker != rec.worker or cur.gen != rec.gen
                    or cur.attempt != rec.attempt):
                return cas.Stop(None)
            return msgspec.structs.replace(cur, progress=p)

        async def write(new: JobRecord, at: int) -> JobRecord:
            new.revision = await (await ops.write_nowait(new, at))
            return new

        try:
            new = await cas.update(lambda: ops.read_versioned(rec.id), decide, write, seen=(rec, rev),
                                   what=f"job {rec.id}")
        except JobNotFoundError:
            new = None
        self._last_write = self.hub.clock.monotonic()
        if new is None:
            self._stopped = True
            return
        self.base = (new, new.revision)
        self.written = p
        self.writes += 1
        spec = new.spec
        self.hub.events.emit(Event(kind="progress", at=p.at, job_id=new.id, task=spec.task, queue=spec.queue,
                                   priority=spec.priority, attempt=new.attempt, worker=new.worker,
                                   message=p.message, progress=p.fraction))

    async def close(self) -> tuple[JobRecord, int] | None:
        """Stop taking reports; write the last one if it is not written yet. The record and revision
        last written (None when nothing was)."""
        self._closed = True
        self._wake.set()
        task = self._task
        if task is not None:
            await asyncio.shield(task)
        if not self._stopped and self.latest is not None and self.latest is not self.written \
                and self.base is not None:
            try:
                await self._write(self.latest)
            except (ChronosError, OSError) as exc:
                log.warning("job %s: writing its last progress failed: %r", self.record.id, exc)
            except Exception as exc:  # the transport's own errors: the outcome write decides
                log.warning("job %s: writing its last progress failed: %r", self.record.id, exc)
        return self.base

    def unwritten(self) -> Progress | None:
        """A last report that no write carried (the job ended before its running write)."""
        return None if self.latest is self.written else self.latest


class ProgressHub:
    """The executor's side of progress: a writer per run, made on the run's first report."""

    def __init__(self, ops: JobOps, events: EventPublisher, clock: Clock, interval: float = INTERVAL) -> None:
        self.ops = ops
        self.events = events
        self.clock = clock
        self.interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None

    def hook(self, run: Any, record: JobRecord, rev: int) -> Callable[[float, str | None], None]:
        """What ``JobContext._progress`` calls, from the loop or from a task's thread."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return functools.partial(self._report, run, record, rev)

    def _report(self, run: Any, record: JobRecord, rev: int, fraction: float, message: str | None) -> None:
        loop = self._loop
        assert loop is not None
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if not here:  # a sync task's thread
            try:
                loop.call_soon_threadsafe(self._report, run, record, rev, fraction, message)
            except RuntimeError:
                pass  # the loop is closed: the worker is gone
            return
        writer = run.progress
        if writer is None:
            writer = run.progress = ProgressWriter(self, run, record, rev)
        elif writer is CLOSED:
            return  # a report that arrived after the outcome (from a thread): dropped
        writer.report(fraction, message)

    async def close(self, run: Any, record: JobRecord, rev: int) -> tuple[JobRecord, int]:
        """Before the outcome: the run's last report written; the record and revision to write the
        outcome on (the writer's last, or the caller's with an unwritten last report folded in)."""
        writer = run.progress
        if writer is None or writer is CLOSED:
            return record, rev
        run.progress = CLOSED
        last = await writer.close()
        if last is not None:
            return last
        p = writer.unwritten()
        if p is not None and record.state is JobState.RUNNING:
            return msgspec.structs.replace(record, progress=p), rev
        return record, rev
