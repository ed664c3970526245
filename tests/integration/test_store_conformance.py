"""One contract, every Store: the memory double must behave like the KV store."""

import asyncio

import pytest

from chronos.connection import connect, ensure_topology
from chronos.errors import ConflictError
from chronos.store.kv import KVStore
from chronos.store.memory import MemoryStore


@pytest.fixture(params=["memory", "kv"])
async def store(request, settings):
    if request.param == "memory":
        yield MemoryStore()
        return
    conn = await connect(settings)
    await ensure_topology(conn)
    bucket = conn.names.control_bucket
    yield KVStore(await conn.kv(bucket), conn.publisher, bucket)
    await conn.close()


async def test_get_missing_is_none(store):
    assert await store.get("nope") is None


async def test_create_then_conflict(store):
    rev = await store.create("a", b"1")
    assert (await store.get("a")).value == b"1"
    assert (await store.get("a")).revision == rev
    with pytest.raises(ConflictError):
        await store.create("a", b"2")


async def test_update_is_compare_and_set(store):
    rev = await store.create("k", b"1")
    rev2 = await store.update("k", b"2", rev)
    assert rev2 > rev
    with pytest.raises(ConflictError):
        await store.update("k", b"3", rev)  # stale revision
    assert (await store.get("k")).value == b"2"


async def test_pipelined_updates_resolve_in_order(store):
    rev = await store.create("p", b"0")
    first = await store.update_nowait("p", b"1", rev)
    stale = await store.update_nowait("p", b"x", rev)
    assert await first > rev
    with pytest.raises(ConflictError):
        await stale


async def test_delete_with_revision(store):
    rev = await store.put("d", b"1")
    with pytest.raises(ConflictError):
        await store.delete("d", rev + 1000)
    await store.delete("d", rev)
    assert await store.get("d") is None


async def test_entries_match_patterns(store):
    await store.put("cancel.a", b"1")
    await store.put("cancel.b", b"2")
    await store.put("unique.c", b"3")
    keys = [e.key for e in await store.entries("cancel.>")]
    assert keys == ["cancel.a", "cancel.b"]
    assert len(await store.entries()) == 3


async def test_watch_sees_new_writes(store):
    seen = asyncio.get_running_loop().create_future()

    async def follow():
        async for e in store.watch("cancel.>"):
            if not seen.done():
                seen.set_result(e)
            return

    task = asyncio.ensure_future(follow())
    # The watcher must be subscribed before the write; retry the write until it is seen.
    for i in range(50):
        await store.put("cancel.w", str(i).encode())
        try:
            entry = await asyncio.wait_for(asyncio.shield(seen), 0.2)
            break
        except asyncio.TimeoutError:
            continue
    else:
        pytest.fail("watch saw nothing")
    task.cancel()
    assert entry.key == "cancel.w"


async def test_entries_right_after_a_write_sees_it(store):
    # Regression: nats-py's kv.keys()/watch() report "no entries" when the first
    # message is delivered but not yet processed; entries() must never miss a write.
    for i in range(40):
        await store.put(f"fresh.{i}", b"v")
        keys = [e.key for e in await store.entries("fresh.>")]
        assert f"fresh.{i}" in keys and len(keys) == i + 1


async def test_entries_skips_deleted_and_filters(store):
    await store.put("x.1", b"1")
    rev = await store.put("x.2", b"2")
    await store.put("y.1", b"3")
    await store.delete("x.2", rev)
    assert [e.key for e in await store.entries("x.>")] == ["x.1"]
    assert await store.entries("z.>") == []
