"""leadership.py on a FakeClock: trust-window arithmetic and the step-down rules, in milliseconds.

The memory backend expires the key by TTL on the same fake clock, so these
tests can show the order that matters: the holder stops trusting its term
before the key can expire, and only then can a successor create it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from chronos.clock import FakeClock
from chronos.errors import ConflictError
from chronos.leadership import LeaderLease, LeaseRecord, MemoryLeaseBackend, TrustWindow
from chronos.models import Event


async def settle() -> None:
    """Let every ready task run (fake time does not move)."""
    for _ in range(30):
        await asyncio.sleep(0)


async def advance_to(clock: FakeClock, mono: float, step: float = 0.01) -> None:
    """Move fake time forward in small steps, letting the loops react at each one."""
    while clock.monotonic() < mono - 1e-9:
        clock.advance(min(step, mono - clock.monotonic()))
        await settle()


class Recorder:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.events: list[tuple[str, float]] = []

    def __call__(self, event: Event) -> None:
        self.events.append((event.kind, self.clock.monotonic()))

    def at(self, kind: str) -> float | None:
        return next((t for k, t in self.events if k == kind), None)


class Flaky:
    """Wraps a backend; it can hang every call (a partition) or fail renewals."""

    def __init__(self, inner: MemoryLeaseBackend) -> None:
        self.inner = inner
        self.mode = "ok"  # ok | partitioned | failing

    async def _gate(self) -> None:
        if self.mode == "partitioned":
            await asyncio.Event().wait()

    async def create(self, value: bytes, ttl: int) -> int:
        await self._gate()
        return await self.inner.create(value, ttl)

    async def renew(self, value: bytes, revision: int, ttl: int) -> int:
        await self._gate()
        if self.mode == "failing":
            raise OSError("connection reset")
        return await self.inner.renew(value, revision, ttl)

    async def release(self, revision: int) -> None:
        await self._gate()
        await self.inner.release(revision)

    async def read(self) -> LeaseRecord | None:
        await self._gate()
        return await self.inner.read()

    async def watch(self, on_release: Callable[[], None]) -> None:
        await self.inner.watch(on_release)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_trust_window_counts_from_the_attempt_start(clock):
    tw = TrustWindow(clock, ttl=5, margin=1.0)
    assert not tw.trusted()
    started = tw.start()  # read before the request goes out
    clock.advance(0.8)  # a slow round trip
    tw.extend(started)
    assert tw.until == pytest.approx(started + 4.0)  # not 0.8 + 4.0: the reply time earns nothing
    assert tw.remaining() == pytest.approx(3.2)
    clock.advance(3.19)
    assert tw.trusted()
    clock.advance(0.01)
    assert not tw.trusted()
    assert tw.remaining() == 0.0


async def test_trust_ends_before_the_key_can_expire(clock):
    backend = MemoryLeaseBackend(clock)
    a = LeaderLease(backend=backend, ttl=5, clock=clock, node_id="a")
    b = LeaderLease(backend=backend, ttl=5, clock=clock, node_id="b")
    assert a.margin == 1.0 and a.renew_every == pytest.approx(5 / 3) and a.poll_every == 1.25
    assert await a.try_acquire()
    assert a.is_leader and a.trusted_until == pytest.approx(4.0)
    clock.advance(3.99)
    assert a.is_leader
    clock.advance(0.01)
    # No renewal ran: at ttl - margin the term is no longer trusted, though the key still lives.
    assert not a.is_leader
    assert await backend.read() is not None
    assert not await b.try_acquire()
    clock.advance(1.0)  # now the TTL is over
    assert await b.try_acquire()
    assert b.is_leader and b.holder is not None and b.holder.node == "b"


async def test_ttl_is_whole_seconds_and_validated(clock):
    backend = MemoryLeaseBackend(clock)
    assert LeaderLease(backend=backend, ttl=2.9, clock=clock).ttl == 2
    with pytest.raises(ValueError, match="ttl"):
        LeaderLease(backend=backend, ttl=0.5, clock=clock)
    with pytest.raises(ValueError, match="renew_every"):
        LeaderLease(backend=backend, ttl=3, clock=clock, renew_every=2.5)


async def _start(lease: LeaderLease) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(lease.run())
    await settle()
    return task


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_hung_renewal_steps_down_at_the_trust_deadline(clock):
    shared = MemoryLeaseBackend(clock)
    flaky = Flaky(shared)
    rec_a, rec_b = Recorder(clock), Recorder(clock)
    a = LeaderLease(backend=flaky, ttl=5, clock=clock, node_id="a", on_event=rec_a)
    b = LeaderLease(backend=shared, ttl=5, clock=clock, node_id="b", on_event=rec_b)
    ta = await _start(a)
    tb = await _start(b)
    try:
        assert a.is_leader and not b.is_leader
        assert b.holder is not None and b.holder.node == "a"
        await advance_to(clock, 2.0)  # one renewal (at 5/3) went through
        assert a.trusted_until is not None
        last_renew = a.trusted_until - 4.0  # the attempt start of the last successful renewal
        assert last_renew == pytest.approx(5 / 3, abs=0.011)
        flaky.mode = "partitioned"  # the next renewal, at 10/3, never answers
        await advance_to(clock, 9.0)
        lost = rec_a.at("leader.lost")
        gained = rec_b.at("leader.gained")
        expiry = last_renew + 5.0  # the memory backend's TTL, started at the last successful write
        assert lost is not None and gained is not None
        assert lost == pytest.approx(last_renew + 4.0, abs=0.011)  # exactly at the trust deadline
        assert lost < expiry <= gained <= expiry + b.poll_every + 0.011
        assert b.is_leader and not a.is_leader
    finally:
        await _stop(ta, tb)


async def test_renewal_error_steps_down_at_once(clock):
    flaky = Flaky(MemoryLeaseBackend(clock))
    rec = Recorder(clock)
    a = LeaderLease(backend=flaky, ttl=5, clock=clock, node_id="a", on_event=rec)
    ta = await _start(a)
    try:
        assert a.is_leader
        flaky.mode = "failing"
        await advance_to(clock, 2.0)
        assert rec.at("leader.lost") == pytest.approx(5 / 3, abs=0.011)
        assert not a.is_leader and a.term is None
    finally:
        await _stop(ta)


async def test_resign_wakes_a_follower_without_waiting_for_the_ttl(clock):
    backend = MemoryLeaseBackend(clock)
    a = LeaderLease(backend=backend, ttl=5, clock=clock, node_id="a")
    b = LeaderLease(backend=backend, ttl=5, clock=clock, node_id="b")
    ta = await _start(a)
    tb = await _start(b)
    try:
        assert a.is_leader and b.ready.is_set() and not b.is_leader
        await _stop(ta)  # cancelling run() resigns
        await settle()
        assert b.is_leader  # no fake time passed: the release woke b's poll
        assert clock.monotonic() == 0.0
    finally:
        await _stop(ta, tb)


async def test_stale_revision_is_refused_and_ends_the_term(clock):
    backend = MemoryLeaseBackend(clock)
    a = LeaderLease(backend=backend, ttl=5, clock=clock, node_id="a")
    assert await a.try_acquire()
    first = a.revision
    assert await a.renew()
    assert a.revision != first and a.term == first
    with pytest.raises(ConflictError):
        await backend.renew(b"x", first, 5)  # someone holding the old revision
    await backend.renew(b"rogue", a.revision, 5)  # an outside write moves the revision
    assert not await a.renew()
    assert not a.is_leader and a.following.is_set()
