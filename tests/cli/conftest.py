"""CLI fixtures: a CliRunner bound to the test's server and namespace, and a worker in a thread.

CliRunner runs commands synchronously and each command calls asyncio.run, so
these tests are sync; a worker that must run alongside them gets its own
thread and event loop (through chronos.runtime.run_service and a stop event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import pytest
from typer.testing import CliRunner, Result

from chronos.client import Client
from chronos.config import Settings
from chronos.runtime import Outcome, WorkerMain, run_service
from chronos.worker.registry import Registry
from chronos.cli.main import app

from . import tasks as test_tasks


@pytest.fixture(autouse=True)
def _no_chronos_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI must not see the developer's CHRONOS_* variables."""
    for name in list(os.environ):
        if name.startswith("CHRONOS_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The root callback configures logging for the process; put it back for the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    nats_level = logging.getLogger("nats").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("nats").setLevel(nats_level)


Invoke = Callable[..., Result]


def write_config(path: Path, settings: Settings) -> Path:
    """The test's settings as a TOML file (namespace, server, and the small stream and worker limits)."""

    def value(v: Any) -> str:
        return json.dumps(v)  # TOML accepts JSON's strings, numbers, booleans and lists of them

    lines = [f"namespace = {value(settings.namespace)}", "[nats]", f"url = {value(settings.nats.url)}"]
    for section in ("worker", "streams", "scheduler"):
        lines.append(f"[{section}]")
        for k, v in msgspec.structs.asdict(getattr(settings, section)).items():
            if v is not None and not isinstance(v, dict):
                lines.append(f"{k} = {value(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def config_file(settings: Settings, tmp_path: Path) -> Path:
    return write_config(tmp_path / "chronos-test.toml", settings)


def make_topology(settings: Settings) -> None:
    """What `chronos admin init` (or a service's start) does: reading commands never create streams."""

    async def go() -> None:
        c = await Client.connect(settings)
        await c.close()

    asyncio.run(go())


@pytest.fixture
def cli(config_file: Path, settings: Settings) -> Invoke:
    """``cli("jobs", "list")`` runs `chronos --config <the test's settings> jobs list`, in a namespace
    whose streams exist (as after `chronos admin init`)."""
    make_topology(settings)
    runner = CliRunner()
    config = config_file

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, ["--config", str(config), *args], input=input, env=env, catch_exceptions=False)

    return invoke


def cli_json(cli: Invoke, *args: str) -> Any:
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def items(cli: Invoke, *args: str) -> list[Any]:
    """The items of a listing's JSON envelope, after checking the envelope's shape."""
    page = cli_json(cli, *args)
    assert set(page) == {"items", "count", "next"}, page
    assert page["count"] == len(page["items"])
    return page["items"]


def one_error_line(result: Result) -> str:
    """The stderr of a failed command: exactly one line, starting with 'error:'."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def wait_until(fn: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def listed(cli: Invoke, *args: str) -> Any:
    """`jobs list --json` where the test expects at least one job.

    Client.list reads the KV through a watcher that, rarely (~1 in 300 calls), reports
    "no entries" for a non-empty bucket (store/kv.py entries(): nats-py's watcher signals
    the end of initial values before any arrive). Reported upstream; until it is fixed, a
    non-empty expectation is waited for instead of asserted on one read.
    """
    return wait_until(lambda: (page := cli_json(cli, "jobs", "list", *args))["items"] and page, timeout=5,
                      what=f"a non-empty listing for {args}")


def job_state(cli: Invoke, job_id: str) -> str:
    return cli_json(cli, "jobs", "get", job_id)["state"]


def wait_state(cli: Invoke, job_id: str, state: str, timeout: float = 20.0) -> None:
    wait_until(lambda: job_state(cli, job_id) == state, timeout, f"job {job_id} to be {state}")


def submit(cli: Invoke, *args: str) -> str:
    r = cli("submit", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["id"]


@pytest.fixture
def register_tasks(settings: Settings) -> Callable[..., None]:
    """Put task names in the catalog (as a worker would) so submit accepts them without a worker."""

    def register(*names: str) -> None:
        async def go() -> None:
            async with await Client.connect(settings) as client:
                await client.register_tasks(names or test_tasks.registry.names())

        asyncio.run(go())

    return register


class ThreadWorker:
    """A worker in its own thread and event loop, stopped through run_service's stop event."""

    def __init__(self, settings: Settings, registry: Registry, **kwargs: Any) -> None:
        self.main = WorkerMain(settings, registry, log_events=False, **kwargs)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.outcome: Outcome | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="cli-test-worker", daemon=True)

    @property
    def id(self) -> str:
        return self.main.service.id

    def start(self, timeout: float = 20.0) -> "ThreadWorker":
        self._thread.start()
        if not self.ready.wait(timeout):
            raise AssertionError("worker did not become ready")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        async def signal_ready(stop: asyncio.Event) -> None:
            await self.main.service.ready.wait()
            self.ready.set()

        async def go() -> Outcome:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            return await run_service(self.main, signal_ready, grace=10.0, stop=self._stop)

        try:
            self.outcome = asyncio.run(go())
        except BaseException as exc:  # reported by start() or stop()
            self.error = exc
        finally:
            self.ready.set()

    def stop(self, timeout: float = 20.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop already finished
                pass
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker thread did not stop"


@pytest.fixture
def worker(settings: Settings) -> Iterator[Callable[..., ThreadWorker]]:
    """``worker()`` starts a worker with the test tasks in a background thread."""
    started: list[ThreadWorker] = []
    chronos_logger = logging.getLogger("chronos")
    level = chronos_logger.level
    chronos_logger.setLevel(logging.ERROR)  # the worker's warnings would land in CliRunner's stderr

    def start(registry: Registry | None = None, s: Settings | None = None, **kwargs: Any) -> ThreadWorker:
        w = ThreadWorker(s or settings, registry or test_tasks.registry, **kwargs).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
    chronos_logger.setLevel(level)
