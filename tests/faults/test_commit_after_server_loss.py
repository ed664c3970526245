"""A job that has run, whose outcome write is cut by the loss of nats-server, is written once
the server is back: it is not run again, and the worker goes on.

Before, the worker gave the run up when the write's PubAck timed out: it remembered the
attempt and nakked the message, so the job ran a second time (the record said so). The
outcome was known all along; only the write was missing. And a deferred running write that
timed out raised in the worker's task group, which ended the worker."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.errors import Retry
from chronos.outcomes import Outcome
from chronos.runtime import WorkerMain, run_service
from chronos.states import JobState
from chronos.worker.context import current_job
from chronos.worker.executor import Executor
from chronos.worker.registry import Registry

from .conftest import fault_settings, reconnected, restart_on_same_store, stall, wait_until, wind_down


@dataclass
class Rig:
    server: EmbeddedServer
    client: Client
    worker: WorkerMain
    executor: Executor
    runs: collections.Counter[str] = field(default_factory=collections.Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    restarted: EmbeddedServer | None = None

    def stall_server(self) -> None:
        """The server stops reading: what is sent to it now is never answered."""
        assert self.server.proc is not None
        stall(self.server.proc.pid)  # stopped before the job's write is sent, not racing it


def counters(ex: Executor) -> str:
    return (f"processed {ex.processed}, failed {ex.failed}, commit_retries {ex.commit_retries}, "
            f"running_writes_lost {ex.running_writes_lost}, PubAcks in flight {ex.ops.publisher.in_flight}")


@asynccontextmanager
async def rig(tmp_path, ns: str) -> AsyncIterator[Rig]:
    """A server and a worker with two tasks that stall the server in their first run: ``f.at_end``
    as it returns, ``f.at_start`` as it starts (then it waits for ``release``); ``f.again`` asks
    for a retry in its first run."""
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    reg = Registry()
    box: list[Rig] = []

    def first_run() -> bool:
        job = current_job()
        assert job is not None
        r = box[0]
        r.runs[job.job_id] += 1
        return r.runs[job.job_id] == 1

    async def at_end() -> str:
        if first_run():
            box[0].stall_server()
        return "done"

    async def at_start() -> str:
        if first_run():
            box[0].stall_server()  # before its deferred running write (50 ms in)
        await box[0].release.wait()
        return "done"

    async def noop() -> None:
        return None

    async def again() -> str:
        if first_run():
            raise Retry(0.0, "once more")  # its next delivery takes the checked path: running written first
        return "done"

    reg.register(at_end, name="f.at_end")
    reg.register(again, name="f.again")
    reg.register(at_start, name="f.at_start")
    reg.register(noop, name="f.noop")
    settings = fault_settings(server.url, ns)
    worker = WorkerMain(settings, reg, concurrency=2)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
    client = await Client.connect(settings)
    r: Rig | None = None
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        assert worker.service.executor is not None
        r = Rig(server, client, worker, worker.service.executor)
        box.append(r)
        # A first job, so the next is past the consumer's first 50 ms (worker/replay.py): it takes
        # the fast path, with its running write deferred.
        await client.wait(await client.submit("f.noop"), timeout=30)
        yield r
        assert not services.done(), services
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        await wind_down(client, stop, services, r.restarted if r else None, server)


@pytest.mark.parametrize("then", ["killed", "resumed"])
async def test_a_completed_write_cut_by_a_server_loss_is_written_not_rerun(tmp_path, then):
    """``killed``: the write dies unread with the server; written again once it is back.
    ``resumed``: the server reads on and the write lands, its answer long given up; the worker
    finds its own write in the record (executor._landed) and only acks (written again instead,
    it lost the compare-and-set to it and dropped the count)."""
    async with rig(tmp_path, f"commit{then}") as r:
        job_id = await r.client.submit("f.at_end")
        # The write's PubAck times out (the publisher's 10 s): the worker now waits to write again.
        await wait_until(lambda: r.executor.commit_retries >= 1, 40,
                         lambda: f"the completed write to time out ({counters(r.executor)})")
        assert r.server.proc is not None
        if then == "killed":
            r.server.kill()
            r.restarted = restart_on_same_store(r.server)
            await reconnected(r.client.conn.nc, r.worker.service.conn.nc)
        else:
            os.kill(r.server.proc.pid, signal.SIGCONT)
        rec = await r.client.wait(job_id, timeout=60)
        assert rec.state is JobState.COMPLETED and rec.result == "done", rec
        assert r.runs[job_id] == 1, f"ran {r.runs[job_id]} times"
        assert len(rec.attempts) == 1, rec.attempts
        # the warm-up and this one (the client may see the record before the worker settles it)
        await wait_until(lambda: r.executor.processed == 2, 10, "the worker to count the job")


async def test_a_running_write_cut_by_a_server_stall_is_not_counted_as_a_run(tmp_path):
    """A delivery on the checked path (a retry's) whose running write gets no answer is held and
    tried again. The server, stalled past ack_wait, delivers the message again meanwhile: one of
    the two runs the job (the held one if its write landed), and the other delivery is not
    counted as a run, nor shown as a lost attempt. Before, the held delivery was nakked and the
    next one recorded it as a lost run: a R3 node's SIGKILL sent 5,000 never-run no-op jobs
    to the DLQ as "ran 7 times"."""
    async with rig(tmp_path, "startloss") as r:
        ops = r.executor.ops
        sent = ops.write_nowait
        stalled: list[int] = []

        async def write_nowait(record, revision, *args, **kwargs):
            if record.state is JobState.RUNNING and record.attempt == 2 and not stalled:
                stalled.append(record.attempt)
                r.stall_server()  # this write reaches a server that is not reading
            return await sent(record, revision, *args, **kwargs)

        ops.write_nowait = write_nowait  # type: ignore[method-assign]
        job_id = await r.client.submit("f.again")
        # Its PubAck times out (the publisher's 10 s), whatever the worker then does with the delivery.
        await wait_until(lambda: bool(stalled) and ops.publisher.in_flight == 0, 40,
                         lambda: f"the running write to time out ({counters(r.executor)})")
        assert r.server.proc is not None
        os.kill(r.server.proc.pid, signal.SIGCONT)
        rec = await r.client.wait(job_id, timeout=60)
        assert rec.state is JobState.COMPLETED and rec.result == "done", rec
        assert r.runs[job_id] == 2, f"ran {r.runs[job_id]} times"
        assert [a.outcome for a in rec.attempts] == [Outcome.RETRY, Outcome.COMPLETED], rec.attempts
        assert rec.delivered - rec.handed_back == 2, (rec.delivered, rec.handed_back)
        assert r.executor.start_retries >= 1


async def test_a_running_write_cut_by_a_server_stall_does_not_end_the_worker(tmp_path):
    async with rig(tmp_path, "runningloss") as r:
        job_id = await r.client.submit("f.at_start")
        await wait_until(lambda: r.executor.running_writes_lost >= 1, 40, "the running write to time out")
        assert r.server.proc is not None
        os.kill(r.server.proc.pid, signal.SIGCONT)  # the stalled write now lands; its PubAck was given up
        r.release.set()
        rec = await r.client.wait(job_id, timeout=60)
        assert rec.state is JobState.COMPLETED, rec.state
        assert r.runs[job_id] == 1, f"ran {r.runs[job_id]} times"
        assert len(rec.attempts) == 1, rec.attempts


@dataclass
class Stopping:
    server: EmbeddedServer
    worker: WorkerMain
    client: Client
    stop: asyncio.Event
    services: asyncio.Future


@asynccontextmanager
async def stopping_worker(tmp_path, ns: str, reg: Registry, concurrency: int) -> AsyncIterator[Stopping]:
    """A server and a worker run as `chronos serve` runs it (the runtime's grace: the worker's
    plus a margin), for tests that stop it: a drain past that margin ends FORCED."""
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    settings = fault_settings(server.url, ns)  # worker.shutdown_grace 2 s
    worker = WorkerMain(settings, reg, concurrency=concurrency)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=settings.worker.shutdown_grace + 5, stop=stop,
                                                 signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        yield Stopping(server, worker, client, stop, services)
    finally:
        stop.set()
        if not services.done():
            await asyncio.gather(services, return_exceptions=True)
        await client.close()
        server.cleanup()


async def test_a_worker_stopped_while_the_server_is_away_ends_within_its_grace(tmp_path):
    """Jobs that ran while the server was away, their outcome writes waiting for it, then the
    worker stopped: its drain gives those runs up at the end of the grace (red team: it waited
    out the writes' timeouts past the runtime's hard stop, which then cancelled it: FORCED)."""
    from chronos.runtime import Outcome

    release = asyncio.Event()
    reg = Registry()

    async def holds() -> str:
        await asyncio.wait_for(release.wait(), 60)
        return "done"

    reg.register(holds, name="f.holds")
    try:
        async with stopping_worker(tmp_path, "stopaway", reg, 4) as w:
            for _ in range(4):
                await w.client.submit("f.holds")
            service = w.worker.service
            await wait_until(lambda: len(service.running) == 4, 30, "four jobs to run")
            w.server.kill()
            release.set()  # they end with the server away: their outcome writes wait for it
            await wait_until(lambda: service.committing + sum(1 for r in service.running.values()
                                                              if r.call_task is None) >= 4, 30,
                             "the four runs to end")
            w.stop.set()
            outcome = await asyncio.wait_for(w.services, 60)
            assert outcome is not Outcome.FORCED, outcome
    finally:
        release.set()


async def test_a_worker_stopped_while_a_delivery_is_held_ends_within_its_grace(tmp_path):
    """A delivery held for its running write (the server killed under it) when the worker is
    stopped: the drain ends it at the grace, its task never called (review: the hold waited up
    to 60 s, past the runtime's hard stop: FORCED)."""
    from chronos.runtime import Outcome as Ended

    reg = Registry()
    runs: list[int] = []

    async def again() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise Retry(0.0, "once more")
        return "done"

    reg.register(again, name="f.again")
    async with stopping_worker(tmp_path, "helddrain", reg, 2) as w:
        ex = w.worker.service.executor
        assert ex is not None
        sent = ex.ops.write_nowait
        killed: list[int] = []

        async def write_nowait(record, revision, *args, **kwargs):
            if record.state is JobState.RUNNING and record.attempt == 2 and not killed:
                killed.append(1)
                w.server.kill()  # the retry's running write goes nowhere
            return await sent(record, revision, *args, **kwargs)

        ex.ops.write_nowait = write_nowait  # type: ignore[method-assign]
        await w.client.submit("f.again")
        await wait_until(lambda: ex.start_retries >= 1, 40, lambda: f"the running write to be held ({counters(ex)})")
        w.stop.set()
        outcome = await asyncio.wait_for(w.services, 60)
        assert outcome is not Ended.FORCED, outcome
        assert len(runs) == 1, "the held delivery's task must not be called"
