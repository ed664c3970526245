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
from ..states import JobState
from ..where import matches_all, parse_all
from .dlq import DLQ
from .jobs import Jobs, Skipped

if TYPE_CHECKING:
    from ..readmodel import JobsQuery

log = logging.getLogger("chronos.client")

MAX_ERRORS = 20  # failures kept with their message in the report (all are counted)


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
        """``concurrency`` actions in flight, fed page by page; stop: no new ones, in-flight finish."""
        t0 = time.monotonic()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=concurrency * 4)
        stop = stop or asyncio.Event()

        async def feed() -> None:
            try:
                async for ids in pages:
                    for job_id in ids:
                        if stop.is_set():
                            return
                        await queue.put(job_id)
                    if stop.is_set():
                        return
            finally:
                for _ in range(concurrency):
                    await queue.put(None)

        async def work() -> None:
            while True:
                job_id = await queue.get()
                if job_id is None:
                    return
                if stop.is_set():
                    continue  # drained, not started
                try:
                    await act(job_id)
                    report.done += 1
                except (ConflictError, NotFoundError):  # Skipped, "is running already", gone
                    report.skipped += 1
                except ChronosError as exc:
                    if type(exc) is ChronosError:  # the single action's refusal by state ("already ...")
                        report.skipped += 1
                    else:
                        report.failed += 1
                        if len(report.errors) < MAX_ERRORS:
                            report.errors.append(BulkFailure(job_id=job_id, error=str(exc)))
                if progress is not None:
                    progress(report)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed(), name="bulk-feed")
            for i in range(concurrency):
                tg.create_task(work(), name=f"bulk-work-{i}")
        report.interrupted = stop.is_set()
        report.seconds = round(time.monotonic() - t0, 3)
        return report
