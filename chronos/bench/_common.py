"""Shared pieces of the benchmarks: a server, worker processes, server counters."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from ..embedded import EmbeddedServer


def server_counters(server: EmbeddedServer) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{server.host}:{server.monitor_port}/varz", timeout=2) as resp:
        varz = json.load(resp)
    return {k: int(varz.get(k, 0)) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}


def spawn_worker(url: str, namespace: str, *, concurrency: int, stats_file: Path, sleep: float = 0.0,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A worker process running the benchmark tasks; its own process group so it can be killed whole."""
    args = [sys.executable, "-m", "chronos.bench._worker", "--url", url, "--namespace", namespace,
            "--concurrency", str(concurrency), "--stats", str(stats_file), "--sleep", str(sleep)]
    env = {**os.environ, **(extra_env or {})}
    return subprocess.Popen(args, env=env, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_stats(path: Path) -> dict[str, Any]:
    """What a bench worker ran: ``{"runs": {job_id: times}}`` (its file holds one id per run)."""
    try:
        ids = path.read_text().split()
    except FileNotFoundError:
        return {}
    return {"runs": dict(Counter(ids))}


async def wait_for_workers(client: Any, count: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if len(await client.workers()) >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{count} worker(s) did not start within {timeout}s")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by ``pid`` (this process when None); 0.0 if unreadable."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
