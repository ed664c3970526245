"""Fleet-wide rate and concurrency limits against a real server (issue 16, deliverables 1-2).

Workers here run in the test's loop, each with its own connection: to the server they are as
separate as processes (tests/faults/test_limits_kill.py and ``chronos bench limits`` use
processes). Start and end times are recorded by the task itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import msgspec
import pytest

import chronos
from chronos import Registry
from chronos.errors import ConfigError, ValidationError
from chronos.limits import task_limits
from chronos.states import JobState


def with_worker(settings, **changes):
    return msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, **changes))


class Runs:
    """(job id, key, start, end) per run, recorded by the task; ``changed`` wakes waiters."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, float, float]] = []
        self.active: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.changed = asyncio.Event()

    async def wait_for(self, n: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.runs) < n:
                self.changed.clear()
                await self.changed.wait()


def limited_registry(runs: Runs, name: str, sleep: float = 0.0, **limits) -> Registry:
    reg = Registry()

    async def fn(key: str = "", i: int = 0) -> str:
        from chronos.worker.context import current_job

        start = time.time()
        runs.active[key] += 1
        runs.peak[key] = max(runs.peak[key], runs.active[key])
        try:
            if sleep:
                await asyncio.sleep(sleep)
        finally:
            runs.active[key] -= 1
            ctx = current_job()
            runs.runs.append((ctx.job_id if ctx else "", key, start, time.time()))
            runs.changed.set()
        return key

    reg.register(fn, name=name, limits=task_limits(**limits))
    return reg


def overlaps(runs: list[tuple[str, str, float, float]]) -> int:
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _id, key, start, end in runs:
        by_key[key].append((start, end))
    n = 0
    for spans in by_key.values():
        spans.sort()
        for (s1, e1), (s2, _e2) in zip(spans, spans[1:]):
            if s2 < e1:
                n += 1
    return n


async def test_rate_limit_holds_across_two_workers(client, settings, start_worker):
    runs = Runs()
    reg = lambda: limited_registry(runs, "lim.rate", rate_limit="10/s")  # noqa: E731
    await start_worker(reg(), worker_id="w1")
    await start_worker(reg(), worker_id="w2")
    await client.register_tasks(["lim.rate"])
    n = 30
    ids = [await client.submit("lim.rate", {"i": i}) for i in range(n)]
    await runs.wait_for(n, timeout=60)
    starts = sorted(r[2] for r in runs.runs)
    span = starts[-1] - starts[0]
    # 30 starts at 10/s, one at once: the first and last are >= 2.9 s apart (less a little
    # for clock granularity), and no 1 s window holds more than 10 (+1 for the edges).
    assert span >= 2.8, span
    worst = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert worst <= 11, worst
    for job_id in ids:
        rec = await client.wait(job_id, timeout=30)
        assert rec.state == JobState.COMPLETED
        assert rec.attempt == 1, "waiting on a rate limit must not spend an attempt"
        assert rec.delivered - rec.handed_back == 1


async def test_concurrency_one_per_key_across_three_workers(client, settings, start_worker):
    runs = Runs()
    reg = lambda: limited_registry(runs, "lim.conc", sleep=0.05, concurrency=1, limit_key="key")  # noqa: E731
    for w in ("a", "b", "c"):
        await start_worker(reg(), worker_id=f"w-{w}")
    await client.register_tasks(["lim.conc"])
    n, keys = 60, 4
    ids = [await client.submit("lim.conc", {"key": f"k{i % keys}", "i": i}) for i in range(n)]
    await runs.wait_for(n, timeout=120)
    assert overlaps(runs.runs) == 0
    assert max(runs.peak.values()) == 1
    for job_id in ids:
        rec = await client.wait(job_id, timeout=30)
        assert rec.state == JobState.COMPLETED
        assert rec.attempt == 1
    # Every slot is given back: the snapshot shows no holder once all are done.
    snap = await client.limits()
    assert all(not v.holders for v in snap.limits if v.kind == "concurrency")


