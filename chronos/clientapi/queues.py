"""Queues under operator control: pause, resume, and what each queue holds.

A pause is a flag in the queues bucket (chronos/queueflags.py) that every worker watches: a
paused queue is not pulled from, jobs already running finish, and submits and the scheduler go
on, so jobs wait in the queue until it is resumed. Each pause and resume is written to the
audit stream first; if that fails, nothing changes. Resuming a queue that is not paused writes
nothing (no flag, no audit entry): it is already what was asked.

``queues()`` lists a queue only while something makes it real: it is in this process's
``worker.queues``, has a work consumer, is paused, has a limit, or a live worker serves it. A
name typed once (a resume, a limit set and cleared) does not stay in the list for good.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import msgspec
import nats.js.errors

from .. import audit
from ..clock import Clock
from ..connection import Connection
from ..errors import ConflictError, ValidationError
from ..queueflags import QueueFlags, QueuePause, decode_flag
from ..subjects import PRIORITIES, is_valid_token
from .cluster import Cluster

MAX_REASON = 500


class QueueInfo(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One queue as ``Client.queues()`` reports it."""

    name: str
    paused: bool = False
    paused_by: str = ""  # the operator's login (or NATS user) that paused it
    paused_at: float | None = None  # since when
    reason: str = ""
    backlog: dict[str, int] = msgspec.field(default_factory=dict)  # per priority: waiting for a worker
    running: int = 0  # delivered and not yet acked, over all priorities
    workers: int = 0  # live workers that serve the queue
    limits: Any = None  # the queue's limits, from the limits API when there is one
    consumers: int = 0  # work consumers (one per priority once a worker has served it)

    @property
    def waiting(self) -> int:
        return sum(self.backlog.values())


def check_queue_name(queue: object) -> str:
    if not isinstance(queue, str) or not is_valid_token(queue):
        raise ValidationError(f"queue: {queue!r} is not a valid queue name "
                              "(1-64 letters, digits, '_' or '-')")
    return queue


class Queues:
    def __init__(self, conn: Connection, clock: Clock, cluster: Cluster,
                 limits_of: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.conn = conn
        self.names = conn.names
        self.clock = clock
        self.cluster = cluster
        self.flags = QueueFlags(conn)
        # Per-queue limits from the limits API, by queue name (set by Client when it has one).
        self.limits_of = limits_of

    async def pause_queue(self, queue: str, reason: str | None = None) -> QueuePause:
        """Stop every worker pulling from ``queue`` (running jobs finish; submits go on)."""
        check_queue_name(queue)
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise ValidationError(f"reason: at most {MAX_REASON} characters of text")
        await self.flags.store()  # the bucket is there (an older topology lacks it) before the audit entry
        await audit.record(self.conn, "queue_pause", queue, reason=reason or None)
        flag = QueuePause(queue=queue, paused=True, at=self.clock.now(), by=audit.login(),
                          user=self.conn.settings.nats.user or "", reason=reason or "")
        await self.flags.put(flag)
        return flag

    async def resume_queue(self, queue: str) -> QueuePause:
        """Let workers pull from ``queue`` again (they learn it through their watch at once).

        Not paused (never, or resumed already): nothing is written and the flag as it stands is
        returned (``paused`` False; ``at`` 0 when there never was one). The write is a
        compare-and-set on the flag read, so a pause written meanwhile is read again, not lost."""
        check_queue_name(queue)
        store = await self.flags.store()
        key = self.names.pause_key(queue)
        audited = False
        for _ in range(5):
            entry = await store.get(key)
            now = decode_flag(entry.value) if entry is not None else None
            if now is None or not now.paused:
                return now or QueuePause(queue=queue, paused=False, at=0.0)
            if not audited:
                await audit.record(self.conn, "queue_resume", queue)
                audited = True
            flag = QueuePause(queue=queue, paused=False, at=self.clock.now(), by=audit.login(),
                              user=self.conn.settings.nats.user or "")
            try:
                await store.update(key, _encode(flag), entry.revision)  # type: ignore[union-attr]
                return flag
            except ConflictError:
                continue  # paused or resumed again meanwhile: read it again
        raise ConflictError(f"queue {queue}: its pause flag kept changing; try again")

    async def queue_flag(self, queue: str) -> QueuePause | None:
        """The queue's last pause or resume, or None if it was never paused."""
        return await self.flags.get(check_queue_name(queue))

    async def queues(self) -> list[QueueInfo]:
        """Every queue known to the namespace (configured, with consumers, served by a worker, or
        flagged): pause state, backlog per priority, running jobs, live workers, limits."""
        out: dict[str, QueueInfo] = {q: QueueInfo(name=q) for q in self.conn.settings.worker.queues}

        def info(q: str) -> QueueInfo:
            if q not in out:
                out[q] = QueueInfo(name=q)
            return out[q]

        for priority, queue, pending, ack_pending in await self._consumers():
            qi = info(queue)
            qi.consumers += 1
            qi.backlog[priority] = qi.backlog.get(priority, 0) + pending
            qi.running += ack_pending
        now = self.clock.now()
        stale = max(3 * self.conn.settings.worker.heartbeat_interval, 10.0)
        for w in await self.cluster.workers():
            if now - w.heartbeat_at > stale or w.state == "stopped":
                continue
            for q in w.queues:
                info(q).workers += 1
        for q, flag in (await self.flags.all()).items():
            if flag.paused:  # a resumed flag alone does not make a queue
                qi = info(q)
                qi.paused, qi.paused_by, qi.paused_at, qi.reason = True, flag.by or flag.user, flag.at, flag.reason
        if self.limits_of is not None:
            by_queue = await self.limits_of()
            for q, lim in by_queue.items():
                if q in out or _limited(lim):  # a limit cleared to nothing does not make a queue either
                    info(q).limits = lim
        for qi in out.values():
            for p in PRIORITIES:
                qi.backlog.setdefault(p, 0)
            qi.backlog = {p: qi.backlog[p] for p in PRIORITIES if p in qi.backlog}
        return [out[q] for q in sorted(out)]

    async def _consumers(self) -> list[tuple[str, str, int, int]]:
        """(priority, queue, pending, ack pending) of every work consumer (one request per 256)."""
        prefix = self.names.jobs_root + "."
        rows: list[tuple[str, str, int, int]] = []
        offset = 0
        while True:
            try:
                infos = await self.conn.js.consumers_info(self.names.jobs_stream, offset=offset or None)
            except nats.js.errors.NotFoundError:
                return rows
            for ci in infos:
                subject = ci.config.filter_subject or ""
                if not subject.startswith(prefix):
                    continue
                priority, _, queue = subject[len(prefix):].partition(".")
                if priority in PRIORITIES and queue and is_valid_token(queue):
                    rows.append((priority, queue, ci.num_pending or 0, ci.num_ack_pending or 0))
            if len(infos) < 256:
                return rows
            offset += len(infos)


def _limited(lim: Any) -> bool:
    return any(getattr(lim, f, None) is not None for f in ("rate", "concurrency"))


def _encode(flag: QueuePause) -> bytes:
    return msgspec.msgpack.encode(flag)
