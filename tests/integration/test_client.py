"""Client: bad input is refused before anything is published; listing, watching, errors."""

import asyncio

import pytest

from chronos import Client
from chronos.errors import (
    ChronosError,
    ConnectionFailedError,
    JobNotFoundError,
    PayloadTooLargeError,
    UnknownTaskError,
    ValidationError,
)
from chronos.states import JobState

from ..conftest import make_settings


@pytest.fixture
async def known(client):
    await client.register_tasks(["send_email", "resize"])
    return client


async def queue_depth(client) -> int:
    info = await client.conn.js.stream_info(client.names.jobs_stream)
    return info.state.messages


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"task": "send_emial"}, UnknownTaskError, "did you mean 'send_email'"),
        ({"task": "send_email", "args": {"when": object()}}, ValidationError, "args.when"),
        ({"task": "send_email", "args": "just a string"}, ValidationError, "args: must be a list"),
        ({"task": "send_email", "timeout": 0}, ValidationError, "timeout"),
        ({"task": "send_email", "timeout": -5}, ValidationError, "timeout"),
        ({"task": "send_email", "max_attempts": 0}, ValidationError, "max_attempts"),
        ({"task": "send_email", "priority": "urgent"}, ValidationError, "priority: 'urgent'"),
        ({"task": "send_email", "queue": "bad queue!"}, ValidationError, "queue: 'bad queue!'"),
        ({"task": "send_email", "queue": "a.b"}, ValidationError, "queue"),
        # "$" in a pattern matches before a trailing newline: such a queue once passed, and its
        # publish made the server close the connection, leaving the record without its message.
        ({"task": "send_email", "queue": "ok\n"}, ValidationError, "queue"),
        ({"task": "send_email", "delay": -1}, ValidationError, "delay"),
        ({"task": ""}, ValidationError, "task"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_published(known, kwargs, error, text):
    kwargs = dict(kwargs)  # the parameters are shared by every run of this test (conftest runs it twice)
    task = kwargs.pop("task")
    args = kwargs.pop("args", None)
    with pytest.raises(error, match=text):
        await known.submit(task, args, **kwargs)
    assert await queue_depth(known) == 0
    assert (await known.list()).total == 0


async def test_payload_over_the_limit(nats_server, namespace):
    settings = make_settings(nats_server.url, namespace, jobs={"max_payload_bytes": 1000})
    async with await Client.connect(settings) as c:
        await c.register_tasks(["big"])
        with pytest.raises(PayloadTooLargeError, match="over the 1000 byte limit"):
            await c.submit("big", ["x" * 2000])
        assert await queue_depth(c) == 0


async def test_server_down_is_a_clear_error():
    settings = make_settings("nats://127.0.0.1:1", "down")
    with pytest.raises(ConnectionFailedError, match=r"cannot reach NATS at nats://127.0.0.1:1"):
        await Client.connect(settings)


async def test_unknown_job_id(client):
    with pytest.raises(JobNotFoundError, match="no job with id nope"):
        await client.get("nope")
    with pytest.raises(JobNotFoundError):
        await client.cancel("nope")


async def test_list_filters_and_pages(known):
    ids = [await known.submit("send_email", [i], queue="mail") for i in range(5)]
    ids += [await known.submit("resize", [i], tags=["img"]) for i in range(3)]
    page = await known.list(limit=3)
    assert page.total == 8 and len(page.jobs) == 3
    assert [j.id for j in page.jobs] == ids[::-1][:3]  # newest first
    assert (await known.list(queue="mail")).total == 5
    assert (await known.list(task="resize")).total == 3
    assert (await known.list(tag="img")).total == 3
    assert (await known.list(state="available")).total == 8
    assert (await known.list(state="running")).total == 0
    with pytest.raises(ValidationError, match="state: 'bogus'"):
        await known.list(state="bogus")


async def test_bulk_submit_reports_progress(known):
    specs = [known.build_spec("resize", [i]) for i in range(1200)]
    seen: list[int] = []
    ids = await known.submit_specs(specs, progress=seen.append)
    assert len(set(ids)) == 1200
    assert seen[-1] == 1200
    # Many steps, rising, even for a batch smaller than one pipeline chunk.
    assert len(seen) >= 10 and seen == sorted(seen)
    assert await queue_depth(known) == 1200
    small: list[int] = []
    await known.submit_specs([known.build_spec("resize", [i]) for i in range(300)], progress=small.append)
    assert len(small) >= 10 and small[-1] == 300


async def test_watch_yields_typed_events(known):
    events: list = []
    got = asyncio.Event()

    async def follow():
        async for ev in known.watch(kinds=["available"]):
            events.append(ev)
            got.set()

    task = asyncio.ensure_future(follow())
    for _ in range(100):  # until the subscription is live
        job = await known.submit("send_email")
        try:
            await asyncio.wait_for(got.wait(), 0.1)
            break
        except asyncio.TimeoutError:
            continue
    task.cancel()
    ev = events[0]
    assert ev.kind == "available" and ev.task == "send_email" and ev.queue == "default"
    assert ev.job_id is not None


async def test_retry_of_a_pending_job_is_refused(known):
    job = await known.submit("send_email")
    with pytest.raises(ChronosError, match="only retryable, cancelled or discarded"):
        await known.retry(job)
    assert (await known.get(job)).state == JobState.AVAILABLE
