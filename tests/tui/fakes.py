"""A Source with fixed data, for snapshot tests: no server, no randomness, a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from chronos.clock import FakeClock
from chronos.console import ConsumerStat
from chronos.leadership import LeaderInfo
from chronos.models import (
    Attempt,
    DLQEntry,
    Event,
    JobRecord,
    JobSpec,
    RunningJob,
    Schedule,
    WorkerHeartbeat,
)
from chronos.states import JobState
from chronos.tui.data import (
    SORT_KEYS,
    Cluster,
    JobDetail,
    JobQuery,
    JobsPage,
    ScheduleRow,
    job_matches,
)

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
NOW = T0 + 600

TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/tasks.py", line 42, in send_invoice
    pdf = render(invoice)
  File "/srv/app/render.py", line 7, in render
    raise ValueError("template 'invoice.html' not found")
ValueError: template 'invoice.html' not found
"""


def _rec(i: int, task: str, state: JobState, *, queue: str = "default", priority: str = "default",
         error: str | None = None, attempts: int = 1, result: Any = None) -> JobRecord:
    created = T0 + i * 7
    spec = JobSpec(task=task, args={"n": i}, queue=queue, priority=priority, max_attempts=3, tags=["demo"])
    tries = []
    for n in range(1, attempts + 1):
        start = created + n * 2
        if state is JobState.RUNNING and n == attempts:
            tries.append(Attempt(number=n, started_at=start, worker="w-1"))
        elif state is JobState.COMPLETED and n == attempts:
            tries.append(Attempt(number=n, started_at=start, worker="w-1", ended_at=start + 0.25,
                                 outcome="completed"))
        else:
            tries.append(Attempt(number=n, started_at=start, worker="w-1", ended_at=start + 0.5, outcome="error",
                                 error=error, traceback=TRACEBACK if error == ERR else None))
    finished = created + 30 if state in (JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED) else None
    return JobRecord(id=f"job{i:04d}", spec=spec, state=state, created_at=created, updated_at=created + 30,
                     attempt=len(tries), attempts=tries, finished_at=finished, result=result, error=error,
                     worker="w-1" if tries else None, revision=i + 1)


ERR = "ValueError: template 'invoice.html' not found"
RECORDS = [
    _rec(1, "emails.send", JobState.COMPLETED, queue="mail", priority="high", result={"sent": "a@example.com"}),
    _rec(2, "invoices.render", JobState.DISCARDED, error=ERR, attempts=3),
    _rec(3, "emails.send", JobState.RUNNING, queue="mail", priority="high"),
    _rec(4, "reports.build", JobState.RETRYABLE, priority="low", error="TimeoutError: took over 30s"),
    _rec(5, "emails.send", JobState.AVAILABLE, queue="mail", attempts=0),
    _rec(6, "reports.build", JobState.SCHEDULED, priority="low", attempts=0),
    _rec(7, "invoices.render", JobState.COMPLETED, result="ok"),
    _rec(8, "emails.send", JobState.CANCELLED, queue="mail", error="cancelled by operator", attempts=0),
]

SCHEDULES = [
    Schedule(name="nightly-report", task="reports.build", created_at=T0, updated_at=T0, cron="0 3 * * *",
             tz="UTC", anchor=T0, last_fire_time=T0 + 100, last_job_id="job0006"),
    Schedule(name="mail-digest", task="emails.send", created_at=T0, updated_at=T0, every=300.0, anchor=T0,
             queue="mail", last_fire_time=T0 + 300, last_job_id="job0001"),
    Schedule(name="cleanup", task="invoices.render", created_at=T0, updated_at=T0, every=3600.0, anchor=T0,
             paused=True, last_fire_time=T0, last_job_id="job0002"),
]

DLQ = [
    DLQEntry(reason="attempts exhausted (3/3): " + ERR, at=T0 + 44, job_id="job0002",
             spec=RECORDS[1].spec, traceback=TRACEBACK, attempts=3, subject="chronos.dlq.default", seq=1),
    DLQEntry(reason="malformed message: not msgpack", at=T0 + 90, raw=b"\x00garbage", subject="chronos.dlq.default",
             seq=2),
]


