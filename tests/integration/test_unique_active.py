"""Unique while active (issue 16): one pending-or-running job per key, no time window.

Against a real nats-server: the key is taken by compare-and-set in the unique bucket, so these
tests race real submits, kill a real submitting process, and let real workers finish the jobs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from typing import Any

import pytest

from chronos import Registry
from chronos.clientapi.spec import unique_digest
from chronos.errors import ValidationError
from chronos.states import JobState

from ..conftest import wait_for_state


def _registry() -> tuple[Registry, dict[str, Any]]:
    reg = Registry()
    seen: dict[str, Any] = {"release": asyncio.Event(), "started": asyncio.Event(), "runs": []}

    async def hold(tag: str = "") -> str:
        seen["runs"].append(tag)
        seen["started"].set()
        await seen["release"].wait()
        return tag

    async def quick(tag: str = "") -> str:
        seen["runs"].append(tag)
        return tag

    reg.register(hold, name="hold")
    reg.register(quick, name="quick")
    return reg, seen


async def test_concurrent_submits_of_one_key_make_one_job(client):
    await client.register_tasks(["hold"])
    results = await asyncio.gather(*(client.submit_job("hold", [str(i)], unique="while_active", unique_key="k1")
                                     for i in range(12)))
    ids = {r.id for r in results}
    assert len(ids) == 1, results
    assert sum(1 for r in results if r.outcome == "created") == 1
    assert all(r.outcome == "active" for r in results if r.outcome != "created")
    # The key names that job, and exactly one record exists for the task.
    page = await client.list(task="hold", limit=100)
    assert [j.id for j in page.jobs] == list(ids)


async def test_key_is_free_again_after_completion(client, start_worker):
    reg, seen = _registry()
    await start_worker(reg)
    first = await client.submit_job("hold", ["a"], unique="while_active", unique_key="report")
    assert first.outcome == "created"
    await asyncio.wait_for(seen["started"].wait(), 20)  # running still holds it
    again = await client.submit_job("hold", ["b"], unique="while_active", unique_key="report")
    assert again == (first.id, "active") and again.existing
    seen["release"].set()
    assert (await client.wait(first.id, timeout=20)).state == JobState.COMPLETED
    third = await client.submit_job("hold", ["c"], unique="while_active", unique_key="report")
    assert third.outcome == "created" and third.id != first.id
    assert (await client.wait(third.id, timeout=20)).result == "c"


async def test_key_is_free_after_cancel_and_after_discard(client, start_worker):
    await client.register_tasks(["quick"])
    # Scheduled (pending) holds the key; a cancel frees it.
    a = await client.submit_job("quick", ["a"], unique="while_active", unique_key="x", delay=3600)
    assert (await client.submit_job("quick", ["a2"], unique="while_active", unique_key="x")).id == a.id
    await client.cancel(a.id)
    b = await client.submit_job("quick", ["b"], unique="while_active", unique_key="x", delay=3600)
    assert b.outcome == "created" and b.id != a.id

    # Discarded (attempts spent) frees it too.
    reg = Registry()

    async def fails() -> None:
        raise RuntimeError("no")

    reg.register(fails, name="fails")
    await start_worker(reg)
    c = await client.submit_job("fails", [], unique="while_active", max_attempts=1)
    assert (await client.wait(c.id, timeout=20)).state == JobState.DISCARDED
    d = await client.submit_job("fails", [], unique="while_active", max_attempts=1)
    assert d.outcome == "created" and d.id != c.id


async def test_by_args_and_per_task(client):
    await client.register_tasks(["quick", "hold"])
    a = await client.submit_job("quick", {"user": 1, "n": 2}, unique="while_active", delay=3600)
    same = await client.submit_job("quick", {"n": 2, "user": 1}, unique="while_active", delay=3600)  # key order
    other = await client.submit_job("quick", {"user": 2, "n": 2}, unique="while_active", delay=3600)
    other_task = await client.submit_job("hold", {"user": 1, "n": 2}, unique="while_active", delay=3600)
    assert same == (a.id, "active")
    assert other.outcome == "created" and other_task.outcome == "created"
    # The new modes keep their key in spec.unique; spec.unique_key stays the older dedupe-window mode.
    rec = await client.get(a.id)
    assert rec.spec.unique is not None and rec.spec.unique.key.startswith("args:") and rec.spec.unique_key is None


async def test_bad_input_names_the_field_and_stores_nothing(client):
    await client.register_tasks(["quick"])
    for options, field in ((dict(unique="forever"), "unique"), (dict(debounce=0, unique_key="k"), "debounce"),
                           (dict(debounce=-1, unique_key="k"), "debounce"),
                           (dict(debounce="soon", unique_key="k"), "debounce"),
                           (dict(debounce_max=5, unique_key="k"), "debounce_max"),
                           (dict(unique="while_active", debounce=5), "debounce")):
        with pytest.raises(ValidationError, match=f"^{field}:"):
            await client.submit_job("quick", [1], **options)
    with pytest.raises(ValidationError, match="^debounce: needs a key"):
        await client.submit_job("quick", [], debounce=5)
    assert (await client.list(limit=10)).jobs == []
    bucket = await client.submitter._unique_store()
    assert await bucket.entries() == []


_SUBMITTER = textwrap.dedent("""
    import asyncio, sys
    from chronos import Client
    from chronos.clientapi import submit
    from chronos.config import load_settings

    async def stuck(self, rec):
        print(rec.id, flush=True)  # the key is taken; the record is not written yet
        await asyncio.sleep(3600)

    async def main():
        settings = load_settings(overrides={"namespace": sys.argv[2], "nats": {"url": sys.argv[1]}}, read_env=False)
        client = await Client.connect(settings)
        submit.Submitter._write_new = stuck
        await client.submit_job("quick", ["lost"], unique="while_active", unique_key="crash")

    asyncio.run(main())
