"""chronos.runtime.run_service: stop event, signals, the grace period, failures."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from chronos.runtime import Outcome, run_service


async def test_services_that_return_finish():
    ran = []

    async def one(stop: asyncio.Event) -> None:
        ran.append(1)

    assert await run_service(one, one, grace=1) is Outcome.FINISHED
    assert ran == [1, 1]


async def test_stop_event_stops_gracefully():
    stop = asyncio.Event()
    cleaned = asyncio.Event()

    async def service(s: asyncio.Event) -> None:
        await s.wait()
        await asyncio.sleep(0.01)  # some shutdown work
        cleaned.set()

    async def stopper(s: asyncio.Event) -> None:
        s.set()

    assert await run_service(service, stopper, grace=5, stop=stop) is Outcome.STOPPED
    assert cleaned.is_set()


async def test_grace_runs_out_then_services_are_cancelled():
    cancelled = asyncio.Event()

    async def stubborn(stop: asyncio.Event) -> None:
        await stop.wait()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def stopper(stop: asyncio.Event) -> None:
        stop.set()

    assert await run_service(stubborn, stopper, grace=0.1) is Outcome.FORCED
    assert cancelled.is_set()


async def test_a_failing_service_cancels_the_others_and_raises_its_error():
    others_cancelled = asyncio.Event()

    async def fails(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.01)
        raise ValueError("broken")

    async def waits(stop: asyncio.Event) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            others_cancelled.set()
            raise

    with pytest.raises(ValueError, match="broken"):
        await run_service(fails, waits, grace=1)
    assert others_cancelled.is_set()


async def test_sigterm_then_second_signal_forces():
    got_stop = asyncio.Event()

    async def ignores_stop(stop: asyncio.Event) -> None:
        await stop.wait()
        got_stop.set()
        await asyncio.Event().wait()  # never finishes on its own

    async def signals(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(got_stop.wait(), 5)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    assert await asyncio.wait_for(run_service(ignores_stop, signals, grace=30), 10) is Outcome.FORCED
    assert signal.getsignal(signal.SIGINT) == before  # handlers are removed afterwards


async def test_sigint_stops_gracefully():
    async def service(stop: asyncio.Event) -> None:
        await stop.wait()

    async def ctrl_c(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    assert await asyncio.wait_for(run_service(service, ctrl_c, grace=5), 10) is Outcome.STOPPED


async def test_needs_a_service():
    with pytest.raises(ValueError):
        await run_service(grace=1)