async def test_a_long_wait_on_a_key_is_not_dead_lettered_by_max_deliver(client, settings, start_worker):
    """max_deliver 4: a job that waits through far more hand-backs than that is re-parked with a
    fresh generation, never sent to the DLQ by the backstop."""
    runs = Runs()
    s = with_worker(settings, max_deliver=4)
    gate = asyncio.Event()
    reg = Registry()

    async def hog(key: str) -> None:
        await gate.wait()

    async def after(key: str) -> str:
        runs.runs.append(("", key, time.time(), time.time()))
        runs.changed.set()
        return "ran"

    reg.register(hog, name="lim.hog", limits=task_limits(concurrency=1, limit_key="key"))
    # The same limit scope: both tasks share the queue's concurrency of 1.
    reg.register(after, name="lim.after")
    handle = await start_worker(reg, s, worker_id="w-long")
    await client.set_queue_limit("default", concurrency=1)
    await client.register_tasks(["lim.hog", "lim.after"])
    hog_id = await client.submit("lim.hog", {"key": "x"})
    await wait_running(client, hog_id)
    waiting = await client.submit("lim.after", {"key": "x"})
    # Wait until it has been handed back well past max_deliver, then let the hog finish.
    limiter = handle.service.limiter
    async with asyncio.timeout(60):
        while limiter.reparked < 2:
            await asyncio.sleep(0.05)
    snap = await client.limits()
    views = [v for v in snap.limits if v.scope == "queue" and v.name == "default" and v.kind == "concurrency"]
    assert views and views[0].holders and views[0].holders[0].job_id == hog_id
    assert views[0].waiting >= 1
    gate.set()
    rec = await client.wait(waiting, timeout=60)
    assert rec.state == JobState.COMPLETED, (rec.state, rec.error)
    assert rec.attempt == 1
    assert rec.gen > 1, "it was re-parked with a fresh generation"
    assert await client.dlq_list() == []
    await client.clear_queue_limit("default")


