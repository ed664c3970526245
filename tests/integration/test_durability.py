"""Durable by default: chronos against servers that fsync every write (``sync_interval: always``).

A server of its own per test here (the session server keeps the lazy default), then: jobs flow and
survive a SIGKILL of the server; ``chronos admin status --strict`` passes only when the server
fsyncs every write and is readable, one line per problem otherwise; a three-node R3 cluster with
``always`` runs jobs and satisfies ``--strict``.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chronos.cli.main import app
from chronos.client import Client
from chronos.durability import inspect, problems
from chronos.embedded import EmbeddedServer
from chronos.states import JobState
from chronos.worker.registry import Registry

from ..conftest import make_settings
from ..faults.conftest import Cluster, restart_on_same_store, wait_until


def varz(server: EmbeddedServer) -> dict:
    with urllib.request.urlopen(f"http://{server.host}:{server.monitor_port}/varz", timeout=2) as r:
        return json.load(r)


@pytest.fixture
def durable_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "js", sync="always").start()
    yield server
    server.cleanup()


def noop_registry(seen: list[str]) -> Registry:
    reg = Registry()

    async def noop() -> None:
        seen.append("x")

    reg.register(noop, name="d.noop")
    return reg


async def all_completed(client: Client, ids: list[str]) -> bool:
    for job_id in ids:
        if (await client.get(job_id)).state != JobState.COMPLETED:
            return False
    return True


async def test_jobs_flow_and_survive_a_server_kill_with_fsync_on_every_write(durable_server, namespace, start_worker):
    assert varz(durable_server)["jetstream"]["config"]["sync_always"] is True
    settings = make_settings(durable_server.url, namespace)
    seen: list[str] = []
    async with await Client.connect(settings) as client:
        worker = await start_worker(noop_registry(seen), settings)
        ids = await client.submit_specs([client.build_spec("d.noop") for _ in range(300)])
        await wait_until(lambda: all_completed(client, ids), 30, "300 jobs completed")
        await worker.stop()
    # Everything acknowledged is on disk: SIGKILL (no shutdown flush) and restart on the same store.
    durable_server.kill()
    again = restart_on_same_store(durable_server)
    try:
        async with await Client.connect(settings) as client:
            assert await all_completed(client, ids)
            report = await inspect(client, [f"http://127.0.0.1:{again.monitor_port}"])
            assert [s.sync for s in report.servers] == ["always"]
            assert problems(report) == []
    finally:
        again.cleanup()


def status(url: str, ns: str, *extra: str):
    return CliRunner().invoke(app, ["--server", url, "--namespace", ns, "admin", "status", "--strict",
                                    "--no-require-leader", "--no-require-worker", *extra])


def error_lines(result) -> list[str]:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("error: ") for ln in lines) and "Traceback" not in result.output
    return lines


def test_strict_status_passes_on_a_server_that_fsyncs_every_write(durable_server, namespace):
    assert CliRunner().invoke(app, ["--server", durable_server.url, "--namespace", namespace, "admin", "init"]).exit_code == 0
    monitor = f"http://127.0.0.1:{durable_server.monitor_port}"
    r = status(durable_server.url, namespace, "--monitor", monitor, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert list(report["sync"].values()) == ["always"] and report["sync_source"] == "monitoring"
    assert report["nats_server_version"] == varz(durable_server)["version"]
    assert report["replicas"] and set(report["replicas"].values()) == {1}
    # Without a way to read the setting, --strict cannot vouch for it: one line saying how.
    r = status(durable_server.url, namespace)
    assert r.exit_code == 1
    (line,) = error_lines(r)
    assert line.startswith("error: sync_interval: cannot be read") and "--monitor" in line
    # Without --strict the same server is healthy, and the table says what it knows.
    r = CliRunner().invoke(app, ["--server", durable_server.url, "--namespace", namespace, "admin", "status",
                                 "--no-require-leader", "--no-require-worker", "--monitor", monitor])
    assert r.exit_code == 0 and "always" in r.stdout
    # Without a source, the table shows what the embedded server announces, marked as such;
    # --strict above still failed on it.
    r = CliRunner().invoke(app, ["--server", durable_server.url, "--namespace", namespace, "admin", "status",
                                 "--no-require-leader", "--no-require-worker", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["sync"] == {} and report["sync_announced"] == "always"
    r = CliRunner().invoke(app, ["--server", durable_server.url, "--namespace", namespace, "admin", "status",
                                 "--no-require-leader", "--no-require-worker"])
    assert r.exit_code == 0 and "always (as chronos's embedded server announces it" in r.stdout


def test_strict_status_fails_on_the_lazy_default(nats_server, settings):
    r = CliRunner().invoke(app, ["--server", nats_server.url, "--namespace", settings.namespace, "admin", "init"])
    assert r.exit_code == 0, r.output
    r = status(nats_server.url, settings.namespace, "--monitor", f"http://127.0.0.1:{nats_server.monitor_port}")
    assert r.exit_code == 1
    (line,) = error_lines(r)
    assert line.startswith("error: sync_interval: server ") and "fsyncs every 2m, not always" in line


def test_strict_status_counts_each_problem_on_its_own_line(nats_server, namespace):
    # replicas 3 wanted, the single server has 1; plus the lazy fsync: two problems, two lines.
    r = CliRunner().invoke(app, ["--server", nats_server.url, "--namespace", namespace, "admin", "init"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["--server", nats_server.url, "--namespace", namespace, "admin", "status", "--strict",
                                 "--no-require-leader", "--no-require-worker",
                                 "--monitor", f"http://127.0.0.1:{nats_server.monitor_port}"],
                           env={"CHRONOS_NATS__REPLICAS": "3", "CHRONOS_NATS__MANAGE_TOPOLOGY": "false"})
    assert r.exit_code == 1
    lines = error_lines(r)
    assert any("fsyncs every 2m" in ln for ln in lines)
    assert any("replica(s), fewer than nats.replicas = 3" in ln for ln in lines)
    assert len(lines) == len(set(lines)) >= 2


async def test_three_node_cluster_with_fsync_always(tmp_path, start_worker):
    cluster = Cluster(tmp_path, name="durable")
    cluster.nodes = [EmbeddedServer(store_dir=n.store_dir, port=n.port, extra_args=n.extra_args, sync="always")
                     for n in cluster.nodes]
    cluster.start()
    try:
        await wait_until(lambda: all(cluster.healthy(n) for n in cluster.nodes), 60, "a healthy cluster")
        assert all(varz(n)["jetstream"]["config"]["sync_always"] for n in cluster.nodes)
        settings = make_settings(cluster.url, "durable", nats={"url": cluster.url, "replicas": 3})
        seen: list[str] = []
        async with await Client.connect(settings) as client:
            worker = await start_worker(noop_registry(seen), settings)
            ids = await client.submit_specs([client.build_spec("d.noop") for _ in range(200)])
            await wait_until(lambda: all_completed(client, ids), 60, "200 jobs completed on R3 streams")
            report = await inspect(client, [f"http://127.0.0.1:{n.monitor_port}" for n in cluster.nodes])
            assert [s.sync for s in report.servers] == ["always"] * 3
            assert set(report.replicas.values()) == {3}
            assert problems(report) == []
            await worker.stop()  # before the cluster goes
    finally:
        cluster.cleanup()


async def test_the_fsync_setting_through_the_system_account(tmp_path, namespace):
    # The CHRONOS-like account imports the system account's VARZ ping: no monitoring port needed.
    conf = tmp_path / "sys.conf"
    conf.write_text(
        'jetstream { sync_interval: always }\n'
        'accounts {\n'
        '  SYS: { users: [{user: sys, password: sys}], exports: [{service: "$SYS.REQ.SERVER.PING.VARZ"}] }\n'
        '  APP: { jetstream: enabled, users: [{user: app, password: app}],\n'
        '         imports: [{service: {account: SYS, subject: "$SYS.REQ.SERVER.PING.VARZ"}}] }\n'
        '}\n'
        'system_account: SYS\n'
    )
    server = EmbeddedServer(tmp_path / "js", extra_args=["-c", str(conf)]).start()
    try:
        settings = make_settings(server.url, namespace, nats={"url": server.url, "user": "app", "password": "app"})
        async with await Client.connect(settings) as client:
            report = await inspect(client)
        assert report.sync_source == "system account"
        assert [s.sync for s in report.servers] == ["always"] and report.servers[0].version == report.version
        assert problems(report) == []
    finally:
        server.cleanup()


def test_more_replicas_than_a_single_server_has_is_one_line_naming_the_setting(nats_server, namespace):
    # The server refuses an R3 stream outside a cluster: the error names nats.replicas (exit 7),
    # not a raw ServerError with exit 1.
    r = CliRunner().invoke(app, ["--server", nats_server.url, "--namespace", namespace, "admin", "init"],
                           env={"CHRONOS_NATS__REPLICAS": "3"})
    assert r.exit_code == 7, r.output
    (line,) = error_lines(r)
    assert line.startswith("error: nats.replicas: the server refused stream ") and "replicas" in line[30:]
