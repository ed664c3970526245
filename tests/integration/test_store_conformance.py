"""One contract, every Store: the memory double and the SQLite store must behave like the KV store."""

import asyncio

import pytest

from chronos.connection import connect, ensure_topology
from chronos.errors import ConflictError
from chronos.store.kv import KVStore
from chronos.store.memory import MemoryStore
from chronos.store.sqlite import SQLiteStore


@pytest.fixture(params=["memory", "kv", "sqlite"])
async def store(request, settings, tmp_path):
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        s = await SQLiteStore.open(tmp_path / "store.sqlite3")
        yield s
        await s.close()
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
        except TimeoutError:
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


async def test_revisions_increase_across_keys(store):
    revs = [await store.put("r.a", b"1"), await store.create("r.b", b"2")]
    revs.append(await store.update("r.a", b"3", revs[0]))
    assert revs == sorted(revs) and len(set(revs)) == 3


async def test_update_or_delete_of_a_missing_key_conflicts(store):
    with pytest.raises(ConflictError):
        await store.update("missing", b"1", 1)
    with pytest.raises(ConflictError):
        await store.delete("missing", 1)
    await store.delete("missing")  # without a revision: nothing to do, no error


async def _next_change(watcher, timeout=5.0):
    return await asyncio.wait_for(watcher.__anext__(), timeout)


async def test_watch_with_existing_then_a_delete(store):
    rev = await store.put("w.a", b"1")
    await store.put("other.b", b"2")
    watcher = store.watch("w.>", include_existing=True)
    try:
        first = await _next_change(watcher)
        assert (first.key, first.value, first.revision) == ("w.a", b"1", rev)
        await store.delete("w.a", rev)
        gone = await _next_change(watcher)
        assert (gone.key, gone.value) == ("w.a", None) and gone.revision > rev
    finally:
        await watcher.aclose()


# --- SQLite only: what a file shared on one box adds -------------------------------------------


async def test_sqlite_two_handles_on_one_file_share_revisions_and_watch(tmp_path):
    path = tmp_path / "shared.sqlite3"
    async with await SQLiteStore.open(path, poll_interval=0.05) as a, await SQLiteStore.open(path) as b:
        rev = await a.create("job.1", b"v1")
        with pytest.raises(ConflictError):
            await b.create("job.1", b"other")
        watcher = a.watch("job.>")
        try:
            pending = asyncio.ensure_future(_next_change(watcher))
            # b's write does not wake a's watcher directly: a sees it by polling the file.
            # Retry the write until the watcher (subscribed on its first step) sees one.
            for i in range(50):
                rev = await b.update("job.1", f"v{i + 2}".encode(), rev)
                done, _ = await asyncio.wait({pending}, timeout=0.2)
                if done:
                    break
            else:
                pytest.fail("a's watcher never saw b's write")
            seen = pending.result()
            assert seen.key == "job.1" and seen.value.startswith(b"v")
        finally:
            await watcher.aclose()
    async with await SQLiteStore.open(path) as reopened:
        assert (await reopened.get("job.1")).revision == rev


async def test_sqlite_close_ends_watchers(tmp_path):
    s = await SQLiteStore.open(tmp_path / "s.sqlite3")

    async def drain():
        return [e async for e in s.watch()]

    task = asyncio.ensure_future(drain())
    await s.put("a", b"1")
    await s.close()
    await asyncio.wait_for(task, 5)