class FakeSource:
    """Fixed data; actions are recorded (and change nothing) so tests can check what was asked."""

    EVENTS = len(RECORDS) + sum((sec * 7) % 11 for sec in range(60)) + len(range(0, 60, 13))

    def __init__(self, clock: FakeClock | None = None, *, connected: bool = True) -> None:
        self.clock = clock or FakeClock(NOW)
        self._connected = connected
        self.calls: list[tuple[str, Any]] = []

    def connected(self) -> bool:
        return self._connected

    async def events(self) -> AsyncIterator[list[Event]]:
        return self._events()

    async def _events(self) -> AsyncIterator[list[Event]]:
        for r in RECORDS:
            yield [Event(kind=str(r.state), at=r.updated_at, job_id=r.id, task=r.spec.task, queue=r.spec.queue,
                        priority=r.spec.priority, attempt=r.attempt, error=r.error)]
        # a minute of throughput for the sparklines: a fixed, varied pattern
        for sec in range(60):
            at = NOW - 60 + sec
            yield [Event(kind="completed", at=at, job_id=f"spark{sec:02d}{j:02d}", task="emails.send",
                         queue="mail", priority="high") for j in range((sec * 7) % 11)]
            if sec % 13 == 0:
                yield [Event(kind="retryable", at=at, job_id=f"sparkf{sec:02d}", task="reports.build",
                             queue="default", priority="low", error="TimeoutError: took over 30s")]
        await asyncio.Event().wait()  # then nothing more, forever

    async def records(self) -> list[JobRecord]:
        return list(RECORDS)

    async def cluster(self) -> Cluster:
        consumers = (
            ConsumerStat("high", "mail", pending=1, ack_pending=1, max_ack_pending=-1, waiting=1, redelivered=0),
            ConsumerStat("default", "default", pending=0, ack_pending=4, max_ack_pending=4, waiting=0,
                         redelivered=2),
            ConsumerStat("low", "default", pending=0, ack_pending=1, max_ack_pending=-1, waiting=1, redelivered=1),
        )
        workers = (
            WorkerHeartbeat(id="w-1", host="app-1", pid=4242, queues=["default", "mail"], slots_total=16,
                            slots_used=2, started_at=T0, heartbeat_at=NOW - 1.5,
                            running=[RunningJob(id="job0003", task="emails.send", started_at=NOW - 20,
                                                progress_at=NOW - 2)], processed=120, failed=3),
            WorkerHeartbeat(id="w-2", host="app-2", pid=777, queues=["default"], slots_total=8, slots_used=0,
                            started_at=T0, heartbeat_at=NOW - 45, processed=40, failed=0),
        )
        leader = LeaderInfo(node="sched-a", host="app-1", pid=4100, acquired_at=T0, term=17, revision=230,
                            ttl=5.0, expires_in=3.5)
        return Cluster(at=self.clock.now(), consumers=consumers, workers=workers, leader=leader,
                       dlq={"default": 2})

    async def jobs(self, query: JobQuery) -> JobsPage:
        recs = [r for r in RECORDS if job_matches(r, query)]
        recs.sort(key=SORT_KEYS[query.sort], reverse=query.descending)
        return JobsPage(query, tuple(recs[query.offset : query.offset + query.limit]), len(recs))

    async def job(self, job_id: str) -> JobDetail:
        rec = next(r for r in RECORDS if r.id == job_id)
        timeline = tuple(Event(kind=k, at=rec.created_at + i * 2, job_id=rec.id, task=rec.spec.task,
                               queue=rec.spec.queue, attempt=max(0, i), error=ERR if k == "retryable" else None)
                         for i, k in enumerate(["available", "running", "retryable", "running", "retryable",
                                                "running", "discarded"]))
        return JobDetail(rec, timeline if rec.id == "job0002" else (), DLQ[0] if rec.id == "job0002" else None)

    async def schedules(self) -> list[ScheduleRow]:
        nexts = {"nightly-report": T0 + 3 * 3600, "mail-digest": T0 + 900, "cleanup": None}
        states = {"job0006": "scheduled", "job0001": "completed", "job0002": "discarded"}
        timing = {"nightly-report": "cron '0 3 * * *' (UTC)", "mail-digest": "every 5m", "cleanup": "every 1h"}
        return [ScheduleRow(s, timing[s.name], nexts[s.name], states.get(s.last_job_id or "")) for s in SCHEDULES]

    async def dlq(self) -> list[DLQEntry]:
        return list(DLQ)

    async def _record(self, name: str, arg: Any) -> Any:
        self.calls.append((name, arg))
        return next((r for r in RECORDS if r.id == arg), RECORDS[0])

    async def retry(self, job_id: str) -> JobRecord:
        return await self._record("retry", job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        return await self._record("cancel", job_id)

    async def run_now(self, job_id: str) -> JobRecord:
        return await self._record("run_now", job_id)

    async def pause_schedule(self, name: str) -> object:
        return await self._record("pause", name)

    async def resume_schedule(self, name: str) -> object:
        return await self._record("resume", name)

    async def run_schedule(self, name: str) -> str:
        await self._record("run_schedule", name)
        return "job0099"

    async def dlq_replay(self, seq: int) -> JobRecord:
        return await self._record("replay", seq)

    async def dlq_purge(self, task: str | None = None) -> int:
        await self._record("purge", task)
        return 2

    async def close(self) -> None:
        pass
