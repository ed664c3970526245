"""Typed lifecycle events: publish in batches, follow them, and log them.

Events are a view, not the source of truth (the KV record is). They are sent
with a core publish that the events stream captures: no ack round trip, and a
busy worker coalesces many events into one message per subject per flush
(every ``flush_interval`` or ``max_batch`` events). Services log through
``logging``; ``log_event`` is the one formatter (job events at DEBUG only).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Callable

from nats.aio.client import Client as NATS

from . import codec
from .models import Event, EventBatch
from .subjects import Names

log = logging.getLogger("chronos.events")

Listener = Callable[[Event], None]


class EventBus:
    """In-process fan-out so a service can log (or a test can wait on) its own events."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, fn: Listener) -> Callable[[], None]:
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def emit(self, event: Event) -> None:
        for fn in list(self._listeners):
            fn(event)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"


def event_summary(ev: Event, *, error_width: int = 200, with_queue: bool = False,
                  took: Callable[[float], str] = _ms) -> str:
    """The one-line body of an event (job, task, try, worker, duration, error, message): shared by
    service logs, ``chronos logs`` and the TUI's tail, which each put their own time and kind in front."""
    parts: list[str] = []
    if ev.job_id:
        parts.append(ev.job_id)
    if ev.task:
        parts.append(ev.task)
    if with_queue and ev.queue:
        parts.append(f"{ev.queue}/{ev.priority or 'default'}")
    if ev.attempt:
        parts.append(f"attempt={ev.attempt}")
    if ev.worker:
        parts.append(f"worker={ev.worker}")
    if ev.duration is not None:
        parts.append(f"took={took(ev.duration)}")
    if ev.error:
        first = ev.error.strip().splitlines()[0] if ev.error.strip() else ""
        parts.append("error=" + (first if len(first) <= error_width else first[: error_width - 1] + "…"))
    if ev.message:
        parts.append(ev.message)
    return " ".join(parts)


# Service events (a worker or a leader came or went) are few and worth a line; a line per job
# would drown them at a few thousand jobs a second, so job events log at DEBUG only (a job
# that lands in the DLQ also gets the executor's own WARNING line).
_SERVICE_WARNINGS = ("worker.lost", "leader.lost")


def log_event(event: Event, logger: logging.Logger = log) -> None:
    if event.job_id is not None:
        level = logging.DEBUG
    else:
        level = logging.WARNING if event.kind in _SERVICE_WARNINGS else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(level, "%s %s", event.kind, event_summary(event))


class EventPublisher:
    """Buffers events per subject and publishes each buffer as one EventBatch."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        bus: EventBus | None = None,
        flush_interval: float = 0.02,
        max_batch: int = 512,
    ) -> None:
        self._nc = nc
        self._names = names
        self.bus = bus or EventBus()
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._buffers: dict[str, list[Event]] = defaultdict(list)
        self._flush_task: asyncio.Task[None] | None = None
        self._closed = False

    def emit(self, event: Event) -> None:
        """Queue an event; never blocks and never raises (events must not break the hot path)."""
        self.bus.emit(event)
        if self._closed:
            return
        subject = self._names.event_subject(event.kind, event.queue or "_")
        buf = self._buffers[subject]
        buf.append(event)
        if len(buf) >= self._max_batch:
            self._send(subject)
        elif self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self._flush_interval)
        finally:
            self._flush_task = None
            self.flush_nowait()

    def _send(self, subject: str) -> None:
        events = self._buffers.pop(subject, None)
        if not events:
            return
        data = codec.encode(EventBatch(events=events))
        # nc.publish only appends to the write buffer; schedule it without awaiting a round trip.
        task = asyncio.get_running_loop().create_task(self._publish(subject, data))
        task.add_done_callback(_log_failure)

    async def _publish(self, subject: str, data: bytes) -> None:
        if self._nc.is_closed:
            return
        await self._nc.publish(subject, data)

    def flush_nowait(self) -> None:
        for subject in list(self._buffers):
            self._send(subject)

    async def close(self) -> None:
        self.flush_nowait()
        self._closed = True
        if self._flush_task is not None:
            self._flush_task.cancel()
        await asyncio.sleep(0)
        if not self._nc.is_closed:
            try:
                await self._nc.flush(timeout=2)
            except Exception as exc:  # closing anyway; say why events may be missing
                log.debug("event flush on close failed: %s", exc)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("event publish failed: %s", task.exception())


def decode_events(data: bytes) -> list[Event]:
    return codec.decode(data, EventBatch).events
