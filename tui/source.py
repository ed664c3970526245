"""Source: everything the console reads from and does to chronos, as one narrow protocol.

``ClientSource`` is the live implementation over a Client (and chronos.console);
tests pass a fake with fixed data. Only feeds.py calls a Source.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from chronos import console
from chronos.client import Client
from chronos.clock import Clock
from chronos.config import Settings
from chronos.errors import ChronosError, NotFoundError, ValidationError
from chronos.models import DLQEntry, Event, JobRecord
from chronos.console import Counts

LOCAL_WINDOW = 2000  # jobs a free-text filter or a sort other than by creation looks through
WHERE_BUDGET = 0.5  # seconds a --where page may search (a short page then; the jobs view reloads)

from .data import (
    FAILED_STATES,
    SORT_KEYS,
    Cluster,
    JobDetail,
    JobQuery,
    JobsPage,
    ScheduleRow,
    job_matches,
)


class Source(Protocol):
    clock: Clock

    def connected(self) -> bool: ...
    async def events(self) -> AsyncIterator[list[Event]]:
        """Subscribe now; then the iterator yields live lifecycle events in batches as they arrive."""
        ...
    async def records(self) -> list[JobRecord]: ...
    async def cluster(self) -> Cluster: ...
    async def jobs(self, query: JobQuery) -> JobsPage: ...
    async def job(self, job_id: str) -> JobDetail: ...
    async def schedules(self) -> list[ScheduleRow]: ...
    async def dlq(self) -> list[DLQEntry]: ...
    # actions
    async def retry(self, job_id: str) -> JobRecord: ...
    async def cancel(self, job_id: str) -> JobRecord: ...
    async def run_now(self, job_id: str) -> JobRecord: ...
    async def pause_schedule(self, name: str) -> object: ...
    async def resume_schedule(self, name: str) -> object: ...
    async def run_schedule(self, name: str) -> str: ...
    async def dlq_replay(self, seq: int) -> JobRecord: ...
    async def dlq_purge(self, task: str | None = None) -> int: ...
    # every job a filter matches (screens/bulk.py): how many, then the action
    async def bulk_count(self, verb: str, query: JobQuery) -> int: ...
    async def bulk(self, verb: str, query: JobQuery) -> object: ...
    # queues under operator control (clientapi/queues.py, clientapi/limits.py)
    async def queues(self) -> list[console.QueueInfo]: ...
    async def limits(self) -> console.LimitsSnapshot: ...
    async def pause_queue(self, queue: str, reason: str | None = None) -> object: ...
    async def resume_queue(self, queue: str) -> object: ...
    async def set_queue_concurrency(self, queue: str, concurrency: int | None) -> object: ...
    async def close(self) -> None: ...


class ClientSource:
    """The live Source. ``owns_client``: close the client with the console (it connected it)."""

    def __init__(self, client: Client, *, owns_client: bool = False) -> None:
        self.client = client
        self.clock = client.clock
        self.owns_client = owns_client

    @classmethod
    async def connect(cls, settings: Settings, clock: Clock) -> ClientSource:
        # The console creates nothing (`chronos admin init` does): a mistyped namespace is said, and retried.
        client = await Client.connect(settings, clock=clock, ensure=False)
        try:
            if not await client.namespace_exists():
                raise NotFoundError(f"namespace {settings.namespace} has no chronos streams (run chronos admin init)")
        except BaseException:
            await client.close()
            raise
        return cls(client, owns_client=True)

    def connected(self) -> bool:
        return console.is_connected(self.client)

    async def events(self) -> AsyncIterator[list[Event]]:
        return await console.event_batches(self.client)

    async def records(self) -> list[JobRecord]:
        return await console.all_records(self.client)

    async def cluster(self) -> Cluster:
        c = self.client
        consumers, workers, leader, dlq = await asyncio.gather(
            console.consumers(c), c.workers(), console.leader(c), console.dlq_depths(c))
        return Cluster(at=self.clock.now(), consumers=tuple(consumers), workers=tuple(workers),
                       leader=leader, dlq=dlq)

    async def jobs(self, query: JobQuery) -> JobsPage:
        if query.archive:
            try:
                recs = await self.client.history(
                    task=query.task, state=None if query.state == "failed" else query.state,
                    queue=query.queue, text=query.text or None, limit=query.offset + query.limit * 10)
            except (TimeoutError, ImportError, ChronosError) as exc:
                return JobsPage(query, (), 0, error=f"archive unavailable: {exc or type(exc).__name__}")
        else:
            states = list(FAILED_STATES) if query.state == "failed" else [query.state] if query.state else None
            if query.sort == "created" and query.descending and not query.text:
                # The index's own order: one page, whatever the number of jobs (chronos/listing.py).
                page = await self.client.list(states=states, queue=query.queue, task=query.task, tag=query.tag,
                                              offset=query.offset, limit=query.limit, where=list(query.where),
                                              budget=WHERE_BUDGET)
                return JobsPage(query, tuple(page.jobs), page.total)
            # Free text or another order: the newest LOCAL_WINDOW matches of the indexed filters, here.
            page = await self.client.list(states=states, queue=query.queue, task=query.task, tag=query.tag,
                                          limit=LOCAL_WINDOW, where=list(query.where), budget=WHERE_BUDGET)
            recs = page.jobs
        recs = [r for r in recs if job_matches(r, query)]
        recs.sort(key=SORT_KEYS.get(query.sort, SORT_KEYS["created"]), reverse=query.descending)
        return JobsPage(query, tuple(recs[query.offset : query.offset + query.limit]), len(recs))

    async def counts(self) -> Counts | None:
        """Counts from a scheduler's job index; None when no index answers (then the feed counts records)."""
        return await self.client.counts(fallback=False, timeout=2.0)

    async def job(self, job_id: str) -> JobDetail:
        rec = await self.client.get(job_id)
        timeline = await console.job_timeline(self.client, rec)
        entry = None
        if str(rec.state) == "discarded":
            try:
                entry = await self.client.dlq_get(job_id)
            except NotFoundError:
                entry = None
        return JobDetail(rec, tuple(timeline), entry)

    async def schedules(self) -> list[ScheduleRow]:
        now = self.clock.now()
        out = []
        for s in await self.client.list_schedules():
            try:
                timing = console.describe_timing(s)
            except ChronosError as exc:
                timing = f"invalid: {exc}"
            last = await console.last_outcome(self.client, s)
            out.append(ScheduleRow(s, timing, console.next_fire(s, now), str(last) if last else None))
        return out

    async def dlq(self) -> list[DLQEntry]:
        return await self.client.dlq_list()

    async def retry(self, job_id: str) -> JobRecord:
        return await self.client.retry(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        return await self.client.cancel(job_id, reason="cancelled from the console")

    async def run_now(self, job_id: str) -> JobRecord:
        return await self.client.run_now(job_id)

    async def pause_schedule(self, name: str) -> object:
        return await self.client.pause_schedule(name)

    async def resume_schedule(self, name: str) -> object:
        return await self.client.resume_schedule(name)

    async def run_schedule(self, name: str) -> str:
        return await console.run_schedule_now(self.client, name)

    async def dlq_replay(self, seq: int) -> JobRecord:
        return await self.client.dlq_replay(seq)

    async def dlq_purge(self, task: str | None = None) -> int:
        return await self.client.dlq_purge(task=task)

    def _bulk_query(self, verb: str, query: JobQuery) -> object:
        """The index query of the jobs view's filter, for ``verb``: states it can act on only."""
        from chronos.states import RETRIABLE_BY_HAND, TERMINAL, JobState

        allowed = [s.value for s in JobState if (s not in TERMINAL if verb == "cancel" else s in RETRIABLE_BY_HAND)]
        asked = list(FAILED_STATES) if query.state == "failed" else [query.state] if query.state else allowed
        states = [s for s in asked if s in allowed]
        if not states:
            raise ValidationError(f"{query.state} jobs cannot be {'cancelled' if verb == 'cancel' else 'retried'}")
        return self.client.jobs.query(states=states, queue=query.queue, task=query.task, tag=query.tag,
                                      where=list(query.where))

    async def bulk_count(self, verb: str, query: JobQuery) -> int:
        from chronos.clientapi.bulk import Bulk

        n, _ = await Bulk.of(self.client).count(self._bulk_query(verb, query), budget=10.0)
        return n

    async def bulk(self, verb: str, query: JobQuery) -> object:
        from chronos.clientapi.bulk import Bulk

        bulk = Bulk.of(self.client)
        q = self._bulk_query(verb, query)
        n, _ = await bulk.count(q)
        if verb == "cancel":
            return await bulk.cancel_all(q, matched=n, reason="cancelled from the console (bulk)")
        return await bulk.retry_all(q, matched=n)

    async def queues(self) -> list[console.QueueInfo]:
        return await self.client.queues()

    async def limits(self) -> console.LimitsSnapshot:
        return await self.client.limits()

    async def pause_queue(self, queue: str, reason: str | None = None) -> object:
        return await self.client.pause_queue(queue, reason=reason)

    async def resume_queue(self, queue: str) -> object:
        return await self.client.resume_queue(queue)

    async def set_queue_concurrency(self, queue: str, concurrency: int | None) -> object:
        return await self.client.set_queue_limit(queue, concurrency=concurrency)

    async def close(self) -> None:
        if self.owns_client:
            await self.client.close()
