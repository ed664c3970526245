"""``chronos bench throughput``: enqueue and end-to-end jobs/s with state tracked for every job.

An embedded nats-server, one worker process, N no-op jobs submitted while the
worker runs. End to end = N / (last completion - first submit). Lost = jobs not
completed; duplicated = job ids the task saw more than once.

``sync`` is the server's JetStream ``sync_interval``: ``"always"`` (fsync every write, the
documented production setting) or ``"default"`` (the server's lazy 2-minute fsync).
``count_fsyncs`` attaches strace to the server for the run and reports fsync calls per job;
ptrace slows the server, so the jobs/s of such a run are not comparable and are reported apart.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec

from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..states import JobState
from ._common import (
    cpu_seconds,
    read_stats,
    server_counters,
    spawn_worker,
    stop_process,
    wait_for_workers,
)


class ThroughputResult(msgspec.Struct):
    n: int
    enqueue_seconds: float
    enqueue_jobs_per_s: float
    end_to_end_seconds: float
    end_to_end_jobs_per_s: float
    completed: int
    lost: int
    duplicated: int
    server_msgs_in_per_job: float
    server_msgs_out_per_job: float
    concurrency: int
    # CPU time per job in each process over the run (µs): where the 2 cores went.
    cpu_us_per_job: dict[str, float] = {}
    sync: str = "default"  # the server's sync_interval: "always" or "default" (2m)
    atomic_batches: bool = True  # whether writes went in atomic batches (nats.atomic_batches, resolved)
    fsyncs_per_job: float | None = None  # fsync + fdatasync calls of the server (count_fsyncs runs only)
    # Messages stored per job, by stream (stream sequence deltas over the run): what each job writes.
    # Under sync_interval always a write costs an fsync unless it went in an atomic batch (one per batch).
    writes_per_job: dict[str, float] = {}


async def _stream_seqs(client: Client) -> dict[str, int]:
    """The last sequence of every stream of the namespace (streams by role: jobs, records, markers, events)."""
    names = client.names
    streams = {"work": names.jobs_stream, "records": names.kv_stream(names.jobs_bucket),
               "markers": names.kv_stream(names.control_bucket), "events": names.events_stream}
    return {role: (await client.conn.js.stream_info(stream)).state.last_seq for role, stream in streams.items()}


def _strace(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """strace counting the fsyncs of every thread of ``pid``; None when strace is missing or refused."""
    exe = shutil.which("strace")
    if exe is None:
        return None
    proc = subprocess.Popen([exe, "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.5)  # attached to every thread before the run starts
    return None if proc.poll() is not None else proc


def _fsyncs(proc: subprocess.Popen[bytes] | None, out: Path) -> int | None:
    if proc is None:
        return None
    os.kill(proc.pid, signal.SIGINT)  # strace detaches and writes its summary
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    text = out.read_text() if out.exists() else ""
    return sum(int(m.group(1)) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$",
                                                     text, re.MULTILINE))


async def run_throughput(n: int = 20000, concurrency: int = 256, timeout: float = 300.0, *,
                         sync: str = "default", count_fsyncs: bool = False,
                         transport: str = "auto", atomic_batches: str = "auto") -> ThroughputResult:
    if sync not in ("always", "default"):
        raise ValueError(f"sync: {sync!r} is not always or default")
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as tmp, \
            EmbeddedServer(Path(tmp) / "js", sync="always" if sync == "always" else "2m") as server:
        ns = "bench"
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url, "transport": transport,
                                                                      "atomic_batches": atomic_batches}},
                                 read_env=False)
        client = await Client.connect(settings)
        stats_file = Path(tmp) / "worker.json"
        worker = spawn_worker(server.url, ns, concurrency=concurrency, stats_file=stats_file,
                              extra_env={"CHRONOS_NATS__TRANSPORT": transport,
                                         "CHRONOS_NATS__ATOMIC_BATCHES": str(atomic_batches).lower()})
        try:
            await wait_for_workers(client, 1)
            specs = [client.build_spec("bench.noop") for _ in range(n)]
            completed: set[str] = set()
            done = asyncio.Event()
            last_completion = 0.0

            async def follow() -> None:
                nonlocal last_completion
                async for ev in client.watch(kinds=["completed"]):
                    if ev.job_id:
                        completed.add(ev.job_id)
                        last_completion = time.perf_counter()
                        if len(completed) >= n:
                            done.set()
                            return

            follower = asyncio.ensure_future(follow())
            await asyncio.sleep(0.2)  # let the subscription reach the server before the first job
            before = server_counters(server)
            seqs0 = await _stream_seqs(client)
            pids = {"server": server.proc.pid if server.proc else None, "worker": worker.pid}
            tracer = _strace(server.proc.pid, Path(tmp) / "strace.txt") if count_fsyncs and server.proc else None
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"client": cpu_seconds()}
            t0 = time.perf_counter()
            ids = await client.submit_specs(specs)
            t_enqueued = time.perf_counter()
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                pass
            after = server_counters(server)
            seqs1 = await _stream_seqs(client)
            cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"client": cpu_seconds()}
            fsyncs = _fsyncs(tracer, Path(tmp) / "strace.txt")
            follower.cancel()
            # Completions whose events we missed still count if the record says so.
            missing = [i for i in ids if i not in completed]
            for job_id in missing:
                rec = await client.get(job_id)
                if rec.state == JobState.COMPLETED:
                    completed.add(job_id)
        finally:
            stop_process(worker)
            await client.close()
        runs = read_stats(stats_file).get("runs", {})
        duplicated = sum(1 for c in runs.values() if c > 1)
        e2e = (last_completion - t0) if last_completion else float("inf")
        return ThroughputResult(
            n=n,
            enqueue_seconds=round(t_enqueued - t0, 3),
            enqueue_jobs_per_s=round(n / (t_enqueued - t0), 1),
            end_to_end_seconds=round(e2e, 3),
            end_to_end_jobs_per_s=round(n / e2e, 1) if e2e else 0.0,
            completed=len(completed),
            lost=n - len(completed),
            duplicated=duplicated,
            server_msgs_in_per_job=round((after["in_msgs"] - before["in_msgs"]) / n, 2),
            server_msgs_out_per_job=round((after["out_msgs"] - before["out_msgs"]) / n, 2),
            concurrency=concurrency,
            cpu_us_per_job={k: round((cpu1[k] - cpu0[k]) / n * 1e6, 1) for k in cpu0},
            sync=sync,
            atomic_batches=client.conn.publisher.atomic,
            fsyncs_per_job=None if fsyncs is None else round(fsyncs / n, 2),
            writes_per_job={k: round((seqs1[k] - seqs0[k]) / n, 2) for k in seqs0},
        )


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    mode = sys.argv[2] if len(sys.argv) > 2 else "default"
    print(msgspec.json.encode(asyncio.run(run_throughput(n, sync=mode, count_fsyncs="fsyncs" in sys.argv[3:]))).decode())
