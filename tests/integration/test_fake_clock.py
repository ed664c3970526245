"""The stager and the worker on a FakeClock: an hour of their time in milliseconds of ours.

The server is real (its acks, redelivery and compare-and-set are not faked); only the services'
own sleeping and reading of time goes through the injected clock (clock.py).
"""

import asyncio
import time

import msgspec

from chronos import Client, Registry
from chronos.clock import FakeClock
from chronos.jobs import JobOps
from chronos.models import Backoff
from chronos.outcomes import Outcome
from chronos.scheduler.stager import Stager
from chronos.states import JobState

from ..conftest import wait_for_state

HOUR = 3600.0


async def test_stager_promotes_an_hour_ahead_job_when_the_fake_clock_gets_there(settings):
    # No worker here: the job is to stay `available` for the test to see.
    jobs = msgspec.structs.replace(settings.jobs, check_task_names=False)
    client = await Client.connect(msgspec.structs.replace(settings, jobs=jobs))
    clock = FakeClock(start=time.time())
    stager = Stager(JobOps(client.conn, clock), clock=clock, tick=1.0)
    task = asyncio.create_task(stager.run())
    try:
        await asyncio.wait_for(stager.ready.wait(), 10)
        job = await client.submit("stamp", delay=HOUR)  # run_at on the client's (system) clock
        run_at = (await client.get(job)).spec.run_at
        assert run_at is not None
        began = time.monotonic()
        await clock.until_waiting()  # the load loop sleeps on the fake clock; nothing is due yet
        clock.advance(HOUR / 2)
        await clock.until_waiting()
        assert (await client.get(job)).state == JobState.SCHEDULED  # half way: still parked
        clock.advance(HOUR / 2 + 2.0)  # past run_at: the minute enters the horizon, the timer fires
        rec = await wait_for_state(client, job, JobState.AVAILABLE, timeout=10)
        assert time.monotonic() - began < 5.0  # an hour of the stager's time, not of ours
        assert stager.stats.promoted == 1
        assert rec.updated_at >= run_at  # stamped by the fake clock, never before run_at
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_worker_retry_backoff_is_measured_on_its_clock(client, start_worker):
    clock = FakeClock(start=time.time())
    reg = Registry()
    calls = asyncio.Event()

    async def fails() -> None:
        calls.set()
        raise ValueError("not yet")

    reg.register(fails, name="fails")
    await start_worker(reg, clock=clock)
    began = time.monotonic()
    job = await client.submit("fails", max_attempts=3, backoff=Backoff(kind="fixed", base=HOUR, jitter=False))
    rec = await wait_for_state(client, job, JobState.RETRYABLE, timeout=10)
    assert calls.is_set()
    # The next attempt is due an hour after the failure, on the worker's clock (which has not
    # moved: the failure is stamped at the fake start), and this took well under a second of ours.
    assert rec.scheduled_at == clock.now() + HOUR
    assert rec.attempts[-1].ended_at == clock.now()
    assert rec.attempts[-1].outcome == Outcome.ERROR == "error"
    assert time.monotonic() - began < 5.0