""")


async def test_submitter_killed_between_key_and_record_does_not_block_the_key(client, settings):
    await client.register_tasks(["quick"])
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _SUBMITTER, settings.nats.url, settings.namespace,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        lost_id = line.decode().strip()
        assert lost_id, "the submitter ended before taking the key"
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    bucket = await client.submitter._unique_store()
    spec = client.build_spec("quick", ["x"], unique="while_active", unique_key="crash")
    held = await bucket.get(client.names.active_key(unique_digest(spec)))
    assert held is not None and held.value.decode().split()[0] == lost_id  # the dead submitter's
    # The next submit waits out the grace, fences the dead id, and takes the key.
    after = await asyncio.wait_for(client.submit_job("quick", ["x"], unique="while_active", unique_key="crash"), 20)
    assert after.outcome == "created" and after.id != lost_id
    assert await client.ops.read_or_none(lost_id) is None
    # The dead id can never be written now (its submitter, had it only been slow, would lose).
    from chronos.errors import ConflictError
    from chronos.jobs import new_record

    late = new_record(lost_id, spec, 0.0, JobState.AVAILABLE)
    with pytest.raises(ConflictError):
        await (await client.ops.create_nowait(late))
    again = await client.submit_job("quick", ["y"], unique="while_active", unique_key="crash")
    assert again == (after.id, "active")


async def test_slow_submitter_fenced_meanwhile_returns_the_new_holder(client, monkeypatch):
    """A submitter that stalls past the grace between key and record loses its id to the fence
    and returns the job that took the key (never a second job)."""
    from chronos.clientapi import submit as submit_mod

    monkeypatch.setattr(submit_mod, "UNIQUE_GRACE", 0.2)
    await client.register_tasks(["quick"])
    real = submit_mod.Submitter._write_new
    stalled = asyncio.Event()
    go_on = asyncio.Event()
    calls = 0

    async def slow_once(self, rec):
        nonlocal calls
        calls += 1
        if calls == 1:
            stalled.set()
            await go_on.wait()
        await real(self, rec)

    monkeypatch.setattr(submit_mod.Submitter, "_write_new", slow_once)
    slow = asyncio.ensure_future(client.submit_job("quick", ["slow"], unique="while_active", unique_key="s",
                                                   delay=3600))
    await asyncio.wait_for(stalled.wait(), 10)
    fast = await client.submit_job("quick", ["fast"], unique="while_active", unique_key="s", delay=3600)
    assert fast.outcome == "created"
    go_on.set()
    assert await asyncio.wait_for(slow, 20) == (fast.id, "active")
    page = await client.list(task="quick", limit=10)
    assert [j.id for j in page.jobs] == [fast.id]


async def test_task_handles_carry_unique_and_debounce(client):
    import chronos
    from chronos.errors import ConfigError

    reg = Registry()

    @chronos.task(name="h.refresh", registry=reg, unique="while_active")
    async def refresh(customer: int) -> None: ...

    @chronos.task(name="h.notify", registry=reg, debounce=3600)
    async def notify(user: int, text: str) -> None: ...

    with pytest.raises(ConfigError, match="^task h.bad: unique:"):
        chronos.task(name="h.bad", registry=reg, unique="sometimes")(refresh.fn)
    with pytest.raises(ValidationError, match="^task h.notify: debounce:"):
        notify.with_options(debounce=-1)
    await client.register_tasks(["h.refresh", "h.notify"])
    chronos.set_client(client)
    try:
        first = await refresh.with_options(delay=3600).submit(42)
        again = await refresh.submit(42)
        assert first.outcome == "created" and again.existing and again.id == first.id
        other = await refresh.with_options(delay=3600).submit(43)
        assert other.outcome == "created"
        n1 = await notify.with_options(unique_key="user:1").submit(1, "a")
        n2 = await notify.with_options(unique_key="user:1").submit(1, "b")
        assert (n2.id, n2.outcome) == (n1.id, "debounced")
        assert (await client.get(n1.id)).spec.args == {"user": 1, "text": "b"}
    finally:
        chronos.set_client(None)
