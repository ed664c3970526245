"""Fault tests: each starts its own nats-server processes (free loopback ports, temp store dirs),
so it can SIGKILL them without disturbing the session server other tests share."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

from chronos.config import Settings
from chronos.embedded import EmbeddedServer, free_port

from ..conftest import make_settings


def fault_settings(url: str, namespace: str = "faults", **sections: dict[str, Any]) -> Settings:
    """The test settings (small streams, short ack_wait), reconnecting quickly."""
    return make_settings(url, namespace, **sections)


def restart_on_same_store(server: EmbeddedServer) -> EmbeddedServer:
    """A new nats-server on the killed one's port and store directory."""
    again = EmbeddedServer(store_dir=server.store_dir, port=server.port, extra_args=server.extra_args,
                           log_file=server.store_dir / "nats-server-restarted.log")
    return again.start(timeout=30)


class Cluster:
    """Three nats-server nodes routed on loopback, each with its own store."""

    def __init__(self, root: Path, size: int = 3, name: str = "faults") -> None:
        self.cluster_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports)
        self.nodes = [
            EmbeddedServer(store_dir=root / f"n{i}", extra_args=[
                "--server_name", f"n{i}", "--cluster_name", name,
                "--cluster", f"nats://127.0.0.1:{self.cluster_ports[i]}", "--routes", routes,
            ])
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> "Cluster":
        # Start every node before waiting on any: JetStream needs a quorum to be ready.
        for n in self.nodes:
            self.launch(n)
        for n in self.nodes:
            n._wait_ready(30)
        return self

    @staticmethod
    def launch(node: EmbeddedServer) -> None:
        """Start one node's process without waiting for it."""
        import subprocess

        from chronos.embedded import find_nats_server

        node.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_nats_server(), "-js", "-sd", str(node.store_dir), "-a", node.host, "-p", str(node.port),
                "-m", str(node.monitor_port), *node.extra_args]
        with open(node.log_file, "ab") as fh:
            node.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self, node: EmbeddedServer) -> bool:
        """The node's full health check: JetStream on, meta leader known, its assets current."""
        try:
            with urllib.request.urlopen(f"http://{node.host}:{node.monitor_port}/healthz", timeout=1) as r:
                return json.load(r).get("status") == "ok"
        except OSError:
            return False

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()


def stall(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped. kill() returns before the
    stop lands (measured: most threads of a busy process still running just after it), and
    what is sent in that moment is answered: a test that means to cut a write must not race it."""
    import glob
    import os
    import signal
    import time

    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
            try:
                with open(stat) as fh:
                    states.append(fh.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue  # a thread that ended meanwhile
        if not states or all(s in ("T", "t") for s in states):
            return  # no /proc (not Linux): the kill is all there is
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} not stopped after {timeout}s: thread states {states}")
        time.sleep(0.0005)


async def wait_until(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str | Callable[[], str],
                     every: float = 0.1) -> None:
    """Poll ``check`` until true (the state itself is the signal), failing with ``what`` after
    ``timeout`` (a callable: made then, to say the state the wait ended in)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(every)


async def reconnected(*ncs: Any, timeout: float = 30) -> None:
    """Until each connection is up again after a server restart (its reconnect counted: right after
    a kill, a connection may not have noticed yet and still say it is connected)."""
    await wait_until(lambda: all(nc.is_connected and nc.stats["reconnects"] >= 1 for nc in ncs), timeout,
                     "the connections to come back")


async def wind_down(client: Any, stop: asyncio.Event, services: Any, *servers: EmbeddedServer | None) -> None:
    """The end of a fault test: close the client, stop the services, remove the servers' stores."""
    try:
        await client.close()
        stop.set()
        await asyncio.wait_for(services, 60)
    finally:  # a service that failed must not leave its servers running after the test
        for s in servers:
            if s is not None:
                s.cleanup()
