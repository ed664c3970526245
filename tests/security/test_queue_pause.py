"""Pausing a queue is an operator action: only the console role (and the admin) may write the queues
bucket. Workers, schedulers and viewers may read and watch it; any write of theirs, through the
client, a raw KV put, a direct publish to ``$KV.<bucket>.<key>`` or a rollup, is refused and
leaves the bucket as it was. Against a server started from the shipped configs."""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
import pytest

from chronos.client import Client
from chronos.connection import connect
from chronos.errors import PermissionDeniedError
from chronos.queueflags import QueueFlags, QueuePause
from chronos.worker.pauses import PauseWatch

from .conftest import NAMES, raw, settings_for

N = NAMES
BUCKET = N.queues_bucket
KEY = N.pause_key("default")
PAUSE = msgspec.msgpack.encode(QueuePause(queue="default", paused=True, at=1.0, by="mallory"))


async def refused(coro, timeout: float = 3.0) -> BaseException:
    try:
        result = await asyncio.wait_for(coro, timeout)
    except (PermissionDeniedError, nats.js.errors.APIError) as exc:
        return exc
    raise AssertionError(f"not refused: {result!r}")


async def bucket_state(admin) -> tuple[int, int]:
    st = (await admin.js.stream_info(N.kv_stream(BUCKET))).state
    return st.messages, st.last_seq


@pytest.mark.parametrize("role", ["worker", "viewer", "scheduler"])
async def test_only_the_console_may_pause_a_queue(server, admin, role):
    # Paused (by the admin), so the role's resume below has a write to attempt: resuming a queue
    # that is not paused writes nothing and is refused nothing.
    await (await admin.js.key_value(BUCKET)).put(KEY, PAUSE)
    before = await bucket_state(admin)
    r = await raw(server, role)
    try:
        # A direct publish to the key's subject, with and without a rollup header.
        exc = await refused(r.js.publish(N.kv_subject(BUCKET, KEY), PAUSE))
        assert isinstance(exc, PermissionDeniedError), exc
        await refused(r.js.publish(N.kv_subject(BUCKET, KEY), b"", headers={"Nats-Rollup": "sub"}))
        await refused(r.js.publish(N.kv_subject(BUCKET, "x"), b"", headers={"Nats-Rollup": "all"}))
        # nats-py's KV API: put, create, delete (a delete marker would "resume" a paused queue).
        kv = await r.js.key_value(BUCKET)  # reading the bucket's info is allowed
        await refused(kv.put(KEY, PAUSE))
        await refused(kv.create(N.pause_key("other"), PAUSE))
        await refused(kv.delete(KEY))
        # A core publish (no reply, nothing to refuse it to): the server drops it.
        await r.nc.publish(N.kv_subject(BUCKET, KEY), PAUSE)
        await r.nc.flush()
    finally:
        await r.nc.close()
    # Through chronos: refused before anything is written (the audit entry first, then the flag).
    client = await Client.connect(settings_for(server, role), ensure=False)
    try:
        with pytest.raises(PermissionDeniedError):
            await client.pause_queue("default", reason="stolen credential")
        with pytest.raises(PermissionDeniedError):
            await client.resume_queue("default")
    finally:
        await client.close()
    assert await bucket_state(admin) == before


async def test_workers_watch_what_the_console_writes(server, admin):
    """The worker role reads and follows the flags (before its first pull, then live); a rollup is
    refused even for the console, which may write the bucket (the stream refuses the header)."""
    worker_conn = await connect(settings_for(server, "worker"), name="sec-worker")
    console = await Client.connect(settings_for(server, "console"), ensure=False)
    changed = asyncio.Event()
    watch = PauseWatch(worker_conn, ["default"], changed.set)
    try:
        await watch.load()
        runner = asyncio.get_running_loop().create_task(watch.run())
        await console.pause_queue("default", reason="maintenance")
        await asyncio.wait_for(changed.wait(), 10)
        assert watch.paused == {"default"}
        flag = await QueueFlags(worker_conn).get("default")
        assert isinstance(flag, QueuePause) and flag.paused and flag.user == "chronos-console"

        changed.clear()
        await console.resume_queue("default")
        await asyncio.wait_for(changed.wait(), 10)
        assert watch.paused == set()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

        before = await bucket_state(admin)
        r = await raw(server, "console")
        try:
            exc = await refused(r.js.publish(N.kv_subject(BUCKET, KEY), b"", headers={"Nats-Rollup": "sub"}))
            assert "rollup" in str(exc).lower(), exc
        finally:
            await r.nc.close()
        assert await bucket_state(admin) == before
    finally:
        await console.close()
        await worker_conn.close()
