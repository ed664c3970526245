"""Two contenders for one lease against the real nats-server (TTL 2 s, so every case ends in seconds)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chronos import codec
from chronos.config import Settings
from chronos.connection import Connection, connect, ensure_topology
from chronos.errors import ConflictError
from chronos.leadership import (
    KVLeaseBackend,
    LeaderLease,
    LeaseHolder,
    LeaseRecord,
    read_leader,
)
from chronos.models import Event

TTL = 2  # the smallest the config allows; margin 0.4 s, renew every 0.67 s, poll every 0.5 s


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition with a deadline (never a bare sleep before an assert)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_event(event: asyncio.Event, timeout: float, what: str) -> float:
    """Wait for ``event``; return the monotonic time it was seen."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
    return time.monotonic()


class Recorder:
    """Collects leader events with the monotonic time they were emitted."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, Event]] = []

    def __call__(self, event: Event) -> None:
        self.events.append((event.kind, time.monotonic(), event))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.events]

    def first(self, kind: str) -> float:
        return next(t for k, t, _ in self.events if k == kind)


class Partitionable:
    """Wraps the KV backend; when cut, every call hangs as if the network had gone."""

    def __init__(self, inner: KVLeaseBackend) -> None:
        self.inner = inner
        self.cut = asyncio.Event()

    async def _gate(self) -> None:
        if self.cut.is_set():
            await asyncio.Event().wait()

    async def create(self, value: bytes, ttl: int) -> int:
        await self._gate()
        return await self.inner.create(value, ttl)

    async def renew(self, value: bytes, revision: int, ttl: int) -> int:
        await self._gate()
        return await self.inner.renew(value, revision, ttl)

    async def release(self, revision: int) -> None:
        await self._gate()
        await self.inner.release(revision)

    async def read(self) -> LeaseRecord | None:
        await self._gate()
        return await self.inner.read()

    async def watch(self, on_release: Callable[[], None]) -> None:
        await self.inner.watch(on_release)


class Contender:
    def __init__(self, lease: LeaderLease, conn: Connection, rec: Recorder, backend: Any) -> None:
        self.lease = lease
        self.conn = conn
        self.rec = rec
        self.backend = backend
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.lease.run())

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def contender(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[Contender]]]:
    made: list[Contender] = []
    setup = await connect(settings)
    await ensure_topology(setup)

    async def make(node_id: str, *, partitionable: bool = False, start: bool = True) -> Contender:
        conn = await connect(settings, name=f"lease-{node_id}")
        inner = KVLeaseBackend(conn, conn.names.leader_key())
        backend: Any = Partitionable(inner) if partitionable else inner
        rec = Recorder()
        lease = LeaderLease(conn, ttl=TTL, node_id=node_id, on_event=rec, backend=backend)
        c = Contender(lease, conn, rec, backend)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        await c.stop()
    for c in made:
        await c.conn.close()
    await drop_namespace(setup)
    await setup.close()


async def drop_namespace(conn: Connection) -> None:
    """Delete this test's streams: the DLQ and events streams reserve file storage on the shared server."""
    n = conn.names
    ours = {n.jobs_stream, n.dlq_stream, n.events_stream, n.delayed_stream}
    for info in await conn.js.streams_info():
        name = info.config.name or ""
        if name in ours or name.startswith(n.kv_stream(f"{n.ns}_")):
            await conn.js.delete_stream(name)


async def leader_and_follower(a: Contender, b: Contender) -> tuple[Contender, Contender]:
    await wait_event(a.lease.ready, 5, "a's first attempt")
    await wait_event(b.lease.ready, 5, "b's first attempt")
    leaders = [c for c in (a, b) if c.lease.is_leader]
    assert len(leaders) == 1, "exactly one contender leads"
    leader = leaders[0]
    return leader, (b if leader is a else a)


async def test_exactly_one_leads(contender):
    a = await contender("a")
    b = await contender("b")
    leader, follower = await leader_and_follower(a, b)
    term = leader.lease.term
    assert term is not None
    assert follower.lease.holder is not None and follower.lease.holder.node == leader.lease.node_id
    # Several renewals later the same term still leads and the follower never gained.
    await wait_until(lambda: (leader.lease.revision or 0) >= term + 3, 5, "three renewals")
    assert leader.lease.is_leader and leader.lease.term == term
    assert not follower.lease.is_leader
    assert "leader.gained" not in follower.rec.kinds()
    assert leader.rec.kinds() == ["leader.gained"]
    # Anyone can ask who leads, without contending.
    info = await read_leader(follower.conn)
    assert info is not None
    assert (info.node, info.term) == (leader.lease.node_id, term)
    assert info.ttl == TTL and info.expires_in is not None and 0 < info.expires_in <= TTL + 0.5
    mine = await follower.lease.leader_info()
    assert mine is not None and (mine.node, mine.term, mine.pid) == (info.node, info.term, info.pid)


