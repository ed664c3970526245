"""Limits and least privilege (issue 16): workers take, renew and release concurrency slots and rate
turns but cannot change a queue's limits; the console sets queue limits; the viewer reads only."""

from __future__ import annotations

import time

import pytest

from chronos.client import Client
from chronos.connection import connect
from chronos.errors import PermissionDeniedError
from chronos.limits import Rate, SlotHolder
from chronos.limitstore import LimitStore

from .conftest import NAMES, raw, settings_for
from .test_nats_attacks import refused

N = NAMES


async def test_a_worker_cannot_change_a_queues_limit(server, seeded):
    console = await Client.connect(settings_for(server, "console"), ensure=False)
    try:
        await console.set_queue_limit("default", concurrency=2)
        r = await raw(server, "worker")
        try:
            exc = await refused(r.js.publish(N.kv_subject(N.queues_bucket, N.queue_limit_key("default")), b"x"))
            assert isinstance(exc, PermissionDeniedError), exc
        finally:
            await r.nc.close()
        worker = await Client.connect(settings_for(server, "worker"), ensure=False)
        try:
            with pytest.raises(PermissionDeniedError):
                await worker.set_queue_limit("default", concurrency=50)
        finally:
            await worker.close()
        assert (await console.queue_limit("default")).concurrency == 2  # unchanged
    finally:
        await console.clear_queue_limit("default")
        await console.close()


async def test_a_viewer_cannot_take_a_slot_or_a_rate_turn_but_reads_the_snapshot(server, seeded):
    r = await raw(server, "viewer")
    try:
        for key in ("slot.abc.0", "rate.abc", "wait.abc.job"):
            exc = await refused(r.js.publish(N.kv_subject(N.limits_bucket, key), b"x",
                                             headers={"Nats-Expected-Last-Subject-Sequence": "0"}))
            assert isinstance(exc, PermissionDeniedError), (key, exc)
        exc = await refused(r.js.publish(N.kv_subject(N.queues_bucket, N.queue_limit_key("default")), b"x"))
        assert isinstance(exc, PermissionDeniedError), exc
    finally:
        await r.nc.close()
    viewer = await Client.connect(settings_for(server, "viewer"), ensure=False)
    try:
        snap = await viewer.limits()
        assert isinstance(snap.limits, list)
        with pytest.raises(PermissionDeniedError):
            await viewer.set_queue_limit("default", rate="5/s")
    finally:
        await viewer.close()


async def test_a_worker_takes_renews_and_releases_slots_and_rate_turns(server, seeded):
    conn = await connect(settings_for(server, "worker"))
    try:
        store = LimitStore(conn)
        holder = SlotHolder(job_id="j1", worker="w", since=time.time(), scope="task", name="t.ok", key="k", limit=1, lease=5)
        lease = await store.acquire("task", "t.ok", "k", 1, holder, 5)
        assert lease is not None
        other = SlotHolder(job_id="j2", worker="w2", since=time.time(), scope="task", name="t.ok", key="k", limit=1, lease=5)
        assert await store.acquire("task", "t.ok", "k", 1, other, 5) is None  # held
        assert await store.renew(lease, 5)
        await store.release_nowait(lease)
        again = await store.acquire("task", "t.ok", "k", 1, other, 5)
        assert again is not None  # released: taken over the delete marker
        await store.release_nowait(again)
        start = await store.reserve("task", "t.ok", None, Rate(1, 3600.0))
        later = await store.reserve("task", "t.ok", None, Rate(1, 3600.0))
        assert later - start >= 3599.0  # the second turn is an hour on
    finally:
        await conn.close()


# --- a stolen worker credential against the limits bucket (docs/concurrency-limits.md) ------------
async def _plant(r, key: str, value: bytes, ttl: str | None = None) -> None:
    """Write a key of the limits bucket as a raw worker-role client: a plain put (no compare-and-set)."""
    headers = {"Nats-TTL": ttl} if ttl else None
    await r.js.publish(N.kv_subject(N.limits_bucket, key), value, headers=headers)


