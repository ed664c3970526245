"""Bulk actions: cancel, retry or replay every job a filter matches, with progress.

::

    count (dry run) -> one audit entry (who, filter, matched) -> ids page by page from the job
    index (keyset cursor) -> N actions in flight, each the single-job code path (compare-and-set
    through states.transition) with the filter re-checked on the record it writes over

Audit: a bulk action writes ONE entry (``bulk_cancel``, ``bulk_retry``, ``bulk_dlq_replay``;
target: the filter; detail: how many matched at the dry run) before it acts, and the per-job
actions inside it are covered by that entry, not written again (a million matches would
otherwise be a million entries). Each job's change still emits its lifecycle event.

A job whose record no longer matches when its turn comes (it finished, started, was cancelled by
someone else) is skipped and counted, never an error. ``stop`` set (Ctrl-C): no new action
starts, those in flight finish, and the report says ``interrupted``. Re-running the same command
resumes: what was done no longer matches.

The connection lost (disconnected for ``LOST_AFTER`` seconds, or an action failing for want of a
connection): no new action starts, those in flight are abandoned (counted ``unknown``: each either
landed or not, and a re-run sees which), and the report says ``lost``. One action without a reply
for ``ACTION_TIMEOUT`` seconds on a live connection is abandoned and counted failed, so a single
lost reply never holds the whole run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import msgspec

from ..audit import audited
from ..connection import Connection
from ..errors import ChronosError, ConflictError, NotFoundError
from ..jobs import JobOps
from ..models import DLQEntry, JobRecord
from ..publisher import CONNECTION_ERRORS
from ..states import JobState
from ..where import matches_all, parse_all
from .dlq import DLQ
from .jobs import Jobs, Skipped

if TYPE_CHECKING:
    from ..readmodel import JobsQuery

log = logging.getLogger("chronos.client")

MAX_ERRORS = 20  # failures kept with their message in the report (all are counted)
# One action is a few JetStream requests (10 s timeout each) plus compare-and-set re-reads.
ACTION_TIMEOUT = 30.0
# Disconnected this long: the run ends (nats-py reconnects for ever; a short blip is ridden out).
LOST_AFTER = 5.0


class BulkFailure(msgspec.Struct):
    job_id: str
    error: str


class BulkReport(msgspec.Struct):
    """What a bulk action did; the `--json` output of the CLI's bulk commands."""

    action: str
    filter: str
    matched: int  # at the dry run
    done: int = 0
    skipped: int = 0  # no longer matched, or gone, when its turn came
    failed: int = 0
    errors: list[BulkFailure] = msgspec.field(default_factory=list)
    interrupted: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    unknown: int = 0  # in flight when the connection was lost: landed or not, a re-run sees which
    lost: str = ""  # why the run ended early for want of the server ("" = it did not)

    @property
    def handled(self) -> int:
        return self.done + self.skipped + self.failed


Progress = Callable[[BulkReport], None] | None


def describe_query(q: JobsQuery) -> str:
    """The filter as one line (the audit entry's target, the confirmation prompt)."""
    parts = []
    if q.states:
        parts.append("state=" + ",".join(q.states))
    for name in ("queue", "task", "tag"):
        if getattr(q, name) is not None:
            parts.append(f"{name}={getattr(q, name)}")
    if q.since is not None:
        parts.append(f"since={q.since:.0f}")
    if q.until is not None:
        parts.append(f"until={q.until:.0f}")
    parts += q.where
    return " AND ".join(parts) or "everything"