async def test_resign_hands_over_at_once(contender):
    a = await contender("a")
    await wait_event(a.lease.leading, 5, "a leads")
    b = await contender("b")
    await wait_event(b.lease.ready, 5, "b follows")
    started = time.monotonic()
    await a.stop()  # cancelling run() resigns with a revision-guarded delete
    assert not a.lease.is_leader and a.rec.kinds() == ["leader.gained", "leader.lost"]
    gained = await wait_event(b.lease.leading, TTL, "b takes over")
    # The delete marker wakes b's poll: far sooner than either the TTL or a poll interval.
    assert gained - started < b.lease.poll_every
    info = await read_leader(b.conn)
    assert info is not None and info.node == "b"


async def test_partitioned_leader_stops_trusting_before_the_key_expires(contender):
    a = await contender("a", partitionable=True)
    await wait_event(a.lease.leading, 5, "a leads")
    b = await contender("b")
    await wait_event(b.lease.ready, 5, "b follows")
    deadline = a.lease.trusted_until
    assert deadline is not None
    last_write = deadline - (TTL - a.lease.margin)  # start of a's last successful create or renewal
    a.backend.cut.set()  # a can no longer reach the server; its key runs out its TTL
    lost = await wait_event(a.lease.following, TTL, "a steps down")
    gained = await wait_event(b.lease.leading, TTL + 1.5, "b takes over")
    assert lost <= deadline + 0.05  # stepped down at its trust deadline, not later
    assert lost < last_write + TTL  # ...which is before the key could expire
    assert gained > lost
    assert gained - last_write >= TTL - 0.05  # the server kept a's key for its whole TTL
    assert gained - last_write <= TTL + b.lease.poll_every + 0.5  # taken within a poll of expiry
    assert "renewal unanswered" in a.rec.events[-1][2].message


async def test_killed_connection_loses_at_once_and_the_other_takes_over(contender):
    a = await contender("a")
    await wait_event(a.lease.leading, 5, "a leads")
    b = await contender("b")
    await wait_event(b.lease.ready, 5, "b follows")
    killed = time.monotonic()
    await a.conn.nc.close()
    lost = await wait_event(a.lease.following, TTL, "a steps down")
    gained = await wait_event(b.lease.leading, TTL + 1.5, "b takes over")
    assert lost - killed <= a.lease.renew_every + 0.1  # the next renewal fails and ends the term
    assert gained - killed <= TTL + b.lease.poll_every + 0.5
    assert lost < gained


async def test_renewal_sets_the_ttl_again_so_the_key_still_expires(contender):
    a = await contender("a", start=False)
    backend: KVLeaseBackend = a.backend
    assert await a.lease.try_acquire()
    first = a.lease.revision
    for _ in range(3):
        assert await a.lease.renew()
    renewed_at = time.monotonic()
    assert a.lease.revision is not None and first is not None and a.lease.revision > first
    record = await backend.read()
    assert record is not None and record.ttl == TTL  # the renewal carried Nats-TTL itself
    holder = codec.decode(record.data, LeaseHolder)
    assert holder.term == first  # renewals keep the term id
    # Stop renewing: the key must vanish after its TTL (kv.update would have made it permanent).
    while await backend.read() is not None:
        assert time.monotonic() - renewed_at < TTL + 1.5, "lease key outlived its TTL"
        await asyncio.sleep(0.02)
    expired_after = time.monotonic() - renewed_at
    assert expired_after >= TTL - 0.1
    assert not a.lease.is_leader  # its trust window closed before that


async def test_stale_revision_renewal_is_refused(contender):
    a = await contender("a", start=False)
    b = await contender("b", start=False)
    backend: KVLeaseBackend = a.backend
    assert await a.lease.try_acquire()
    first = a.lease.revision
    assert await a.lease.renew()
    current = a.lease.revision
    assert first is not None and current is not None
    with pytest.raises(ConflictError):
        await backend.renew(b"stale", first, TTL)  # the old revision is a fencing token now
    with pytest.raises(ConflictError):
        await backend.release(first)
    assert not await b.lease.try_acquire()  # held: create is refused
    # An outside write moves the revision; a's next renewal is refused and its term ends.
    await backend.renew(b"rogue", current, TTL)
    assert not await a.lease.renew()
    assert not a.lease.is_leader
    assert a.rec.kinds() == ["leader.gained", "leader.lost"]
    assert "refused" in (a.rec.events[-1][2].message or "")
