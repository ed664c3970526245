"""Atomic batches and the limits-retention jobs stream, against a real server.

- Bulk submit sends a chunk's record creates and work messages as atomic batches; a batch with a
  conflicting create fails whole and the chunk falls back to the per-message path, with exactly the
  per-message path's result.
- The worker's completed writes of one loop turn go as one batch; one lost compare-and-set sends
  each write again alone, and each callback hears its own outcome.
- An acked message stays in the stream until the leader purges it: a consumer deleted and made again
  delivers it once more, and the worker skips it (the record is terminal) without running the task.
- The purger never removes an unacknowledged message, nor one a second consumer still needs.
"""

from __future__ import annotations

import asyncio
import time

import nats.js.errors
import pytest
from nats.js import api

from chronos import Registry, codec
from chronos.client import Client
from chronos.connection import ensure_topology
from chronos.ids import new_job_id
from chronos.jobs import new_record
from chronos.models import JobMessage, JobRecord
from chronos.publisher import WRONG_LAST_SEQUENCE, PublishError, PubAck
from chronos.scheduler.purger import Purger
from chronos.states import JobState
from chronos.subjects import Names


async def _stream_msgs(client: Client) -> int:
    return (await client.conn.js.stream_info(client.names.jobs_stream)).state.messages


def _records(client: Client, n: int) -> list[JobRecord]:
    now = time.time()
    return [new_record(new_job_id(now), client.build_spec("t.batch", [i]), now, JobState.AVAILABLE)
            for i in range(n)]


async def _outcome(client: Client, records: list[JobRecord], batched: bool) -> tuple[object, list[bool]]:
    """Submit ``records`` (one of which already exists); (the error raised, which records are ours now)."""
    store = await client.ops.store()
    taken = records[3]
    await store.create(taken.id, b"someone else's")  # the conflicting create
    before = await _stream_msgs(client)
    encoded = [codec.encode(r) for r in records]
    error: object = None
    try:
        await client.submitter._submit_pipelined(records, encoded=encoded, batched=batched)
    except Exception as exc:
        error = (type(exc), getattr(exc, "err_code", None))
    ours = []
    for rec, data in zip(records, encoded):
        entry = await store.get(rec.id)
        ours.append(entry is not None and entry.value == data)
    return (error, ours, await _stream_msgs(client) - before), ours


async def test_a_batch_with_a_conflicting_create_falls_back_to_the_per_message_result(client):
    await client.register_tasks(["t.batch"])
    batched, ours_b = await _outcome(client, _records(client, 40), batched=True)
    plain, ours_p = await _outcome(client, _records(client, 40), batched=False)
    # Same error, same records written (all but the taken one), same number of work messages.
    assert batched == plain
    assert batched[0] is not None and batched[0][1] == WRONG_LAST_SEQUENCE, batched
    assert ours_b == ours_p and ours_b.count(False) == 1 and not ours_b[3]
    assert batched[2] == 39


async def test_bulk_submit_batches_carry_each_records_revision(client):
    await client.register_tasks(["t.batch"])
    js = client.conn.js
    first = (await js.stream_info(client.names.jobs_stream)).state.last_seq + 1
    ids = await client.submit_specs([client.build_spec("t.batch", [i]) for i in range(1200)])  # three chunks
    store = await client.ops.store()
    info = await js.stream_info(client.names.jobs_stream)
    assert info.state.last_seq - first + 1 == 1200
    seen = set()
    for seq in (first, first + 1, first + 499, first + 500, first + 777, info.state.last_seq):
        raw = await js.get_msg(client.names.jobs_stream, seq)
        job = codec.decode(raw.data, JobMessage)
        entry = await store.get(job.record.id)
        assert entry is not None and entry.revision == job.rev  # the work message carries the real revision
        assert (raw.headers or {}).get("Nats-Batch-Id")  # and went in a batch
        seen.add(job.record.id)
    assert seen <= set(ids)


