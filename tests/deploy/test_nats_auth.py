"""Least privilege on a real nats-server: the accounts block from chronos.permissions, one user per role.

The worker's credentials run a job end to end, and cannot purge a stream, read the DLQ
(subscribe, get a message, or open a consumer on it) or create a stream; the admin can.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from chronos.client import Client
from chronos.config import load_settings
from chronos.connection import TopologyMissingError, connect
from chronos.embedded import EmbeddedServer
from chronos.errors import ConfigError
from chronos.permissions import default_users, render_authorization
from chronos.runtime import Outcome, SchedulerMain, WorkerMain, run_service
from chronos.subjects import Names
from chronos.worker.registry import Registry

from chronos.embedded import free_port
from chronos.metrics import MetricsMain, SchedulerMetrics
from chronos.runtime import WithMetrics

from .test_metrics import in_tmp, scrape_until, value
from .authserver import PASSWORDS, auth_server, role_settings, violations

ROOT = Path(__file__).parents[2]
NS = "authns"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = auth_server(tmp_path_factory.mktemp("auth"), NS)
    srv.start()
    yield srv
    srv.cleanup()


async def _denied(coro, timeout: float = 1.0) -> bool:
    """A request the server refuses to route never gets an answer (nats-py only logs the -ERR)."""
    try:
        await asyncio.wait_for(coro, timeout)
    except (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return True
    except nats.js.errors.APIError:
        return True
    return False


def _registry() -> Registry:
    reg = Registry()

    async def add(a: int, b: int) -> int:
        return a + b

    async def boom() -> None:
        raise RuntimeError("always fails")

    reg.register(add, name="t.add")
    reg.register(boom, name="t.boom")
    return reg


async def test_each_role_does_its_job_and_no_more(server: EmbeddedServer, tmp_path):
    # The admin creates the topology; nobody else may.
    admin = await Client.connect(role_settings(server, NS, "admin"))
    await admin.close()

    worker = WorkerMain(role_settings(server, NS, "worker"), _registry())
    scheduler = SchedulerMain(in_tmp(role_settings(server, NS, "scheduler"), tmp_path))
    metrics_port = free_port()
    observed = WithMetrics(scheduler, MetricsMain(SchedulerMetrics(scheduler.service, scheduler.service.settings,
                                                                   poll_every=0.2), metrics_port))
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, observed, grace=10, stop=stop, signals=()))
    console = await Client.connect(role_settings(server, NS, "console"))
    try:
        await asyncio.wait_for(asyncio.gather(worker.ready.wait(), scheduler.ready.wait()), 30)
        # The worker can still run a job: pull, CAS its record, ack, publish events.
        done = await console.wait(await console.submit("t.add", [2, 3]), timeout=20)
        assert done.state == "completed" and done.result == 5
        # A delayed job goes through the scheduler's stager.
        delayed = await console.wait(await console.submit("t.add", [1, 1], delay=1.0), timeout=20)
        assert delayed.state == "completed"
        # A job that fails for good: the worker writes the DLQ entry (write-only for it).
        failed = await console.wait(await console.submit("t.boom", max_attempts=1), timeout=20)
        assert failed.state == "discarded"
        assert [e.job_id for e in await console.dlq_list()] == [failed.id]  # the console reads it
        assert [w.id for w in await console.workers()] == [worker.service.id]
        # The console's other everyday operations.
        parked = await console.submit("t.add", [0, 0], delay=3600)
        assert (await console.cancel(parked)).state == "cancelled"
        replayed = await console.dlq_replay(failed.id)
        assert (await console.wait(replayed.id, timeout=20)).state == "discarded"  # boom fails again
        retried = await console.retry(failed.id)
        assert (await console.wait(retried.id, timeout=20)).state == "discarded"
        await console.add_schedule("every-hour", "t.add", [1, 2], every=3600, paused=True)
        assert [sc.name for sc in await console.list_schedules()] == ["every-hour"]
        await console.remove_schedule("every-hour")
        assert (await console.list(limit=10)).total >= 4
        async for ev in console.watch(history=600):
            assert ev.kind
            break
        # The scheduler's metrics endpoint reads queue depths and follows events with its credentials.
        samples = await scrape_until(metrics_port, lambda s: value(s, "chronos_dlq_messages") >= 1
                                     and value(s, "chronos_job_events_total", state="completed", queue="default") >= 2)
        assert value(samples, "chronos_dlq_messages") >= 1
        assert violations(server) == [], f"a role was refused something it needs: {violations(server)}"
    finally:
        await console.close()
        stop.set()
        assert await asyncio.wait_for(services, 30) in (Outcome.STOPPED, Outcome.FORCED)

    # Now the worker's credentials, used for what they must not do.
    w = role_settings(server, NS, "worker")
    nc = await nats.connect(server.url, user=w.nats.user, password=w.nats.password)
    try:
        js = nc.jetstream(timeout=1.0)
        names = Names(NS)
        assert await _denied(js.purge_stream(names.jobs_stream))
        assert await _denied(js.purge_stream(names.dlq_stream))
        assert await _denied(js.delete_stream(names.events_stream))
        assert await _denied(js.add_stream(api.StreamConfig(name="STEAL", subjects=["steal.>"])))
        # Reading the DLQ: by sequence, by direct get, through a consumer, or by listening to its subjects.
        assert await _denied(js.get_msg(names.dlq_stream, 1))
        assert await _denied(js.get_msg(names.dlq_stream, 1, direct=True))
        assert await _denied(js.subscribe(names.dlq_wildcard(), stream=names.dlq_stream, ordered_consumer=True))
        sub = await nc.subscribe(names.dlq_wildcard())
        await nc.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.5)
    finally:
        await nc.close()
    refused = {(kind, user) for kind, user, _ in violations(server)}
    assert ("Publish", "chronos-worker") in refused and ("Subscription", "chronos-worker") in refused
    subjects = {s for _, user, s in violations(server) if user == "chronos-worker"}
    assert f"$JS.API.STREAM.PURGE.{names.jobs_stream}" in subjects
    assert f"$JS.API.STREAM.MSG.GET.{names.dlq_stream}" in subjects

    # The admin can do what the worker could not.
    a = role_settings(server, NS, "admin")
    nc = await nats.connect(server.url, user=a.nats.user, password=a.nats.password)
    try:
        js = nc.jetstream(timeout=5)
        assert (await js.get_last_msg(names.dlq_stream, names.dlq_subject("default"))).data
        await js.purge_stream(names.dlq_stream)
    finally:
        await nc.close()


async def test_wrong_password_is_refused(server: EmbeddedServer):
    bad = load_settings(overrides={"namespace": NS, "nats": {"url": server.url, "user": "chronos-worker",
                                                             "password": "nope"}}, read_env=False)
    with pytest.raises(Exception) as info:
        await connect(bad)
    assert "uthorization" in str(info.value) or "cannot reach" in str(info.value)


async def test_missing_topology_is_named_when_not_managing_it(server: EmbeddedServer):
    s = role_settings(server, "otherns", "admin", nats={"url": server.url, "user": "chronos-admin",
                                                        "password": PASSWORDS["admin"], "manage_topology": False})
    with pytest.raises(TopologyMissingError, match="stream OTHERNS_JOBS does not exist"):
        await Client.connect(s)


async def test_token_auth(tmp_path):
    with EmbeddedServer(store_dir=tmp_path / "js", extra_args=["--auth", "s3cret-token"]) as srv:
        s = load_settings(overrides={"namespace": "tok", "nats": {"url": srv.url, "token": "s3cret-token"}},
                          read_env=False)
        async with await Client.connect(s) as c:
            assert await c.list() is not None
        with pytest.raises(Exception):
            await connect(load_settings(overrides={"nats": {"url": srv.url, "token": "wrong"}}, read_env=False))


async def test_nkey_auth(tmp_path):
    import os

    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "user.nk").write_bytes(seed + b"\n")
    conf = tmp_path / "nkey.conf"
    conf.write_text(f"jetstream {{}}\nauthorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    with EmbeddedServer(store_dir=tmp_path / "js", extra_args=["-c", str(conf)]) as srv:
        s = load_settings(overrides={"namespace": "nk", "nats": {"url": srv.url,
                                                                 "nkey_seed_file": str(tmp_path / "user.nk")}},
                          read_env=False)
        async with await Client.connect(s) as c:
            assert await c.list() is not None
        with pytest.raises(Exception):  # no credentials: refused
            await connect(load_settings(overrides={"nats": {"url": srv.url}}, read_env=False))


def test_auth_settings_are_checked_once():
    with pytest.raises(ConfigError, match="nats.password: set nats.user too"):
        load_settings(overrides={"nats": {"password": "x"}}, read_env=False)
    with pytest.raises(ConfigError, match="one of"):
        load_settings(overrides={"nats": {"user": "u", "password": "p", "token": "t"}}, read_env=False)
    with pytest.raises(ConfigError, match="tls_cert"):
        load_settings(overrides={"nats": {"tls_key": "k.pem"}}, read_env=False)


def test_shipped_accounts_conf_matches_the_permissions_module():
    """deploy/nats/accounts.conf is generated; regenerate it rather than editing it."""
    expected = render_authorization(Names("chronos"), default_users(), system_user=("sys", "$NATS_SYSTEM_PASSWORD"))
    assert (ROOT / "deploy" / "nats" / "accounts.conf").read_text() == expected


@pytest.mark.parametrize("conf", ["single-node.conf", "cluster/node-1.conf", "cluster/node-2.conf",
                                  "cluster/node-3.conf"])
def test_shipped_server_configs_are_valid(conf, tmp_path):
    """`nats-server -t` on each shipped config, with accounts.conf beside it and the passwords set."""
    import subprocess

    from chronos.embedded import find_nats_server

    src = ROOT / "deploy" / "nats"
    (tmp_path / "accounts.conf").write_text((src / "accounts.conf").read_text())
    target = tmp_path / "nats-server.conf"
    target.write_text((src / conf).read_text().replace("/var/lib/nats", str(tmp_path / "store")))
    env_example = (src / "nats.env.example").read_text().splitlines()
    env = dict(line.split("=", 1) for line in env_example if line and not line.startswith("#"))
    r = subprocess.run([find_nats_server(), "-t", "-c", str(target)], capture_output=True, text=True, timeout=30,
                       env=env)
    assert r.returncode == 0, r.stdout + r.stderr
