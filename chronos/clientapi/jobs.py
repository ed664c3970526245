"""Jobs by id: read, list, count, wait, watch, and the operator's cancel, retry and run-now.

Every state change goes through ``states.transition`` and is persisted with compare-and-set
(via JobOps); the operator actions are audited (chronos/audit.py) before they act.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

import nats.js.errors
from nats.js import api

from .. import codec
from ..audit import audited
from ..clock import Clock
from ..connection import Connection
from ..errors import ChronosError, ConflictError, ConnectionFailedError, JobNotFoundError, ValidationError
from ..events import EventPublisher, decode_events
from ..jobs import JobOps, job_event
from ..models import CancelRequest, Event, JobPage, JobRecord
from ..publisher import is_transient
from ..states import PENDING, RETRIABLE_BY_HAND, TERMINAL, JobState
from ..subjects import is_valid_token

if TYPE_CHECKING:  # readmodel loads aiosqlite: imported where used, so the CLI starts without it
    from ..readmodel import Counts

log = logging.getLogger("chronos.client")

# Seconds of failed reads in a row after which a waiter gives the server up (a restart takes a few).
LOST_AFTER = 15.0

class Skipped(ConflictError):
    """The job no longer matches what a bulk action selected (its state changed meanwhile)."""


Expect = Callable[[JobRecord], bool] | None


def _check(job_id: str, rec: JobRecord, expect: Expect) -> None:
    # Inside the compare-and-set's decide: the filter and the write see the same revision.
    if expect is not None and not expect(rec):
        raise Skipped(f"job {job_id} is {rec.state} now and no longer matches; skipped")


class Jobs:
    def __init__(self, conn: Connection, clock: Clock, ops: JobOps, events: EventPublisher) -> None:
        self.conn = conn
        self.settings = conn.settings
        self.names = conn.names
        self.clock = clock
        self.ops = ops
        self.events = events

    async def get(self, job_id: str) -> JobRecord:
        return await self.ops.read(job_id)

    async def counts(self, *, fallback: bool = True, timeout: float = 5.0) -> Counts | None:
        """Records per state and per queue (a ``readmodel.Counts``), from a scheduler's job index
        without reading records; when no index answers, from a scan (or None without ``fallback``)."""
        from ..listing import job_counts

        return await job_counts(self.conn, self.ops, fallback=fallback, timeout=timeout)

    async def wait(self, job_id: str, timeout: float | None = None,
                   on_update: Callable[[JobRecord], None] | None = None) -> JobRecord:
        """Wait until the job reaches a terminal state (or ``timeout`` seconds pass); ``on_update``
        sees the versions of the record it is shown (its state, its progress), the terminal one
        last. The watch starts from the key's current value, so versions written between two
        reads may be skipped; the terminal record still carries the job's last progress report."""

        def seen(rec: JobRecord) -> JobRecord:
            if on_update is not None:
                on_update(rec)
            return rec

        async def once() -> JobRecord:
            store = await self.ops.store()
            watcher = store.watch(job_id, include_existing=True)
            rec = seen(await self.ops.read(job_id))
            if rec.state in TERMINAL:
                return rec
            async for entry in watcher:
                if entry.key != job_id or entry.value is None:
                    continue
                rec = codec.decode(entry.value, JobRecord)
                rec.revision = entry.revision
                seen(rec)
                if rec.state in TERMINAL:
                    return rec
            raise JobNotFoundError(f"job {job_id} disappeared")

        return await asyncio.wait_for(self._riding_restarts(once, f"job {job_id}"), timeout)

    async def _riding_restarts(self, once: Callable[[], Any], what: str) -> Any:
        """Run ``once()`` until it returns, starting it over after a reconnect (nats-py's watch
        notices a restarted server only after missing its heartbeats, about 18 s) and after a read
        cut by the connection. Disconnected, or failing reads, for ``LOST_AFTER`` in a row, the
        server is given up on:
        ConnectionFailedError (exit 3 in the CLI), never a TimeoutError that reads as the caller's
        own (``submit --wait`` said "--wait-timeout: still running" across a server restart)."""
        nc = self.conn.nc
        failing_since: float | None = None
        while True:
            reconnects = nc.stats["reconnects"]
            task = asyncio.ensure_future(once())
            down_since: float | None = None
            try:
                while not task.done() and nc.stats["reconnects"] == reconnects:
                    await asyncio.wait({task}, timeout=0.1)
                    if nc.is_connected:
                        down_since = None
                        continue
                    # A watch waits quietly while the server is away: gone for good, say so.
                    down_since = down_since or time.monotonic()
                    if time.monotonic() - down_since >= LOST_AFTER:
                        raise ConnectionFailedError(f"lost the connection to NATS at {self.conn.settings.nats.url} "
                                                    f"while waiting for {what}")
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if not task.done() or task.cancelled():
                failing_since = None
                continue  # the connection came back: start over on the new one
            exc = task.exception()
            if exc is None:
                return task.result()
            if not is_transient(exc):
                raise exc
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since >= LOST_AFTER:
                raise ConnectionFailedError(f"lost the connection to NATS at {self.conn.settings.nats.url} "
                                            f"while waiting for {what} ({type(exc).__name__})") from None
            await asyncio.sleep(0.25)

    @audited("cancel")  # written to the audit stream first (chronos/audit.py)
    async def cancel(self, job_id: str, reason: str = "cancelled by operator", *, expect: Expect = None) -> JobRecord:
        """Pending jobs are cancelled at once; a running job gets a cancel signal (hard stop after a grace).

        ``expect(record)`` false: ``Skipped`` and nothing written (a bulk action's filter, re-checked)."""
        now = self.clock.now()

        def decide(rec: JobRecord) -> tuple[JobState, dict[str, Any]] | None:
            _check(job_id, rec, expect)
            if rec.state in TERMINAL:
                raise ChronosError(f"job {job_id} is already {rec.state}; nothing to cancel")
            if rec.state in PENDING:
                return JobState.CANCELLED, {"cancel_reason": reason, "error": reason}
            if rec.cancel_requested:
                return None
            return JobState.RUNNING, {"cancel_requested": True, "cancel_reason": reason}

        rec = await self.ops.move_with_retry(job_id, decide)
        # Workers watch these: a running job gets the signal; a pending one is skipped if a
        # worker already holds its message (a worker defers its running write, see executor.py).
        control = await self.ops.control()
        await control.put(self.names.cancel_key(job_id), codec.encode(CancelRequest(job_id, now, reason, rec.gen)))
        if rec.state is not JobState.RUNNING:
            self.events.emit(job_event(rec, message=reason))
        return rec

    @audited("retry")
    async def retry(self, job_id: str, *, expect: Expect = None) -> JobRecord:
        """Run a retryable, cancelled or discarded job again now, with a fresh attempt budget."""

        def decide(rec: JobRecord) -> tuple[JobState, dict[str, Any]]:
            _check(job_id, rec, expect)
            if rec.state not in RETRIABLE_BY_HAND:
                raise ChronosError(
                    f"job {job_id} is {rec.state}; only retryable, cancelled or discarded jobs can be retried"
                )
            return JobState.AVAILABLE, {
                "gen": rec.gen + 1,
                "cancel_requested": False,
                "cancel_reason": None,
                "scheduled_at": self.clock.now(),
            }

        rec = await self.ops.move_and_publish(job_id, decide, "retry")
        self.events.emit(job_event(rec, message="retried by operator"))
        return rec

    @audited("run_now")
    async def run_now(self, job_id: str) -> JobRecord:
        """Promote a scheduled job now; retry a finished one."""
        rec = await self.ops.read(job_id)
        if rec.state is JobState.SCHEDULED:

            def decide(cur: JobRecord) -> tuple[JobState, dict[str, Any]]:
                if cur.state is not JobState.SCHEDULED:
                    raise ChronosError(f"job {job_id} is {cur.state} now, no longer scheduled; nothing to run early")
                return JobState.AVAILABLE, {"scheduled_at": self.clock.now(), "gen": cur.gen + 1}

            rec = await self.ops.move_and_publish(job_id, decide, "run-now")
            self.events.emit(job_event(rec, message="run now by operator"))
            return rec
        return await self.retry(job_id)

    async def watch(
        self,
        *,
        kinds: Sequence[str] | None = None,
        queue: str | None = None,
        job_id: str | None = None,
        history: float | None = None,
    ) -> AsyncIterator[Event]:
        """Live events, optionally starting ``history`` seconds back (from the events stream)."""
        subject = self.names.events_filter("*" if not kinds or len(kinds) > 1 else kinds[0], queue or "*")
        wanted = set(kinds) if kinds else None
        if history:
            start = time.gmtime(self.clock.now() - history)
            sub = await self.conn.js.subscribe(
                subject,
                ordered_consumer=True,
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_TIME,
                    opt_start_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", start),
                ),
            )
        else:
            sub = await self.conn.nc.subscribe(subject)
        try:
            async for msg in sub.messages:
                try:
                    events = decode_events(msg.data)
                except ChronosError:
                    continue
                if history:
                    try:
                        await msg.ack()
                    except Exception:  # ordered consumers need no ack; older servers may refuse it
                        pass
                for ev in events:
                    if wanted is not None and ev.kind not in wanted:
                        continue
                    if job_id is not None and ev.job_id != job_id:
                        continue
                    yield ev
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection gone; nothing to release
                log.debug("unsubscribe failed: %s", exc)

    # --- job-id prefixes (for the CLI) ----------------------------------------------------------
    async def resolve_job_id(self, prefix: str) -> str:
        """The job id that ``prefix`` is, or uniquely starts (as git and docker take id prefixes).

        An exact id wins. Otherwise the jobs bucket's keys are listed with headers only (no
        record is read or decoded) and filtered by the prefix. Ambiguous: a ValidationError
        naming a few candidates; none: JobNotFoundError.
        """
        if not isinstance(prefix, str) or not prefix or not is_valid_token(prefix):
            raise ValidationError(f"job id: {prefix!r} is not a job id (letters, digits, '-' and '_')")
        if await self.ops.read_or_none(prefix) is not None:
            return prefix
        matches = await self._job_ids_starting(prefix)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise JobNotFoundError(f"no job with id {prefix}" if len(prefix) >= 28 else f"no job id starts with {prefix!r}")
        shown = ", ".join(matches[:4]) + (f" and {len(matches) - 4} more" if len(matches) > 4 else "")
        raise ValidationError(f"job id prefix {prefix!r} is ambiguous: {len(matches)} jobs match ({shown})")

    async def _job_ids_starting(self, prefix: str) -> list[str]:
        """Live keys of the jobs bucket that start with ``prefix``: one headers-only ordered consumer."""
        bucket = self.names.jobs_bucket
        root = f"$KV.{bucket}."
        try:
            sub = await self.conn.js.subscribe(
                root + ">", stream=self.names.kv_stream(bucket), ordered_consumer=True, headers_only=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=60.0,
            )
        except nats.js.errors.NotFoundError:
            return []
        found: set[str] = set()
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return []
            async for msg in sub.messages:
                key = msg.subject[len(root):]
                headers = msg.headers or {}
                deleted = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
                if key.startswith(prefix):
                    (found.discard if deleted else found.add)(key)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                log.debug("job id listing unsubscribe: %s", exc)
        return sorted(found)

    # --- listing (last: below it, ``list`` in this class body would name the method) ------------
    async def list(
        self,
        *,
        state: str | JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        tag: str | None = None,
        offset: int = 0,
        limit: int = 50,
        states: Sequence[str | JobState] | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        where: Sequence[str] | None = None,
        budget: float = 2.0,
    ) -> JobPage:
        """Jobs in the KV, newest created first, filtered and paged. (The archive holds older ones.)

        ``states``: any of several states; ``since``/``until``: created time; ``cursor``: the
        ``next`` of the previous page. A scheduler's job index answers (a page costs the same at a
        million jobs); the records shown are read from the KV. See chronos/listing.py.

        ``where``: JSON-path filters on args and annotations (chronos/where.py), ANDed. Such a
        page may come back short with a ``next`` when ``budget`` seconds of searching run out.
        """
        q = self.query(state=state, states=states, queue=queue, task=task, tag=tag, since=since, until=until,
                       cursor=cursor, where=where, offset=offset, limit=limit)
        from ..listing import list_jobs

        return await list_jobs(self.conn, self.ops, q, limit, budget=budget)

    def query(
        self,
        *,
        state: str | JobState | None = None,
        states: Sequence[str | JobState] | None = None,
        queue: str | None = None,
        task: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        where: Sequence[str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Any:
        """The checked ``readmodel.JobsQuery`` of a listing's filters (a ValidationError names a bad one)."""
        from ..readmodel import JobsQuery, validate_jobs_query

        wanted = [state] if state is not None else list(states or [])
        try:
            names = [JobState(s).value for s in wanted]
        except ValueError:
            bad = next(s for s in wanted if s not in {j.value for j in JobState})
            raise ValidationError(f"state: {bad!r} is not one of {', '.join(s.value for s in JobState)}") from None
        if offset < 0 or limit < 1:
            raise ValidationError("offset must be >= 0 and limit >= 1")
        q = JobsQuery(states=names, queue=queue, task=task, tag=tag, since=since, until=until, cursor=cursor,
                      offset=offset, limit=1, where=list(where or []))
        validate_jobs_query(q)
        return q