async def test_completed_writes_of_one_turn_batch_and_fall_back_one_by_one(client):
    store = await client.ops.store()
    revs = [await store.create(f"cas{i}", b"v0") for i in range(3)]
    results: dict[int, asyncio.Future] = {i: asyncio.get_running_loop().create_future() for i in range(6)}

    def cb(i):
        return lambda ack, exc: results[i].set_result((ack, exc))

    # One turn, all good: one batch, consecutive revisions.
    batches = store.batches.batches
    for i in range(3):
        assert store.update_cb(f"cas{i}", b"v1", revs[i], cb(i))
    got = [await asyncio.wait_for(results[i], 5) for i in range(3)]
    assert store.batches.batches == batches + 1
    new_revs = [ack.seq for ack, exc in got]
    assert all(exc is None for _, exc in got) and new_revs == list(range(new_revs[0], new_revs[0] + 3))
    for i in range(3):
        assert (await store.get(f"cas{i}")).revision == new_revs[i]
    # One stale revision: the batch fails whole, each write goes again alone.
    fallbacks = store.batches.fallbacks
    assert store.update_cb("cas0", b"v2", new_revs[0], cb(3))
    assert store.update_cb("cas1", b"v2", revs[1], cb(4))  # stale
    assert store.update_cb("cas2", b"v2", new_revs[2], cb(5))
    (a0, e0), (a1, e1), (a2, e2) = [await asyncio.wait_for(results[i], 5) for i in (3, 4, 5)]
    assert store.batches.fallbacks == fallbacks + 1
    assert e0 is None and e2 is None and isinstance(a0, PubAck) and isinstance(a2, PubAck)
    assert isinstance(e1, PublishError) and e1.err_code == WRONG_LAST_SEQUENCE
    assert (await store.get("cas0")).value == b"v2" and (await store.get("cas1")).value == b"v1"


async def test_a_recreated_consumer_redelivers_acked_messages_and_the_worker_skips_them(client, start_worker):
    names = client.names
    info = await client.conn.js.stream_info(names.jobs_stream)
    assert info.config.retention == api.RetentionPolicy.LIMITS
    calls: dict[int, int] = {}
    reg = Registry()

    async def counted(i):
        calls[i] = calls.get(i, 0) + 1

    reg.register(counted, name="t.counted")
    worker = await start_worker(reg)
    ids = await client.submit_specs([client.build_spec("t.counted", [i]) for i in range(30)])
    consumer = names.consumer_name("default", "default")
    await _until(lambda: _acked(client, consumer), 20)
    await worker.stop()
    assert sum(calls.values()) == 30
    # No leader ran, so nothing was purged: the acked messages are still in the stream.
    assert await _stream_msgs(client) >= 30
    await client.conn.js.delete_consumer(names.jobs_stream, consumer)
    worker = await start_worker(reg)  # re-creates the consumer: every message is delivered again
    await _until(lambda: _acked(client, consumer, delivered=30), 20)
    await worker.stop()
    assert sum(calls.values()) == 30 and set(calls.values()) == {1}  # none ran again
    for job_id in ids:
        rec = await client.get(job_id)
        assert rec.state == JobState.COMPLETED and len(rec.attempts) == 1


async def _acked(client: Client, consumer: str, delivered: int = 0) -> bool:
    ci = await client.conn.js.consumer_info(client.names.jobs_stream, consumer)
    return ci.num_pending == 0 and ci.num_ack_pending == 0 and ci.delivered.stream_seq > 0 \
        and (ci.delivered.consumer_seq >= delivered)


