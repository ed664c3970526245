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
