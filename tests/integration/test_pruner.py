"""The pruner: finished records past the retention leave the KV only once this node's archive holds them."""

from __future__ import annotations

import asyncio
import time

import msgspec

from chronos.archive import HistoryQuery
from chronos.scheduler.archiver import Archiver
from chronos.errors import JobNotFoundError
from chronos.jobs import JobOps
from chronos.scheduler.pruner import Pruner
from chronos.states import JobState

from .test_archive import registry
from .test_scheduler import start_scheduler  # noqa: F401  (fixture)


class ShiftedClock:
    """The system clock moved ``ahead`` seconds into the future (the pruner only reads now())."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def now(self) -> float:
        return time.time() + self.ahead

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _archiver_without_events(client, path) -> Archiver:  # type: ignore[no-untyped-def]
    """An archive file with no event consumer: whatever it holds, the pruner put there."""
    archiver = Archiver(client.conn, path=path)
    await archiver.db.open()
    archiver.ready.set()
    return archiver


async def _gone(client, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        await client.get(job_id)
    except JobNotFoundError:
        return True
    return False


async def test_prunes_only_old_finished_jobs_and_archives_them_first(client, start_worker, tmp_path):
    await start_worker(registry())
    old = await client.submit("a.ok", [1])
    failed = await client.submit("a.fail", max_attempts=1)
    assert (await client.wait(old, 15)).state == JobState.COMPLETED
    assert (await client.wait(failed, 15)).state == JobState.DISCARDED
    cutoff = time.time()
    recent = await client.submit("a.ok", [2])
    assert (await client.wait(recent, 15)).state == JobState.COMPLETED
    pending = await client.submit("a.ok", delay=3600)

    archiver = await _archiver_without_events(client, tmp_path / "p.sqlite3")
    try:
        frozen = time.time()
        clock = ShiftedClock(0)
        clock.now = lambda: frozen  # type: ignore[method-assign]  # two passes at the same moment
        pruner = Pruner(JobOps(client.conn), archiver, clock=clock, retention=frozen - cutoff)
        assert await pruner.step() == 2
        assert await _gone(client, old) and await _gone(client, failed)
        assert (await client.get(recent)).state == JobState.COMPLETED
        assert (await client.get(pending)).state == JobState.SCHEDULED
        # Nothing deleted that the archive does not hold in full.
        rows = {r.id: r for r in await archiver.db.query(HistoryQuery())}
        assert set(rows) == {old, failed}
        assert rows[failed].state == JobState.DISCARDED and rows[failed].attempts
        assert await pruner.step() == 0
        # No marker is left behind: a pruned discarded job can be replayed from the DLQ under its id.
        replayed = await client.dlq_replay(failed)
        assert replayed.id == failed
        assert (await client.wait(failed, 15)).state == JobState.DISCARDED
    finally:
        await archiver.db.close()


async def test_a_record_that_moved_after_the_scan_is_not_deleted(client, start_worker, tmp_path):
    await start_worker(registry())
    job = await client.submit("a.fail", max_attempts=1)
    assert (await client.wait(job, 15)).state == JobState.DISCARDED
    archiver = await _archiver_without_events(client, tmp_path / "p.sqlite3")
    real_has = archiver.db.has

    async def has_then_retry(items):  # type: ignore[no-untyped-def]
        held = await real_has(items)
        await client.retry(job)  # an operator retries the job between the scan and the delete
        return held

    archiver.db.has = has_then_retry  # type: ignore[method-assign]
    try:
        pruner = Pruner(JobOps(client.conn), archiver, clock=ShiftedClock(3600), retention=60)
        assert await pruner.step() == 0
        assert (await client.get(job)).gen == 2  # still there, retried
    finally:
        await archiver.db.close()


async def test_the_leader_prunes_on_its_own(client, settings, start_worker, tmp_path):
    from chronos.scheduler import SchedulerService

    await start_worker(registry())
    job = await client.submit("a.ok", [7])
    assert (await client.wait(job, 15)).state == JobState.COMPLETED
    short = msgspec.structs.replace(settings, scheduler=msgspec.structs.replace(settings.scheduler, retention=0.5))
    svc = SchedulerService(short, log_events=False, pruner_tick=0.2, archive_path=str(tmp_path / "l.sqlite3"))
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.leading.wait(), 20)
        assert svc.pruner is not None

        async def pruned() -> None:
            while svc.pruner.pruned < 1:
                await svc.pruner.pruned_event.wait()

        await asyncio.wait_for(pruned(), 20)
        assert await _gone(client, job)
        (rec,) = await client.history()
        assert rec.id == job and rec.result == 7
    finally:
        svc.stop()
        await asyncio.wait_for(task, 15)


async def test_a_follower_does_not_prune(client, start_worker, start_scheduler, tmp_path):  # noqa: F811
    await start_worker(registry())
    await start_scheduler(archive_path=str(tmp_path / "a.sqlite3"))
    b = await start_scheduler(lead=False, archive_path=str(tmp_path / "b.sqlite3"))
    assert not b.service.is_leader
    assert b.service.pruner is None  # leader-only loops are never built on a follower