async def _until(check, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_purge_never_removes_an_unacked_message(client):
    names = client.names
    await client.register_tasks(["t.batch"])
    ids = await client.submit_specs([client.build_spec("t.batch", [i]) for i in range(10)])
    js = client.conn.js
    consumer = names.consumer_name("default", "default")
    sub = await js.pull_subscribe_bind(consumer, names.jobs_stream)
    msgs = await sub.fetch(10, timeout=5)
    assert len(msgs) == 10
    by_seq = sorted(msgs, key=lambda m: m.metadata.sequence.stream)
    for m in by_seq[:3] + by_seq[4:6]:  # the 4th stays unacked
        await m.ack_sync()
    # Backlog counts what is not acknowledged (5 of 10), not what the stream still holds (10).
    assert (await client.queue_depths()) == {"default.default": 5}
    purger = Purger(client.conn, grace=0)
    purged = await purger.pass_once()
    assert purged == 3  # below the ack floor only: the unacked 4th and everything after it stay
    left = {codec.decode((await js.get_msg(names.jobs_stream, m.metadata.sequence.stream)).data,
                         JobMessage).record.id for m in by_seq[3:]}
    assert len(left) == 7 and left <= set(ids)
    for m in by_seq[:3]:
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.get_msg(names.jobs_stream, m.metadata.sequence.stream)
    # A second acknowledging consumer on the same subject that has acked nothing holds the purge back.
    await js.add_consumer(names.jobs_stream, api.ConsumerConfig(
        durable_name="second", filter_subject=names.job_subject("default", "default"),
        ack_policy=api.AckPolicy.EXPLICIT))
    for m in by_seq[3:4] + by_seq[6:]:
        await m.ack_sync()
    assert await purger.pass_once() == 0
    await js.delete_consumer(names.jobs_stream, "second")
    assert await purger.pass_once() == 7
    assert await _stream_msgs(client) == 0


async def test_an_old_work_queue_stream_is_kept_and_still_works(settings, caplog):
    import nats as nats_py

    nc = await nats_py.connect(settings.nats.url)
    try:
        names = Names(settings.namespace)
        await nc.jetstream().add_stream(api.StreamConfig(
            name=names.jobs_stream, subjects=[names.jobs_wildcard()], retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE))
    finally:
        await nc.close()
    client = await Client.connect(settings)
    try:
        info = await client.conn.js.stream_info(client.names.jobs_stream)
        assert info.config.retention == api.RetentionPolicy.WORK_QUEUE
        assert any("work-queue retention" in r.getMessage() and "chronos admin init" in r.getMessage()
                   for r in caplog.records)
        await ensure_topology(client.conn)  # idempotent on the old shape
        await client.register_tasks(["t.batch"])
        await client.submit_specs([client.build_spec("t.batch", [i]) for i in range(5)])
        assert await Purger(client.conn, grace=0).pass_once() == 0  # nothing to purge on a work-queue stream
    finally:
        await client.close()


async def test_purge_waits_grace_after_the_floor_passed_a_message(client):
    # The max-deliveries backstop reads a message by sequence after the floor may have passed it:
    # a message is purged only once it has been below the ack floor for `grace` seconds.
    from chronos.clock import FakeClock

    names = client.names
    await client.register_tasks(["t.batch"])
    await client.submit_specs([client.build_spec("t.batch", [i]) for i in range(4)])
    sub = await client.conn.js.pull_subscribe_bind(names.consumer_name("default", "default"), names.jobs_stream)
    for m in await sub.fetch(4, timeout=5):
        await m.ack_sync()
    clock = FakeClock(start=1000.0)
    purger = Purger(client.conn, grace=10.0, clock=clock)
    assert await purger.pass_once() == 0  # just passed: kept
    clock.advance(9.0)
    assert await purger.pass_once() == 0
    clock.advance(1.5)
    assert await purger.pass_once() == 4
    assert await _stream_msgs(client) == 0


class _Index:
    """The job index's answers for repair_lost (a scheduler node's SQLite index, faked: not server behaviour)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.caught_up = asyncio.Event()
        self.caught_up.set()

    async def counts(self, window: float = 0.0):
        from chronos.readmodel import CountsReply

        return CountsReply(rows=[("default", "default", "available", len(self.ids))])

    async def ids_in_state(self, state: str, *, limit: int = 1000, after: str | None = None) -> list[str]:
        return [i for i in self.ids if after is None or i > after][:limit] if state == "available" else []


async def test_lost_work_messages_are_republished_only_once_the_queue_holds_nothing(client):
    import json

    names = client.names
    await client.register_tasks(["t.batch"])
    ids = await client.submit_specs([client.build_spec("t.batch", [i]) for i in range(3)])
    purger = Purger(client.conn, grace=0, ops=client.ops, index=_Index(sorted(ids)), rescue_after=0.0)
    # The consumer still holds the messages: nothing is lost, nothing republished (a new generation
    # for a job whose first message still waits could run it twice).
    assert await purger.repair_lost() == 0 and await purger.repair_lost() == 0
    # Someone purges the queued messages (a stolen scheduler credential could).
    reply = await client.conn.nc.request(f"$JS.API.STREAM.PURGE.{names.jobs_stream}", json.dumps({}).encode())
    assert json.loads(reply.data)["purged"] == 3
    assert await purger.repair_lost() == 0  # one look is not enough (a move may be in flight)
    assert await purger.repair_lost() == 3
    for job_id in ids:
        rec = await client.get(job_id)
        assert rec.state == JobState.AVAILABLE and rec.gen == 2
    assert await _stream_msgs(client) == 3  # a fresh work message each
