"""docs/examples/frameworks: FastAPI (lifespan), Django and Flask submit jobs that complete.

Each example module is loaded from its file with CHRONOS_* pointing at the test's server and
namespace (as a deployment would configure it), its view is called through the framework's
own test client, and a worker in the test serves the example's task.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest

import chronos.sync
from chronos.client import Client
from chronos.config import Settings
from chronos.worker.registry import Registry

from ..conftest import wait_for_state

FRAMEWORKS = Path(__file__).parents[2] / "docs" / "examples" / "frameworks"


@pytest.fixture
def chronos_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("CHRONOS_SERVER", settings.nats.url)
    monkeypatch.setenv("CHRONOS_NAMESPACE", settings.namespace)
    monkeypatch.setenv("CHRONOS_STREAMS__DLQ_MAX_BYTES", str(settings.streams.dlq_max_bytes))
    monkeypatch.setenv("CHRONOS_STREAMS__EVENTS_MAX_BYTES", str(settings.streams.events_max_bytes))
    yield settings
    default = chronos.sync._default
    if default is not None:
        default.close()
    chronos.sync._default = None


def load(name: str) -> ModuleType:
    path = FRAMEWORKS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def registry_for(module: ModuleType) -> Registry:
    reg = Registry()
    reg.add(module.send_welcome.taskdef)
    return reg


async def test_fastapi_lifespan_client_submits(chronos_env: Settings, client: Client, start_worker: Any) -> None:
    from fastapi.testclient import TestClient

    module = load("fastapi_app")
    await start_worker(registry_for(module), queues=["mail"])
    with TestClient(module.app) as http:
        r = http.post("/signup", params={"email": "a@example.com"})
        assert r.status_code == 200, r.text
        job_id = r.json()["job"]
        rec = await wait_for_state(client, job_id, "completed")
        assert rec.result == {"welcomed": "a@example.com"} and rec.spec.queue == "mail"
        assert http.get(f"/jobs/{job_id}").json()["state"] == "completed"


async def test_django_view_submits_sync(chronos_env: Settings, client: Client, start_worker: Any) -> None:
    module = load("django_view")
    from django.test import RequestFactory

    await start_worker(registry_for(module), queues=["mail"])
    response = module.signup(RequestFactory().post("/signup?email=d@example.com"))
    assert response.status_code == 202
    import json

    job_id = json.loads(response.content)["job"]
    rec = await wait_for_state(client, job_id, "completed")
    assert rec.result == {"welcomed": "d@example.com"}


async def test_flask_view_submits_sync(chronos_env: Settings, client: Client, start_worker: Any) -> None:
    module = load("flask_app")
    await start_worker(registry_for(module), queues=["mail"])
    http = module.app.test_client()
    r = http.post("/signup?email=f@example.com")
    assert r.status_code == 202
    job_id = r.get_json()["job"]
    await wait_for_state(client, job_id, "completed")
    assert http.get(f"/jobs/{job_id}").get_json()["result"] == {"welcomed": "f@example.com"}
