"""Read-mostly helpers over a Client for consoles (the TUI): consumers, leader, DLQ depths, timelines.

Each function takes a Client and uses only its public attributes, so nothing here
needs a change to client.py. ``run_schedule_now`` is the one writer: it submits a
one-off job with a schedule's task and arguments through ``Client.submit``.

The console (chronos.tui) imports the client side only: ``Client``, this module and the pure
types. What it needs from wire or record modules (an event's one-line summary, a schedule's
timing, the audit trail) it gets here (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from . import audit
from .client import Client
from .errors import ChronosError
from .events import decode_events
from .leadership import read_leader
from .models import Event, JobRecord, Schedule
from .states import JobState

# Re-exported for the console, which imports no wire module itself.
from .audit import AuditEntry as AuditEntry, role_label as role_label
from .events import event_summary as event_summary
from .lease import LeaderInfo as LeaderInfo
from .readmodel import Counts as Counts
from .clientapi.queues import QueueInfo as QueueInfo
from .limits import Holder as Holder, LimitView as LimitView, LimitsSnapshot as LimitsSnapshot

log = logging.getLogger(__name__)


class ConsumerStat(msgspec.Struct, frozen=True):
    """One durable work consumer (one per priority and queue) as the server reports it."""

    priority: str
    queue: str
    pending: int  # messages not yet delivered: jobs waiting for a worker
    ack_pending: int  # delivered, not yet acked: running, or waiting for a nak'ed redelivery
    max_ack_pending: int  # -1 means no limit
    waiting: int  # pull requests parked on the server: idle worker capacity
    redelivered: int

    @property
    def stalled(self) -> bool:
        """At its max-ack-pending limit: the server delivers nothing more until something is acked."""
        return self.max_ack_pending > 0 and self.ack_pending >= self.max_ack_pending


async def consumers(client: Client) -> list[ConsumerStat]:
    """Every work consumer of the jobs stream, in one request (plus one per 256 consumers)."""
    names = client.names
    prefix = names.jobs_root + "."
    out: list[ConsumerStat] = []
    offset = 0
    while True:
        infos = await client.conn.js.consumers_info(names.jobs_stream, offset=offset or None)
        for info in infos:
            subject = info.config.filter_subject or ""
            if not subject.startswith(prefix):
                continue
            priority, _, queue = subject[len(prefix):].partition(".")
            out.append(ConsumerStat(
                priority=priority, queue=queue or "*", pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                max_ack_pending=info.config.max_ack_pending if info.config.max_ack_pending is not None else -1,
                waiting=info.num_waiting or 0, redelivered=info.num_redelivered or 0,
            ))
        if len(infos) < 256:
            break
        offset += len(infos)
    return out


async def leader(client: Client, role: str = "scheduler") -> LeaderInfo | None:
    """Who holds the scheduler lease now (None when nobody does)."""
    return await read_leader(client.conn, role=role, clock=client.clock)


async def dlq_depths(client: Client) -> dict[str, int]:
    """DLQ entries per queue."""
    names = client.names
    info = await client.conn.js.stream_info(names.dlq_stream, subjects_filter=names.dlq_wildcard())
    prefix = names.dlq_root + "."
    return {k[len(prefix):]: v for k, v in (info.state.subjects or {}).items()}


async def event_batches(client: Client) -> AsyncIterator[list[Event]]:
    """Subscribe to live events now; the returned iterator yields one list per published batch.

    The subscription exists when this returns, so a caller can subscribe first and then
    scan the records without losing what happens in between. Cheaper than Client.watch's
    one-event-at-a-time iteration for a consumer that takes everything, like a dashboard.
    """
    sub = await client.conn.nc.subscribe(client.names.events_filter("*", "*"))

    async def batches() -> AsyncIterator[list[Event]]:
        try:
            async for msg in sub.messages:
                try:
                    yield decode_events(msg.data)
                except ChronosError:
                    continue
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is gone; nothing to release
                log.debug("unsubscribe failed: %s", exc)

    return batches()


def is_connected(client: Client) -> bool:
    nc = client.conn.nc
    return bool(nc.is_connected)


async def all_records(client: Client) -> list[JobRecord]:
    """Every job record in the KV (one scan)."""
    return (await client.list(limit=1 << 40)).jobs


async def job_timeline(client: Client, record: JobRecord, *, budget: float = 2.0, idle: float = 0.3) -> list[Event]:
    """The job's events from the events stream, oldest first.

    Reads the job's queue from shortly before it was created; stops at the first
    event newer than the call, after ``idle`` quiet seconds, or after ``budget``.
    """
    started = time.time()
    back = max(1.0, client.clock.now() - record.created_at + 1.0)
    it = client.watch(queue=record.spec.queue, job_id=record.id, history=back).__aiter__()
    out: list[Event] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    try:
        while True:
            left = min(idle, deadline - loop.time())
            if left <= 0:
                break
            try:
                ev = await asyncio.wait_for(it.__anext__(), left)
            except (TimeoutError, StopAsyncIteration):
                break
            if ev.at > started:
                out.append(ev)
                break
            out.append(ev)
    finally:
        await it.aclose()
    out.sort(key=lambda e: e.at)  # events from different publishers reach the stream in any order
    return out


def describe_timing(schedule: Schedule) -> str:
    """The schedule's timing in words; ChronosError when it does not parse."""
    from .schedules import timing_of

    return timing_of(schedule).describe()


async def audit_trail(client: Client, limit: int = 100) -> list[AuditEntry]:
    """The last ``limit`` operator actions, oldest first."""
    return await audit.read(client.conn, limit=limit)


def next_fire(schedule: Schedule, now: float) -> float | None:
    """When the schedule fires next (None while paused without an end)."""
    from .schedules import timing_of

    if schedule.paused and schedule.paused_until is None:
        return None
    after = max(now, schedule.last_fire_time or 0.0, schedule.paused_until or 0.0)
    try:
        return timing_of(schedule).next_after(after)
    except ChronosError:
        return None


async def last_outcome(client: Client, schedule: Schedule) -> JobState | None:
    """The state of the schedule's most recent job, if it is still in the KV."""
    if not schedule.last_job_id:
        return None
    try:
        return (await client.get(schedule.last_job_id)).state
    except ChronosError:
        return None


async def run_schedule_now(client: Client, name: str) -> str:
    """Submit one job now with the schedule's task and arguments (the schedule itself is unchanged)."""
    s = await client.get_schedule(name)
    opts: dict[str, Any] = dict(queue=s.queue, priority=s.priority, max_attempts=s.max_attempts,
                                annotations={**s.annotations, "schedule": s.name, "fired_by": "operator"})
    if s.timeout is not None:
        opts["timeout"] = s.timeout
    return await client.submit(s.task, s.args, **opts)
