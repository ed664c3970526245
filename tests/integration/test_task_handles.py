"""Task handles against a real server: submit, typed results, retry_on, sync submits, the catalog."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import msgspec
import pytest

import chronos
from chronos.client import Client
from chronos.config import Settings
from chronos.errors import UnknownTaskError, ValidationError
from chronos.sync import SyncClient
from chronos.worker import registry as registry_module
from chronos.worker.registry import Registry

from ..conftest import wait_for_state


class Total(msgspec.Struct):
    total: int
    items: list[int]


reg = Registry()
calls: list[str] = []


@chronos.task(name="h.sum", registry=reg, queue="hq", max_attempts=2)
async def total(items: list[int]) -> Total:
    return Total(sum(items), items)


@chronos.task(name="h.picky", registry=reg, queue="hq", max_attempts=5, retry_on=(TimeoutError,))
async def picky(kind: str) -> str:
    calls.append(kind)
    if kind == "timeout":
        raise TimeoutError("upstream slow")
    raise KeyError(kind)


@chronos.task(name="h.sync", registry=reg, queue="hq")
def sync_double(x: int) -> int:
    return 2 * x


@pytest.fixture
async def bound(client: Client):
    chronos.set_client(client)
    yield client
    chronos.set_client(None)


async def test_submit_binds_and_returns_the_typed_result(bound: Client, start_worker: Any) -> None:
    await start_worker(reg, queues=["hq"])
    job = await total.submit([1, 2, 3])
    assert await job.result(timeout=10) == Total(6, [1, 2, 3])
    rec = await job.get()
    assert rec.spec.queue == "hq" and rec.spec.max_attempts == 2  # the decorator's defaults
    later = await total.with_options(priority="high", tags=["t"]).submit(items=[5])
    rec = await later.wait(10)
    assert rec.spec.priority == "high" and rec.spec.tags == ["t"] and rec.result == {"total": 5, "items": [5]}
    with pytest.raises(ValidationError, match="argument 'items'"):
        await total.submit("not a list")


async def test_retry_on_limits_retries_to_the_named_exceptions(bound: Client, start_worker: Any) -> None:
    await start_worker(reg, queues=["hq"])
    calls.clear()
    job = await picky.submit("key")
    with pytest.raises(chronos.JobFailedError, match="not retried .KeyError is not in the task's retry_on"):
        await job.result(timeout=10)
    assert calls == ["key"]  # one attempt, straight to the DLQ
    fast = picky.with_options(backoff={"kind": "fixed", "base": 0.05, "jitter": False}, max_attempts=3)
    job = await fast.submit("timeout")
    rec = await job.wait(20)
    assert rec.state.value == "discarded" and calls.count("timeout") == 3  # retried until attempts ran out


async def test_sync_submits_from_threads_share_one_connection(settings: Settings, client: Client,
                                                               start_worker: Any) -> None:
    await start_worker(reg, queues=["hq"])
    ids: list[str] = []
    errors: list[BaseException] = []

    def scenario() -> list[int]:
        # Blocking calls, as a web app's threads make them; off this loop, which runs the worker.
        with SyncClient(settings) as sync:
            def submit(i: int) -> None:
                try:
                    for k in range(10):
                        ids.append(sync.submit("h.sync", [i * 10 + k], queue="hq"))
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert errors == [] and len(set(ids)) == 80
            return sorted(sync.wait(j, 20).result for j in ids)

    assert await asyncio.to_thread(scenario) == sorted(2 * n for n in range(80))


async def test_submitting_before_any_worker(client: Client, settings: Settings) -> None:
    # A task whose handle is imported here counts as known, though no worker registered it yet.
    job_id = await client.submit("h.sum", {"items": [1]})
    assert (await client.get(job_id)).spec.queue == "hq"  # its declared queue
    with pytest.raises(UnknownTaskError) as err:
        await client.submit("h.nobody-has-this", [])
    assert "CHRONOS_JOBS__CHECK_TASK_NAMES=false" in str(err.value)


async def test_a_submit_by_name_goes_to_the_queue_the_catalog_gives(client: Client, settings: Settings,
                                                                    start_worker: Any) -> None:
    other = Registry()
    other.register(lambda: "ok", name="h.catalogued", queue="far")
    registry_module._LOCAL.pop("h.catalogued")  # as if the worker ran elsewhere: only the catalog knows it
    await start_worker(other, queues=["far"])
    fresh = await Client.connect(settings)
    try:
        job_id = await fresh.submit("h.catalogued")
        rec = await wait_for_state(fresh, job_id, "completed")
        assert rec.spec.queue == "far" and rec.result == "ok"
    finally:
        await fresh.close()


async def test_a_bad_submit_among_concurrent_ones_fails_alone(settings: Settings, client: Client) -> None:
    """Concurrent sync submits are gathered into batches; one caller's mistake is that caller's error only."""
    outcomes: dict[int, object] = {}

    def scenario() -> None:
        with SyncClient(settings) as sync:
            barrier = threading.Barrier(6)

            def one(i: int) -> None:
                barrier.wait()
                try:
                    outcomes[i] = sync.submit("h.sync", [i], queue="hq", priority="bogus" if i == 3 else "high")
                except ValidationError as exc:
                    outcomes[i] = exc

            threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)

    await asyncio.to_thread(scenario)
    assert isinstance(outcomes[3], ValidationError) and "priority" in str(outcomes[3])
    ok = [v for i, v in outcomes.items() if i != 3]
    assert len(ok) == 5 and all(isinstance(v, str) for v in ok)
    for job_id in ok:
        assert (await client.get(job_id)).spec.priority == "high"
