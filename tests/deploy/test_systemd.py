"""systemd integration: sd_notify over a real datagram socket, and the unit files pass `systemd-analyze verify`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from chronos.config import systemd_env
from chronos.runtime import Outcome, WorkerMain, run_service, worker_registry
from chronos.sdnotify import Notifier

ROOT = Path(__file__).parents[2]
UNITS = ROOT / "deploy" / "systemd"


@pytest.fixture
def notify_socket():
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET (short path: sun_path is 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


async def recv_until(sock: socket.socket, wanted: str, timeout: float = 20.0) -> list[str]:
    """Datagrams until one holds the line ``wanted``; every datagram received so far."""
    loop = asyncio.get_running_loop()
    got: list[str] = []

    async def _read() -> list[str]:
        while True:
            data = await loop.sock_recv(sock, 4096)
            got.append(data.decode())
            if wanted in data.decode().splitlines():
                return got

    return await asyncio.wait_for(_read(), timeout)


def test_systemd_env_is_read_only_from_the_given_mapping():
    assert systemd_env({}).notify_socket is None and systemd_env({}).watchdog_usec is None
    env = systemd_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "123"}, pid=123)
    assert env.notify_socket == "/run/x" and env.watchdog_usec == 4_000_000
    other = systemd_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "9"}, pid=123)
    assert other.watchdog_usec is None  # the watchdog is meant for another process
    assert systemd_env({"WATCHDOG_USEC": "junk"}).watchdog_usec is None


def test_notifier_without_socket_is_silent():
    n = Notifier(None, 2_000_000)
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False


def test_notifier_sends_datagrams(notify_socket):
    path, sock = notify_socket
    n = Notifier(path, 3_000_000)
    assert n.watchdog_interval == 1.5
    assert n.ready("hello")
    sock.setblocking(True)
    sock.settimeout(5)
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=hello"
    n.close()


async def test_worker_service_notifies_ready_watchdog_and_stopping(settings, notify_socket):
    path, sock = notify_socket
    notifier = Notifier(path, 200_000)  # pings every 0.1 s
    main = WorkerMain(settings, worker_registry(settings))
    stop = asyncio.Event()
    service = asyncio.ensure_future(run_service(main, grace=10, stop=stop, signals=(), notifier=notifier))
    try:
        got = await recv_until(sock, "READY=1")
        assert main.service.ready.is_set()
        await recv_until(sock, "WATCHDOG=1", timeout=5)
        stop.set()
        got = await recv_until(sock, "STOPPING=1")
        assert await asyncio.wait_for(service, 20) is Outcome.STOPPED
    finally:
        stop.set()
        if not service.done():
            await asyncio.wait_for(service, 20)
    assert any("STOPPING=1" in d for d in got)


async def test_serve_scheduler_sends_ready_to_notify_socket(settings, notify_socket, tmp_path):
    """The real `chronos serve scheduler` process, with NOTIFY_SOCKET as systemd would set it."""
    path, sock = notify_socket
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOS_", "NOTIFY_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000",
               CHRONOS_SCHEDULER__ARCHIVE_PATH=str(tmp_path / "archive.sqlite3"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--server", settings.nats.url, "--namespace", settings.namespace,
         "serve", "scheduler", "--id", "sd-node"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        await recv_until(sock, "READY=1", timeout=30)
        await recv_until(sock, "WATCHDOG=1", timeout=5)
        proc.send_signal(signal.SIGTERM)
        await recv_until(sock, "STOPPING=1", timeout=10)
        rc = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_without_notify_socket_is_silent():
    assert not Notifier.from_env(systemd_env({})).enabled


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """The units as shipped, with the two executables they name (not installed here) replaced by stubs."""
    stub = tmp_path / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        assert "/opt/chronos/bin/chronos" in text or "/usr/local/bin/nats-server" in text, unit.name
        text = text.replace("/opt/chronos/bin/chronos", str(stub)).replace("/usr/local/bin/nats-server", str(stub))
        name = unit.name.replace("@.service", "@default.service")  # verify the template through an instance
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    assert len(units) == 3
    r = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    # Warnings (an unknown key, a bad value) exit 0 too: none may mention our units.
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if str(tmp_path) in line or ".service" in line]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


def test_units_state_the_required_hardening():
    nats = (UNITS / "nats-server.service").read_text()
    for line in ("User=nats", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
                 "KillSignal=SIGTERM"):
        assert line in nats.splitlines(), line
    from chronos.config import WorkerSettings
    from chronos.cli.serve import DRAIN_MARGIN

    for name in ("chronos-scheduler.service", "chronos-worker@.service", "nats-server.service"):
        text = (UNITS / name).read_text()
        stop = [int(line.split("=")[1]) for line in text.splitlines() if line.startswith("TimeoutStopSec=")]
        assert stop and stop[0] > WorkerSettings().shutdown_grace + DRAIN_MARGIN, name
    assert "worker-%i.toml" in (UNITS / "chronos-worker@.service").read_text()
