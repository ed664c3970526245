"""Limits from the client: a queue's rate and concurrency (operator settings), and a snapshot of
every limit in force (who holds which slot, how many wait, the current rate).

Task limits are declared in code (``@chronos.task(rate_limit=..., concurrency=..., limit_key=...)``)
and enforced by workers; queue limits are set here, stored in the queues bucket and picked up
live by every worker's watch. Each change is written to the audit stream first; if that fails,
nothing changes.
"""

from __future__ import annotations

from typing import Any

from .. import audit, cas
from ..clock import Clock
from ..connection import Connection
from ..errors import ValidationError
from ..limits import LimitError, LimitsSnapshot, QueueLimit, check_concurrency, key_of, parse_rate
from ..limitstore import LimitStore
from ..subjects import is_valid_token
from ..worker.registry import local_task


def check_limit_key(task: str, args: Any) -> None:
    """A submit by name of a task registered in this process with a per-key limit: its key must be
    in ``args`` (ValidationError naming ``limit_key``, as a handle's submit says). A task known here
    only by name is checked by the worker, which discards such a job once."""
    d = local_task(task)
    limits = d.limits if d is not None else None
    if limits is not None and limits.key is not None:
        try:
            key_of(args, limits.key)
        except LimitError as exc:
            raise ValidationError(f"task {task}: {exc}") from None


class _Keep:
    """The default of ``set_queue_limit``'s fields: leave this field as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


def _queue(queue: object) -> str:
    if not isinstance(queue, str) or not is_valid_token(queue):
        raise ValidationError(f"queue: {queue!r} is not a valid queue name (1-64 letters, digits, '_' or '-')")
    return queue


class Limits:
    def __init__(self, conn: Connection, clock: Clock) -> None:
        self.conn = conn
        self.clock = clock
        self.store = LimitStore(conn, clock)

    async def set_queue_limit(self, queue: str, *, rate: str | None = KEEP, burst: int = KEEP,
                              concurrency: int | None = KEEP) -> QueueLimit | None:
        """Set a queue's limits, fleet-wide and live: ``rate`` "50/s" | "600/m" | "1000/h" (None removes
        it), ``burst`` (starts allowed back to back, default 1), ``concurrency`` (None removes it).
        A field not given keeps its value. Returns the queue's limits now (None: it has none).
        A malformed value raises ValidationError naming the field; nothing is written."""
        _queue(queue)
        if rate is not KEEP and rate is not None:
            parse_rate(rate, "rate", None if burst is KEEP else burst)
        elif burst is not KEEP:
            parse_rate("1/s", "rate", burst)
        if concurrency is not KEEP and concurrency is not None:
            check_concurrency(concurrency)
        await audit.record(self.conn, "queue_limit", queue,
                           reason=_describe(rate=rate, burst=burst, concurrency=concurrency))
        now = self.clock.now()
        by = audit.login()

        def decide(current: QueueLimit | None, _rev: int) -> QueueLimit:
            old = current or QueueLimit(queue=queue)
            new_rate = old.rate if rate is KEEP else (parse_rate(rate, "rate").text().split(" ")[0] if rate else None)
            return QueueLimit(queue=queue, rate=new_rate, burst=old.burst if burst is KEEP else burst,
                              concurrency=old.concurrency if concurrency is KEEP else concurrency,
                              updated_at=now, updated_by=by)

        async def write(new: QueueLimit, rev: int) -> QueueLimit | None:
            await self.store.put_queue_limit(new, rev)
            return new if (new.rate is not None or new.concurrency is not None) else None

        return await cas.update(lambda: self.store.queue_limit(queue), decide, write, what=f"queue {queue} limits")

    async def clear_queue_limit(self, queue: str) -> None:
        """Remove every limit of ``queue``."""
        await self.set_queue_limit(queue, rate=None, concurrency=None)

    async def queue_limit(self, queue: str) -> QueueLimit | None:
        """The queue's limits, or None if it has none."""
        return (await self.store.queue_limit(_queue(queue)))[0]

    async def queue_limits(self) -> dict[str, QueueLimit]:
        """Every queue's limits, by queue name."""
        return {q.queue: q for q in await self.store.queue_limits()}

    async def limits(self, top: int = 200) -> LimitsSnapshot:
        """The limits with live state, the ``top`` most waited on (``omitted`` counts the rest):
        concurrency holders (job, worker, since, expires), how many wait, rate limits' current rate
        and reserved turns; and every queue's settings. Bounded with many keys (docs/concurrency-limits.md)."""
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise ValidationError(f"top: must be a whole number of at least 1, not {top!r}")
        return await self.store.snapshot(top=top)


def _describe(**fields: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in fields.items() if v is not KEEP) or "unchanged"