async def test_a_slot_planted_with_a_day_long_ttl_is_taken_over(server, seeded):
    """A worker credential may write slots (that is its job); a holder it plants with a huge TTL
    counts only as long as a real lease would (the reader's own, at most 4x): a stale one, or one
    stamped in the future, or one that does not decode, is taken over by compare-and-set."""
    import msgspec

    from chronos.limitstore import LimitStore as Store

    r = await raw(server, "worker")
    conn = await connect(settings_for(server, "worker"))
    try:
        store = Store(conn)
        now = time.time()
        planted = {
            "stale": SlotHolder(job_id="ghost", worker="evil", since=now - 3600, scope="task", name="t.sec",
                                key="stale", limit=1, lease=86400.0),
            "future": SlotHolder(job_id="ghost", worker="evil", since=now + 86400, scope="task", name="t.sec",
                                 key="future", limit=1, lease=86400.0),
            "garbage": None,
        }
        for key, h in planted.items():
            value = msgspec.msgpack.encode(h) if h is not None else b"\xc1not msgpack"
            await _plant(r, Store.slot_group("task", "t.sec", key) + ".0", value, ttl="86400s")
        for key in planted:
            mine = SlotHolder(job_id=f"real-{key}", worker="w", since=time.time(), scope="task", name="t.sec",
                              key=key, limit=1, lease=15)
            lease = await store.acquire("task", "t.sec", key, 1, mine, 15)
            assert lease is not None, f"the planted {key} slot still blocks the limit"
            await store.release_nowait(lease)
        # A plausible holder (stamped now, a 15 s lease) is honoured ...
        fresh = SlotHolder(job_id="ghost", worker="evil", since=time.time(), scope="task", name="t.sec",
                           key="fresh", limit=1, lease=15.0)
        await _plant(r, Store.slot_group("task", "t.sec", "fresh") + ".0", msgspec.msgpack.encode(fresh), "86400s")
        mine = SlotHolder(job_id="real", worker="w", since=time.time(), scope="task", name="t.sec", key="fresh",
                          limit=1, lease=15)
        assert await store.acquire("task", "t.sec", "fresh", 1, mine, 15) is None

        # ... until a waiter asks whether its job is finished or gone (every 3rd delivery does).
        async def dead(job_ids: list[str]) -> set[str]:
            return {j for j in job_ids if j == "ghost"}

        lease = await store.acquire("task", "t.sec", "fresh", 1, mine, 15, dead=dead)
        assert lease is not None and lease.holder.job_id == "real"
    finally:
        await conn.close()
        await r.nc.close()


async def test_a_rate_state_planted_far_ahead_or_unreadable_is_reset(server, seeded):
    """A planted GCRA state 30 days ahead would starve the task for 30 days: a reader sees that no
    worker could have reserved that far (an hour plus the burst) and resets it by compare-and-set.
    Within the horizon a planted state is honoured: a stolen credential can delay a task that much."""
    import msgspec

    from chronos.limits import RateState, digest
    from chronos.limitstore import RATE_PREFIX, LimitStore as Store

    r = await raw(server, "worker")
    conn = await connect(settings_for(server, "worker"))
    try:
        store = Store(conn)
        rate = Rate(10, 1.0)
        far = RateState(tat=time.time() + 30 * 86400, scope="task", name="t.rate", key="far", limit="10/s")
        await _plant(r, RATE_PREFIX + digest("task", "t.rate", "far"), msgspec.msgpack.encode(far))
        await _plant(r, RATE_PREFIX + digest("task", "t.rate", "junk"), b"\xc1junk")
        for key in ("far", "junk"):
            start = await store.reserve("task", "t.rate", key, rate)
            assert start - time.time() < 1.0, (key, start - time.time())
        near = RateState(tat=time.time() + 600, scope="task", name="t.rate", key="near", limit="10/s")
        await _plant(r, RATE_PREFIX + digest("task", "t.rate", "near"), msgspec.msgpack.encode(near))
        start = await store.reserve("task", "t.rate", "near", rate)
        assert 590 < start - time.time() < 610  # honoured: within what a real backlog can reach
    finally:
        await conn.close()
        await r.nc.close()