async def wait_running(client, job_id: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while (await client.get(job_id)).state != JobState.RUNNING:
            await asyncio.sleep(0.02)


async def test_queue_limits_set_read_and_clear(client):
    assert await client.queue_limit("mail") is None
    lim = await client.set_queue_limit("mail", rate="600/m", burst=5)
    assert (lim.rate, lim.burst, lim.concurrency) == ("600/m", 5, None)
    lim = await client.set_queue_limit("mail", concurrency=3)  # the rate is kept
    assert (lim.rate, lim.burst, lim.concurrency) == ("600/m", 5, 3)
    assert (await client.queue_limits())["mail"].concurrency == 3
    lim = await client.set_queue_limit("mail", rate=None)
    assert (lim.rate, lim.concurrency) == (None, 3)
    await client.clear_queue_limit("mail")
    assert await client.queue_limit("mail") is None


@pytest.mark.parametrize("kwargs, field", [
    ({"rate": "10/x"}, "rate"), ({"rate": "0/s"}, "rate"), ({"rate": "-1/s"}, "rate"), ({"rate": "abc"}, "rate"),
    ({"concurrency": 0}, "concurrency"), ({"concurrency": -3}, "concurrency"), ({"rate": "1/s", "burst": 0}, "burst"),
])
async def test_a_malformed_queue_limit_is_one_line_and_stores_nothing(client, kwargs, field):
    with pytest.raises(ValidationError) as err:
        await client.set_queue_limit("bad", **kwargs)
    assert str(err.value).startswith(f"{field}:") and "\n" not in str(err.value)
    assert await client.queue_limit("bad") is None


@pytest.mark.parametrize("kwargs, field", [
    ({"rate_limit": "10/x"}, "rate_limit"), ({"rate_limit": 0}, "rate_limit"), ({"rate_limit": "abc"}, "rate_limit"),
    ({"concurrency": 0}, "concurrency"), ({"concurrency": -1}, "concurrency"),
    ({"rate_limit": "5/s", "burst": -1}, "burst"), ({"limit_key": "k"}, "limit_key"),
    ({"concurrency": 1, "limit_key": ""}, "limit_key"),
])
def test_a_malformed_task_limit_raises_at_registration(kwargs, field):
    with pytest.raises(ConfigError) as err:
        chronos.task(name="lim.bad", registry=Registry(), **kwargs)(lambda key=None: None)
    assert f": {field}:" in str(err.value)


async def test_a_key_the_args_lack_fails_the_submit_of_a_handle(client):
    chronos.set_client(client)
    try:
        @chronos.task(name="lim.handle", registry=Registry(), concurrency=1, limit_key="customer.id")
        async def handle(customer: dict) -> None:
            return None

        with pytest.raises(ValidationError, match="limit_key: the job's args have no 'customer.id'"):
            await handle.submit({"name": "x"})
        ref = await handle.submit({"id": 7})
        assert (await ref.get()).state in (JobState.AVAILABLE, JobState.RUNNING, JobState.COMPLETED)
    finally:
        chronos.set_client(None)


async def test_a_key_the_args_lack_fails_a_submit_by_name_of_a_task_registered_here(client):
    """``client.submit(name, ...)`` checks the key as a handle does when this process registered
    the task (any registry): one line naming the field, nothing stored."""
    reg = Registry()

    async def by_name(tenant: str = "") -> None:
        return None

    reg.register(by_name, name="lim.byname", limits=task_limits(rate_limit="5/s", limit_key="tenant"))
    await client.register_tasks(["lim.byname"])
    before = await client.list()
    for submit in (lambda: client.submit("lim.byname", {"other": 1}),
                   lambda: client.submit_job("lim.byname", {"other": 1}),
                   lambda: client.submit_specs([client.build_spec("lim.byname", {"other": 1})])):
        with pytest.raises(ValidationError) as err:
            await submit()
        text = str(err.value)
        assert "limit_key: the job's args have no 'tenant'" in text and "\n" not in text, text
    assert await client.list() == before  # nothing stored
    job = await client.submit("lim.byname", {"tenant": "acme"})
    assert (await client.get(job)).spec.args == {"tenant": "acme"}


async def test_a_key_the_args_lack_is_discarded_at_the_worker_once(client, start_worker):
    runs = Runs()
    await start_worker(limited_registry(runs, "lim.keyless", concurrency=1, limit_key="tenant"))
    await client.register_tasks(["lim.keyless"])
    # A spec made where the declaration is unknown (another process): this one knows it (the worker
    # runs here), so its submit would refuse these args; the spec is changed after the checks.
    spec = msgspec.structs.replace(client.build_spec("lim.keyless", {"tenant": "t"}, max_attempts=5),
                                   args={"key": "k"})
    job = (await client.submit_specs([spec]))[0]
    rec = await client.wait(job, timeout=30)
    assert rec.state == JobState.DISCARDED
    assert "limit_key: the job's args have no 'tenant'" in rec.error
    assert rec.attempt == 0 and runs.runs == []
    entry = await client.dlq_get(job)
    assert "limit_key" in entry.reason


async def test_an_unlimited_task_never_touches_the_limits_bucket(client, start_worker, settings):
    runs = Runs()
    reg = Registry()

    async def free() -> None:
        runs.runs.append(("", "", 0.0, 0.0))
        runs.changed.set()

    reg.register(free, name="lim.free")
    h = await start_worker(reg)
    await client.register_tasks(["lim.free"])
    for _ in range(5):
        await client.submit("lim.free", [])
    await runs.wait_for(5, timeout=30)
    info = await client.conn.js.stream_info(client.names.kv_stream(client.names.limits_bucket))
    assert info.state.messages == 0
    assert h.service.limiter.waited == 0


async def test_a_queue_concurrency_set_live_holds_across_workers(client, settings, start_worker):
    runs = Runs()
    reg = lambda: limited_registry(runs, "lim.q", sleep=0.1)  # noqa: E731  (no task limits)
    w1 = await start_worker(reg(), worker_id="q1")
    w2 = await start_worker(reg(), worker_id="q2")
    await client.register_tasks(["lim.q"])
    await client.set_queue_limit("default", concurrency=2)
    try:
        async with asyncio.timeout(20):  # both workers' watches have it
            while not all(w.service.limiter.queue_limits.get("default") for w in (w1, w2)):
                await asyncio.sleep(0.02)
        ids = [await client.submit("lim.q", {"key": "q", "i": i}) for i in range(12)]
        await runs.wait_for(12, timeout=60)
        assert runs.peak["q"] == 2, runs.peak  # two at once, never three
        for job_id in ids:
            assert (await client.wait(job_id, timeout=30)).attempt == 1
    finally:
        await client.clear_queue_limit("default")


# --- a released slot wakes a waiter (no polling) ------------------------------------------------
async def _until(check, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_finished_job_hands_its_slot_to_the_job_waiting_here(client, settings, start_worker):
    """One worker, limit 1 per key, a 30 s lease (so a waiter's own poll comes after 2.5 s at the
    soonest): the hog's end hands its slot over and the waiter starts at once, handed back once."""
    release = asyncio.Event()
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    reg = Registry()

    async def keyed(key: str, role: str) -> None:
        started[role] = time.monotonic()
        if role == "hog":
            await release.wait()
        ended[role] = time.monotonic()

    reg.register(keyed, name="lim.wake", limits=task_limits(concurrency=1, limit_key="key"))
    h = await start_worker(reg, with_worker(settings, limit_lease=30.0), worker_id="w-wake")
    await client.register_tasks(["lim.wake"])
    hog = await client.submit("lim.wake", {"key": "x", "role": "hog"})
    await wait_running(client, hog)
    waiter = await client.submit("lim.wake", {"key": "x", "role": "waiter"})
    limiter = h.service.limiter
    await _until(lambda: limiter.parked == 1, 20)
    t_parked = time.monotonic()
    await asyncio.sleep(1.5)  # the waiter stays parked: no polls meanwhile (checked below)
    release.set()
    rec = await client.wait(waiter, timeout=20)
    assert rec.state == JobState.COMPLETED and rec.attempt == 1
    gap = started["waiter"] - ended["hog"]
    assert gap < 1.0, f"the waiter started {gap:.3f} s after the slot was released"
    assert rec.handed_back == 1, rec.handed_back  # one hand-back: parked, never polled
    assert limiter.handed_over == 1 and limiter.woken["handover"] == 1
    assert started["waiter"] - t_parked >= 1.5


async def test_a_slot_released_elsewhere_wakes_the_job_parked_here(client, settings, start_worker):
    """The slot is held by another process (a LimitStore on its own connection); its release (a
    delete) reaches the parked job through the worker's watch, long before its poll."""
    from chronos.connection import connect
    from chronos.limits import SlotHolder
    from chronos.limitstore import LimitStore

    started: dict[str, float] = {}
    reg = Registry()

    async def keyed(key: str) -> None:
        started[key] = time.monotonic()

    reg.register(keyed, name="lim.remote", limits=task_limits(concurrency=1, limit_key="key"))
    h = await start_worker(reg, with_worker(settings, limit_lease=30.0), worker_id="w-remote")
    await client.register_tasks(["lim.remote"])
    other = await connect(settings)
    try:
        store = LimitStore(other)
        hold = SlotHolder(job_id="elsewhere", worker="other", since=time.time(), scope="task", name="lim.remote",
                          key="y", limit=1, lease=30.0)
        lease = await store.acquire("task", "lim.remote", "y", 1, hold, 30.0)
        assert lease is not None
        job = await client.submit("lim.remote", {"key": "y"})
        limiter = h.service.limiter
        await _until(lambda: limiter.parked == 1, 20)
        await asyncio.sleep(0.5)  # let the worker's slot watch start (it starts at the first park)
        t_release = time.monotonic()
        await store.release_nowait(lease)
        rec = await client.wait(job, timeout=20)
        assert rec.state == JobState.COMPLETED and rec.attempt == 1
        assert started["y"] - t_release < 1.0, started["y"] - t_release
        assert limiter.woken["released"] >= 1 and limiter.woken["poll"] == 0, limiter.woken
    finally:
        await other.close()


async def test_the_snapshot_lists_the_most_waited_on_and_counts_the_rest(client):
    """Many keys: ``limits(top=N)`` lists N (the most waiting first in rank), ``omitted`` counts the
    rest; waiters are counted per limit from subject counts, with no holder needed."""
    from chronos import codec
    from chronos.limits import RateState, SlotHolder, Waiter, digest
    from chronos.limitstore import RATE_PREFIX, SLOT_PREFIX, WAIT_PREFIX

    pub, bucket, now = client.conn.publisher, client.names.limits_bucket, time.time()
    futs = []
    for i in range(300):  # rate limits 1/s, i % 100 turns reserved ahead (i % 100 waiting)
        st = RateState(tat=now + (i % 100) + 1, scope="task", name="snap.rate", key=f"r{i}", limit="1/s")
        futs.append(await pub.publish(client.names.kv_subject(bucket, RATE_PREFIX + digest("task", "snap.rate", f"r{i}")),
                                      codec.encode(st)))
    for i in range(5):  # concurrency limits: c0 has 500 waiters, c1..c4 one each, c4 with no holder
        group = SLOT_PREFIX + digest("task", "snap.conc", f"c{i}")
        if i < 4:
            h = SlotHolder(job_id=f"h{i}", worker="w", since=now, scope="task", name="snap.conc", key=f"c{i}",
                           limit=1, lease=60.0)
            futs.append(await pub.publish(client.names.kv_subject(bucket, group + ".0"), codec.encode(h),
                                          {"Nats-TTL": "60s"}))
        for j in range(500 if i == 0 else 1):
            w = Waiter(job_id=f"w{i}-{j}", scope="task", name="snap.conc", key=f"c{i}", since=now)
            futs.append(await pub.publish(
                client.names.kv_subject(bucket, WAIT_PREFIX + group[len(SLOT_PREFIX):] + f".w{i}-{j}"),
                codec.encode(w), {"Nats-TTL": "60s"}))
    for f in futs:
        await f
    snap = await client.limits(top=10)
    assert len(snap.limits) == 10 and snap.omitted == 305 - 10 and not snap.truncated
    conc = {v.key: v for v in snap.limits if v.kind == "concurrency"}
    assert conc["c0"].waiting == 500 and conc["c0"].holders[0].job_id == "h0"
    rates = sorted(v.waiting for v in snap.limits if v.kind == "rate")
    assert len(rates) == 9 and rates[0] >= 97, rates  # the three keys at each of 99, 98 and 97 turns ahead
    full = await client.limits(top=1000)
    assert len(full.limits) == 305 and full.omitted == 0
    lone = [v for v in full.limits if v.key == "c4"]
    assert lone and lone[0].name == "snap.conc" and lone[0].waiting == 1 and not lone[0].holders
    with pytest.raises(ValidationError, match="^top:"):
        await client.limits(top=0)


async def test_a_release_during_a_renewal_still_frees_the_slot(client, settings):
    """The renewal moves the slot's revision while the job finishes: the release waits for it and
    goes out over the new revision (sent over the old one, it was refused and the slot stayed held
    until its lease ran out: a 5 s stall in bench limits)."""
    from chronos.limits import SlotHolder
    from chronos.limitstore import LimitStore

    store = LimitStore(client.conn)
    mine = SlotHolder(job_id="a", worker="w", since=time.time(), scope="task", name="lim.race", key="k", lease=30.0)
    for how in ("release", "hand over"):
        lease = await store.acquire("task", "lim.race", "k", 1, mine, 30.0)
        assert lease is not None
        renewal = asyncio.ensure_future(store.renew(lease, 30.0))
        await asyncio.sleep(0)  # the renewal's write is in flight
        assert lease.renewing
        handed = asyncio.get_running_loop().create_future()
        if how == "release":
            done = store.release_nowait(lease)
        else:
            store.hand_over_nowait(lease, "b", 1, 2.0, handed.set_result)
        assert await renewal
        if how == "release":
            await done
            other = SlotHolder(job_id="c", worker="w2", since=time.time(), scope="task", name="lim.race", key="k",
                               lease=30.0)
            got = await store.acquire("task", "lim.race", "k", 1, other, 30.0)
            assert got is not None, "the release was refused: the slot is still held"
            await store.release_nowait(got)
        else:
            assert await handed > 0, "the hand-over was refused"
            taker = SlotHolder(job_id="b", worker="w3", since=time.time(), scope="task", name="lim.race", key="k",
                               lease=30.0)
            got = await store.acquire("task", "lim.race", "k", 1, taker, 30.0)
            assert got is not None and got.holder.job_id == "b"
            await store.release_nowait(got)
