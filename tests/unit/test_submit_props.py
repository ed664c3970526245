"""Property tests of submit (issue 13, deliverable 8): whatever the input, Client.submit and
`chronos submit` give a job or one clear line, never a traceback, never a half-written job.

Against the session's real nats-server (no worker runs, so every job made stays where submit
put it): after each example the namespace holds exactly the records of the jobs returned so far,
one work message per available job, one parked message per scheduled job, and no pending marker.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from chronos.cli.main import app
from chronos.client import Client
from chronos.errors import ChronosError
from chronos.states import JobState
from chronos.subjects import PRIORITIES

from ..cli.conftest import write_config
from ..conftest import drop_namespace, make_settings

TASK = "p.ok"
SURROGATE = "bad\udcff"  # what a shell's non-UTF-8 bytes become in a Python str


def nested(depth: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(depth):
        out = [out]
    return out


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.just(SURROGATE),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
big_text = st.integers(min_value=0, max_value=1_200_000).map(lambda n: "x" * n)
texts = st.one_of(st.text(max_size=30), st.just(SURROGATE), st.sampled_from(["a\r\nb", "k\x00", "ok", ""]), big_text)
numbers = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10, max_value=10**13),
    st.sampled_from([1e999, -1e999, 1e12, 2.5, 0, 60]), st.booleans(),
)
args_strategy = st.one_of(
    st.none(), st.lists(json_values, max_size=4), st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    json_values, st.integers(min_value=0, max_value=5000).map(nested), big_text.map(lambda s: [s]),
)
inputs = st.fixed_dictionaries({}, optional={
    "queue": st.one_of(st.none(), st.just("default"), texts),
    "priority": st.one_of(st.none(), st.sampled_from(PRIORITIES), texts),
    "delay": numbers,
    "run_at": numbers,
    "max_attempts": numbers,
    "timeout": numbers,
    "unique_key": st.one_of(st.none(), texts, st.sampled_from(["u1", "u2"])),
    "tags": st.one_of(st.lists(texts, max_size=3), st.integers(0, 40_000).map(lambda n: ["t" * 30] * n)),
    "annotations": st.one_of(st.dictionaries(texts, texts, max_size=3),
                             big_text.map(lambda s: {"note": s})),
})


class Ledger:
    """What the namespace must hold: every job returned so far, by state."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.jobs: dict[str, JobState] = {}

    async def check(self) -> None:
        c = self.client
        assert (await c.list(limit=1)).total == len(self.jobs)
        available = sum(1 for s in self.jobs.values() if s is JobState.AVAILABLE)
        scheduled = sum(1 for s in self.jobs.values() if s is JobState.SCHEDULED)
        assert (await c.conn.js.stream_info(c.names.jobs_stream)).state.messages == available
        assert (await c.conn.js.stream_info(c.names.delayed_stream)).state.messages == scheduled
        control = await c.ops.control()
        await c.conn.publisher.wait_for_room(1)  # marker deletes are sent, not awaited, by submit
        assert [e.key for e in await control.entries() if e.key.startswith("pending.")] == []


@pytest.fixture
def private_loop_client(nats_server, namespace):
    """A Client on a loop of this test's own (hypothesis drives a sync function)."""
    s = make_settings(nats_server.url, namespace, jobs={"max_payload_bytes": 256 * 1024})
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(Client.connect(s))
    loop.run_until_complete(client.register_tasks([TASK]))
    try:
        yield loop, client, s
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(drop_namespace(s))
        loop.close()


def test_client_submit_gives_a_job_or_one_line(private_loop_client):
    loop, client, _ = private_loop_client
    ledger = Ledger(client)
    seen_errors: set[str] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(task=st.one_of(st.just(TASK), texts), args=args_strategy, options=inputs)
    def check(task: Any, args: Any, options: dict[str, Any]) -> None:
        async def one() -> None:
            try:
                job_id = await client.submit(task, args, **options)
            except ChronosError as exc:
                text = str(exc)
                assert text and "\n" not in text and "\r" not in text, repr(text)
                seen_errors.add(type(exc).__name__)
            else:
                rec = await client.get(job_id)
                assert rec.state in (JobState.AVAILABLE, JobState.SCHEDULED)
                ledger.jobs[job_id] = rec.state
            await ledger.check()

        loop.run_until_complete(one())

    check()
    assert ledger.jobs and seen_errors, "the strategies should make both jobs and refusals"


def test_the_inputs_that_gave_tracebacks(private_loop_client):
    """The cases issue 13 found, each refused with nothing written."""
    loop, client, _ = private_loop_client
    ledger = Ledger(client)
    cases = [
        dict(args=nested(60_000)), dict(args=[SURROGATE]), dict(timeout=1e999), dict(delay=1e12),
        dict(unique_key="a\r\nb"), dict(unique_key="k" * 70_000), dict(tags=["t" * 1024] * 1100),
        dict(annotations={"a": "x" * (1024 * 1024 + 1)}), dict(run_at=math.nan), dict(max_attempts=True),
    ]

    async def go() -> None:
        for case in cases:
            args = case.pop("args", None)
            with pytest.raises(ChronosError) as info:
                await client.submit(TASK, args, **case)
            assert "\n" not in str(info.value)
            await ledger.check()

    loop.run_until_complete(go())


# --- the CLI ------------------------------------------------------------------------------------

cli_text = st.one_of(st.text(max_size=20), st.just(SURROGATE), st.sampled_from(
    ["1e999", "1000000000000", "5m", "-1", "nan", "0", "a\r\nb", "[1,2]", "{\"a\": 1}", "[" * 3000 + "]" * 3000]))
cli_options = st.lists(st.tuples(
    st.sampled_from(["--args", "--queue", "--priority", "--in", "--at", "--unique", "--timeout", "--max-attempts",
                     "--tag", "--arg"]), cli_text), max_size=4)


def test_cli_submit_gives_a_job_or_one_line(private_loop_client, tmp_path):
    loop, client, s = private_loop_client
    config = write_config(tmp_path / "chronos.toml", s)
    runner = CliRunner()
    ledger = Ledger(client)
    failures = []

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(task=st.one_of(st.just(TASK), cli_text), options=cli_options)
    def check(task: str, options: list[tuple[str, str]]) -> None:
        argv = ["--config", str(config), "submit", task, "--json"]
        for name, value in options:
            argv += [name, value]
        r = runner.invoke(app, argv)
        assert "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        if r.exit_code == 0:
            import json

            rec = json.loads(r.stdout)
            ledger.jobs[rec["id"]] = JobState(rec["state"])
        else:
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
            failures.append(lines[0])
        loop.run_until_complete(ledger.check())

    check()
    assert ledger.jobs and failures, "the strategies should make both jobs and refusals"
