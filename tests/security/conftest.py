"""A nats-server started from the shipped deploy/nats/single-node.conf and accounts.conf (namespace
"chronos"), one connection helper per role, and a snapshot of everything stored, so each attack
test can assert both the refusal and that no data changed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import nats
import pytest
import pytest_asyncio

from chronos.client import Client
from chronos.config import Settings, load_settings
from chronos.connection import Denials
from chronos.embedded import EmbeddedServer
from chronos.permissions import ROLES
from chronos.subjects import Names, inbox_prefix

ROOT = Path(__file__).parents[2]
NS = "chronos"  # the namespace deploy/nats/accounts.conf is generated for
NAMES = Names(NS)
PASSWORDS = {role: f"{role}-pw" for role in ROLES}


def shipped_server(tmp: Path) -> EmbeddedServer:
    """deploy/nats/single-node.conf and accounts.conf as shipped; the store directory, listen and
    monitor addresses come from the command line instead (a temporary directory, free ports)."""
    src = ROOT / "deploy" / "nats"
    (tmp / "accounts.conf").write_text((src / "accounts.conf").read_text())
    conf = tmp / "nats-server.conf"
    # The store directory comes from the command line too (nats-server refuses it twice).
    text = "\n".join(line for line in (src / "single-node.conf").read_text().splitlines()
                     if not line.strip().startswith("store_dir:"))
    conf.write_text(text + "\n")
    server = EmbeddedServer(store_dir=tmp / "store", extra_args=["-c", str(conf)])
    env = {f"CHRONOS_{r.upper()}_PASSWORD": PASSWORDS[r] for r in ROLES} | {"NATS_SYSTEM_PASSWORD": "sys-pw"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # nats-server substitutes them into accounts.conf at start
    try:
        server.start()
    finally:  # chronos refuses unknown CHRONOS_* variables: do not leave these behind
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return server


def settings_for(server: EmbeddedServer, role: str, **nats_extra: Any) -> Settings:
    return load_settings(overrides={
        "namespace": NS,
        "nats": {"url": server.url, "user": f"chronos-{role}", "password": PASSWORDS[role],
                 "manage_topology": role == "admin", **nats_extra},
    }, read_env=False)


@dataclass
class Raw:
    """A plain nats-py connection as one role, as an attacker holding its password would have."""

    nc: Any
    js: Any
    denials: Denials


async def raw(server: EmbeddedServer, role: str, *, inbox: str | None = None) -> Raw:
    denials = Denials(role)

    async def on_error(exc: Exception) -> None:
        denials.on_error(exc)

    nc = await nats.connect(server.url, user=f"chronos-{role}", password=PASSWORDS[role], error_cb=on_error,
                            inbox_prefix=inbox or inbox_prefix(f"chronos-{role}"), allow_reconnect=False)
    denials.wrap(nc)
    return Raw(nc, nc.jetstream(timeout=3.0), denials)


def streams() -> list[str]:
    n = NAMES
    return [n.jobs_stream, n.dlq_stream, n.events_stream, n.delayed_stream, n.audit_stream,
            *(n.kv_stream(b) for b in (n.jobs_bucket, n.workers_bucket, n.tasks_bucket, n.control_bucket,
                                       n.schedules_bucket, n.lease_bucket, n.queues_bucket, n.limits_bucket,
                                       n.unique_bucket, n.workflows_bucket))]


async def snapshot(admin: Raw) -> dict[str, tuple[int, int, int]]:
    """Per stream: (messages, first seq, last seq); equal snapshots mean nothing was written or removed."""
    out = {}
    for s in streams():
        st = (await admin.js.stream_info(s)).state
        out[s] = (st.messages, st.first_seq, st.last_seq)
    return out


async def consumers(admin: Raw) -> dict[str, int]:
    return {s: (await admin.js.stream_info(s)).state.consumer_count for s in streams()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = shipped_server(tmp_path_factory.mktemp("shipped"))
    yield srv
    srv.cleanup()


@pytest_asyncio.fixture(scope="module")
async def seeded(server: EmbeddedServer) -> AsyncIterator[dict[str, Any]]:
    """The topology made by the admin, and something in every stream and bucket."""
    from chronos import audit
    from chronos.models import DLQEntry

    admin = await Client.connect(settings_for(server, "admin"))
    try:
        await admin.register_tasks(["t.ok"])
        jobs = [await admin.submit("t.ok", [i]) for i in range(3)]
        await admin.submit("t.ok", [9], delay=3600)
        await admin.add_schedule("nightly", "t.ok", [1], every=3600, paused=True)
        await admin.cancel(jobs[0])  # a control key, an event and an audit entry
        kv = await admin.conn.kv(NAMES.workers_bucket)
        await kv.put("w-1", b"heartbeat")
        kv = await admin.conn.kv(NAMES.lease_bucket)
        await kv.put("leader.scheduler", b"lease")
        from chronos import codec

        await admin.conn.js.publish(NAMES.dlq_subject("default"),
                                    codec.encode(DLQEntry(reason="seed", at=1.0, job_id=jobs[1])))
        await audit.record(admin.conn, "seed")
    finally:
        await admin.close()  # flushes its batched events: nothing is written behind the tests' backs
    yield {"jobs": jobs}


@pytest_asyncio.fixture
async def admin(server: EmbeddedServer, seeded: dict[str, Any]) -> AsyncIterator[Raw]:
    a = await raw(server, "admin")
    yield a
    await a.nc.close()