class Bulk:
    def __init__(self, conn: Connection, ops: JobOps, jobs: Jobs, dlq: DLQ) -> None:
        self.conn = conn
        self.names = conn.names
        self.ops = ops
        self.jobs = jobs
        self.dlq = dlq

    @classmethod
    def of(cls, client: Any) -> Bulk:
        return cls(client.conn, client.ops, client.jobs, client.dlq)

    # --- jobs from the index ----------------------------------------------------------------
    async def count(self, q: JobsQuery, budget: float = 60.0) -> tuple[int, bool]:
        """Dry run: how many jobs match now (and whether the count finished inside ``budget``)."""
        from ..listing import count_matches

        return await count_matches(self.conn, self.ops, q, budget)

    async def cancel_all(self, q: JobsQuery, *, matched: int, reason: str = "cancelled by operator (bulk)",
                         concurrency: int = 32, progress: Progress = None,
                         stop: asyncio.Event | None = None) -> BulkReport:
        from ..readmodel import record_matches

        report = BulkReport(action="cancel", filter=describe_query(q), matched=matched)

        async def act(job_id: str) -> None:
            await self.jobs.cancel(job_id, reason, expect=lambda rec: record_matches(rec, q))

        async def body() -> BulkReport:
            return await self._run(report, self._index_ids(q), act, concurrency, progress, stop)

        return await self._cancel_audited(report.filter, matched=matched, reason=reason, body=body)

    async def retry_all(self, q: JobsQuery, *, matched: int, concurrency: int = 32, progress: Progress = None,
                        stop: asyncio.Event | None = None) -> BulkReport:
        """Retry every match; a discarded job's DLQ entries go, as a single retry's do (one DLQ read for all)."""
        from ..readmodel import record_matches

        report = BulkReport(action="retry", filter=describe_query(q), matched=matched)
        dead: dict[str, list[int]] = {}

        async def act(job_id: str) -> None:
            was: list[JobState] = []

            def expect(rec: JobRecord) -> bool:
                was[:] = [rec.state]
                return record_matches(rec, q)

            rec = await self.jobs.retry(job_id, expect=expect)
            # Sequences read before the retry: a new failure's entry stays.
            if was and was[0] is JobState.DISCARDED and dead.get(rec.id):
                await self.dlq.dlq_forget(rec.id, dead[rec.id])

        async def body() -> BulkReport:
            if not q.states or JobState.DISCARDED.value in q.states:
                for seq, job_id, _ in await self.dlq._dlq_scan(self.names.dlq_wildcard(), headers_only=True):
                    if job_id is not None:
                        dead.setdefault(job_id, []).append(seq)
            return await self._run(report, self._index_ids(q), act, concurrency, progress, stop)

        return await self._retry_audited(report.filter, matched=matched, body=body)

    async def _index_ids(self, q: JobsQuery) -> Any:
        from ..listing import match_ids

        async for ids in match_ids(self.conn, self.ops, q):
            yield ids

    # --- the DLQ ---------------------------------------------------------------------------------
    async def dlq_matches(self, *, where: list[str] | None = None, task: str | None = None,
                          queue: str | None = None) -> list[DLQEntry]:
        """Live DLQ entries (the newest per job) of ``task``/``queue`` whose spec matches ``where``."""
        filters = parse_all(where)
        entries = await self.dlq.dlq_list(task=task, queue=queue, limit=10**9)
        return [e for e in entries
                if not filters or (e.spec is not None and matches_all(filters, e.spec.args, e.spec.annotations))]

    async def replay_all(self, entries: list[DLQEntry], *, filter_text: str, concurrency: int = 16,
                         progress: Progress = None, stop: asyncio.Event | None = None) -> BulkReport:
        report = BulkReport(action="dlq_replay", filter=filter_text, matched=len(entries))
        by_seq = {e.seq: e for e in entries}
        seqs: dict[str, list[int]] = {}

        async def act(seq: str) -> None:
            entry = by_seq[int(seq)]
            if entry.job_id is not None and seqs.get(entry.job_id, [])[-1:] != [entry.seq]:
                raise Skipped(f"DLQ entry {entry.seq} was replayed or superseded meanwhile")
            await self.dlq.dlq_replay(entry.seq, known=(entry, seqs.get(entry.job_id or "", [])))

        async def ids() -> Any:
            for start in range(0, len(entries), 500):
                yield [str(e.seq) for e in entries[start:start + 500]]

        async def body() -> BulkReport:
            # One headers-only read of the DLQ for every entry's job (a single replay reads it each time).
            for seq, job_id, _ in await self.dlq._dlq_scan(self.names.dlq_wildcard(), headers_only=True):
                if job_id is not None:
                    seqs.setdefault(job_id, []).append(seq)
            return await self._run(report, ids(), act, concurrency, progress, stop)

        return await self._replay_audited(filter_text, matched=len(entries), body=body)

    # --- one audit entry per bulk action (the per-job actions run inside it, unaudited) -------------
    @audited("bulk_cancel")
    async def _cancel_audited(self, target: str, *, matched: int, reason: str,
                              body: Callable[[], Awaitable[BulkReport]]) -> BulkReport:
        return await body()

    @audited("bulk_retry")
    async def _retry_audited(self, target: str, *, matched: int,
                             body: Callable[[], Awaitable[BulkReport]]) -> BulkReport:
        return await body()

    @audited("bulk_dlq_replay")
    async def _replay_audited(self, target: str, *, matched: int,
                              body: Callable[[], Awaitable[BulkReport]]) -> BulkReport:
        return await body()

    # --- the pipeline --------------------------------------------------------------------------------
    async def _run(self, report: BulkReport, pages: Any, act: Callable[[str], Awaitable[None]], concurrency: int,
                   progress: Progress, stop: asyncio.Event | None) -> BulkReport:
        """``concurrency`` actions in flight, fed page by page; stop: no new ones, in-flight finish.

        Never raises for one action's error (each is counted); the connection lost ends the run
        with ``report.lost`` set; an error reading the ids is raised as itself, once, with the
        report so far as its ``bulk_report``."""
        t0 = time.monotonic()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=concurrency * 4)
        stop = stop or asyncio.Event()
        lost = asyncio.Event()
        nc = self.conn.nc
        url = self.conn.settings.nats.url
        in_flight: set[asyncio.Task[None]] = set()
        feed_error: list[BaseException] = []

        def connection_lost(why: str) -> None:
            if not lost.is_set():
                report.lost = f"lost the connection to NATS at {url} ({why})"
                log.info("bulk %s: %s", report.action, report.lost)  # the caller reports it, once
                lost.set()
                for t in in_flight:  # waiting on a server that is gone: abandon, do not wait
                    t.cancel()

        def for_want_of_connection(exc: BaseException) -> bool:
            # A timeout counts only while disconnected.
            return isinstance(exc, CONNECTION_ERRORS) and not nc.is_connected

        async def feed() -> None:
            try:
                async for ids in pages:
                    for job_id in ids:
                        if stop.is_set() or lost.is_set():
                            return
                        await queue.put(job_id)
                    if stop.is_set() or lost.is_set():
                        return
            except Exception as exc:
                if not nc.is_connected:  # whatever the index read raised, the cause is the connection
                    connection_lost(f"reading the matching jobs: {type(exc).__name__}")
                else:
                    feed_error.append(exc)
            finally:
                for _ in range(concurrency):
                    await queue.put(None)

        async def one(job_id: str) -> None:
            task = asyncio.ensure_future(act(job_id))
            in_flight.add(task)
            try:
                # asyncio.wait, not wait_for: wait_for waits for the cancelled action to end, and
                # one that swallows its cancel (nats-py's own wait_for on 3.11 can) would hang it.
                await asyncio.wait({task}, timeout=ACTION_TIMEOUT)
            finally:
                in_flight.discard(task)
            if not task.done():
                task.cancel()
                task.add_done_callback(_quiet)
                if not nc.is_connected:
                    report.unknown += 1
                    connection_lost(f"no reply in {ACTION_TIMEOUT:.0f} s")
                    return
                report.failed += 1
                if len(report.errors) < MAX_ERRORS:
                    report.errors.append(BulkFailure(job_id=job_id, error=f"no reply in {ACTION_TIMEOUT:.0f} s"))
                return
            if task.cancelled():  # abandoned when the connection went
                report.unknown += 1
                return
            exc = task.exception()
            if exc is None:
                report.done += 1
            elif isinstance(exc, (ConflictError, NotFoundError)):  # Skipped, "is running already", gone
                report.skipped += 1
            elif type(exc) is ChronosError:  # the single action's refusal by state ("already ...")
                report.skipped += 1
            elif for_want_of_connection(exc):
                report.unknown += 1
                connection_lost(type(exc).__name__)
            else:
                report.failed += 1
                if len(report.errors) < MAX_ERRORS:
                    text = str(exc) if isinstance(exc, ChronosError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
                    report.errors.append(BulkFailure(job_id=job_id, error=text))

        async def work() -> None:
            while True:
                job_id = await queue.get()
                if job_id is None:
                    return
                if stop.is_set() or lost.is_set():
                    continue  # drained, not started
                await one(job_id)
                if progress is not None:
                    progress(report)

        async def watch() -> None:
            """Disconnected for LOST_AFTER seconds on end: the run is over."""
            down_since: float | None = None
            while True:
                await asyncio.sleep(0.2)
                if nc.is_connected:
                    down_since = None
                    continue
                now = time.monotonic()
                down_since = down_since if down_since is not None else now
                if now - down_since >= LOST_AFTER:
                    connection_lost(f"disconnected for {LOST_AFTER:.0f} s")
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(feed(), name="bulk-feed")
                for i in range(concurrency):
                    tg.create_task(work(), name=f"bulk-work-{i}")
        finally:
            watcher.cancel()
        report.interrupted = stop.is_set() and not lost.is_set()
        report.seconds = round(time.monotonic() - t0, 3)
        if feed_error:
            # The report so far travels with the error, so the caller can say how far it got.
            feed_error[0].bulk_report = report  # type: ignore[attr-defined]
            raise feed_error[0]
        return report


def _quiet(task: asyncio.Task[Any]) -> None:
    """An abandoned action's outcome is not waited for; read it so asyncio does not log it."""
    if not task.cancelled():
        task.exception()
