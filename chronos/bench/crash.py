"""``chronos bench crash``: SIGKILL a worker (or nats-server) mid-flood; count lost and duplicated
jobs, time the recovery.

An embedded nats-server, ``workers`` worker processes of ``concurrency`` slots each, ``n``
jobs that sleep ``job_seconds``. When ``kill_at`` of them are done, the first worker's
whole process group gets SIGKILL as it next starts a job (so at least that one is caught
mid-flight; within 2 s, else at once); it is started again ``restart_after`` seconds later. With
``kill="server"`` the nats-server gets the SIGKILL instead (it runs with ``sync_interval:
always``, as deployed) and is started again on its store after ``restart_after``; every worker
stays up and rides the outage.

What each worker process ran is written, one line per start and per finish, to its own
file (line-buffered, so a SIGKILL loses nothing written). From those:

* orphaned: jobs the killed worker had started and not finished; JetStream redelivers
  them once ``ack_wait`` passes without an in-progress heartbeat from the dead worker;
* recovery_seconds: from the kill to the completion of the last orphan;
* drain_seconds: from the kill to the last completion of all jobs, next to
  min_drain_seconds, what the work left at the kill needs with every slot busy;
* lost: jobs not completed by the end; duplicated: jobs whose task finished more than
  once (a task that finished on the killed worker before its record was written runs
  again: at-least-once delivery); unseen_duplicates: those whose record shows fewer
  attempts than the task's finishes (a run nobody can see: always a defect).

Orphans of a server kill are the jobs running anywhere at the kill. Target: 0 lost, no unseen
duplicate, and the orphans done within 6 s of the kill. A short ``ack_wait`` is what
gets there; long jobs are kept alive by in-progress heartbeats every ack_wait/3.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec

from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..states import JobState
from ._common import stop_process, wait_for_workers

TASK = "bench.crash_sleep"
TARGET_SECONDS = 6.0


class CrashResult(msgspec.Struct):
    kill: str  # "worker" or "server": which process got the SIGKILL
    n: int
    workers: int
    concurrency: int
    job_seconds: float
    ack_wait: float
    killed_at_completed: int  # completions seen when the SIGKILL went out
    orphaned: int  # jobs running on the killed worker at the kill
    completed: int
    lost: int
    duplicated: int
    unseen_duplicates: int  # duplicated, and the record shows fewer attempts than finished runs
    recovery_seconds: float  # kill -> last orphan completed
    drain_seconds: float  # kill -> last job completed
    min_drain_seconds: float  # the work left at the kill, at full capacity
    total_seconds: float  # first submit -> last completion
    target_met: bool  # 0 lost, 0 unseen duplicates and recovery_seconds <= 6


def _spawn(url: str, namespace: str, concurrency: int, job_seconds: float, ack_wait: float,
           log_file: Path, running_write_after: float | None = None) -> subprocess.Popen[bytes]:
    """A bench worker in its own session (process group), so it can be SIGKILLed whole."""
    args = [sys.executable, "-m", "chronos.bench.crash", "worker", "--url", url, "--namespace", namespace,
            "--concurrency", str(concurrency), "--sleep", str(job_seconds), "--ack-wait", str(ack_wait),
            "--log", str(log_file)]
    if running_write_after is not None:
        args += ["--running-write-after", str(running_write_after)]
    return subprocess.Popen(args, env=dict(os.environ), start_new_session=True)


def _read_log(path: Path) -> tuple[list[str], list[str]]:
    started: list[str] = []
    finished: list[str] = []
    try:
        for line in path.read_text().splitlines():
            kind, _, job_id = line.partition(" ")
            (started if kind == "S" else finished).append(job_id)
    except FileNotFoundError:
        pass
    return started, finished


async def run_crash(
    n: int = 5000,
    *,
    workers: int = 2,
    concurrency: int = 8,
    job_seconds: float = 0.05,
    kill_at: float = 0.4,
    restart_after: float = 1.0,
    ack_wait: float = 2.0,
    running_write_after: float | None = None,
    timeout: float = 180.0,
    kill: str = "worker",
) -> CrashResult:
    """Run the crash benchmark on a fresh embedded server and return what it measured.

    ``running_write_after`` (worker setting; None: its default) is passed to the workers.
    ``kill``: ``"worker"`` (the first worker's process group) or ``"server"`` (nats-server).
    """
    if kill not in ("worker", "server"):
        raise ValueError(f"kill: {kill!r} is not 'worker' or 'server'")
    if workers < 2:
        raise ValueError("workers: at least 2 (one is killed, the others keep going)")
    sync = "always" if kill == "server" else None
    with tempfile.TemporaryDirectory(prefix="chronos-crash-") as tmp, \
            EmbeddedServer(Path(tmp) / "js", sync=sync) as server:
        ns = "crash"
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url},
                                            "worker": {"ack_wait": ack_wait}}, read_env=False)
        client = await Client.connect(settings)
        logs = [Path(tmp) / f"worker-{i}.log" for i in range(workers)]
        procs = [_spawn(server.url, ns, concurrency, job_seconds, ack_wait, log, running_write_after)
                 for log in logs]
        restarted: subprocess.Popen[bytes] | None = None
        server_again: EmbeddedServer | None = None
        try:
            await wait_for_workers(client, workers)
            specs = [client.build_spec(TASK) for _ in range(n)]
            completed_at: dict[str, float] = {}
            reached_kill = asyncio.Event()
            all_done = asyncio.Event()
            kill_count = max(1, int(n * kill_at))

            async def follow() -> None:
                async for ev in client.watch(kinds=["completed"]):
                    if ev.job_id and ev.job_id not in completed_at:
                        completed_at[ev.job_id] = time.perf_counter()
                        if len(completed_at) >= kill_count:
                            reached_kill.set()
                        if len(completed_at) >= n:
                            all_done.set()
                            return

            follower = asyncio.ensure_future(follow())
            await asyncio.sleep(0.2)  # let the events subscription reach the server first
            t0 = time.perf_counter()
            ids = await client.submit_specs(specs)
            await _wait_alive(reached_kill, procs, timeout, f"{kill_count} completions")

            if kill == "server":
                server.kill()
                t_kill = time.perf_counter()
                done_at_kill = len(completed_at)
                running_at_kill = _running(logs)
                await asyncio.sleep(restart_after)
                server_again = EmbeddedServer(server.store_dir, port=server.port, extra_args=server.extra_args,
                                              log_file=server.store_dir / "nats-server-restarted.log").start(timeout=30)
            else:
                victim = procs[0]
                # Killed as it starts a job (up to 2 s more), so the kill catches one mid-flight:
                # at a mere count, an idle moment of the victim's made a run with no orphan.
                await _job_starting(logs[0], 2.0)
                os.killpg(victim.pid, signal.SIGKILL)
                t_kill = time.perf_counter()
                done_at_kill = len(completed_at)
                victim.wait()
                running_at_kill = _running(logs[:1])
                await asyncio.sleep(restart_after)
                restart_log = Path(tmp) / "worker-0-restarted.log"
                restarted = _spawn(server.url, ns, concurrency, job_seconds, ack_wait, restart_log,
                                   running_write_after)

            # The killed worker's last events die with it (they are flushed in batches): once few
            # are missing, read those records and take their finish times from them instead.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while len(completed_at) < n and loop.time() < deadline:
                try:
                    await asyncio.wait_for(all_done.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                if 0 < n - len(completed_at) <= 256:
                    await _read_missing(client, ids, completed_at)
            follower.cancel()
            await _read_missing(client, ids, completed_at)
            finishes: Counter[str] = Counter()
            for path in [*logs, Path(tmp) / "worker-0-restarted.log"]:
                finishes.update(_read_log(path)[1])
            unseen = 0
            for job_id, runs in finishes.items():
                if runs > 1 and len((await client.get(job_id)).attempts) < runs:
                    unseen += 1
        finally:
            for p in [*procs, *([restarted] if restarted else [])]:
                if p.poll() is None:
                    stop_process(p)
            await client.close()
            if server_again is not None:
                server_again.stop()

        orphans = running_at_kill
        orphan_done = [completed_at[j] for j in orphans if j in completed_at]
        last = max(completed_at.values()) if completed_at else t_kill
        lost = n - len(completed_at)
        recovery = (max(orphan_done) - t_kill) if orphan_done else 0.0
        left = n - done_at_kill
        return CrashResult(
            kill=kill, n=n, workers=workers, concurrency=concurrency, job_seconds=job_seconds, ack_wait=ack_wait,
            killed_at_completed=done_at_kill, orphaned=len(orphans), completed=len(completed_at), lost=lost,
            duplicated=sum(1 for c in finishes.values() if c > 1), unseen_duplicates=unseen,
            recovery_seconds=round(recovery, 3), drain_seconds=round(last - t_kill, 3),
            min_drain_seconds=round(left * job_seconds / (workers * concurrency), 3),
            total_seconds=round(last - t0, 3),
            target_met=lost == 0 and unseen == 0 and len(orphan_done) == len(orphans) and recovery <= TARGET_SECONDS,
        )


async def _job_starting(log: Path, timeout: float) -> bool:
    """Return as a new start line reaches ``log`` (a job just began: its whole run still ahead),
    or False at ``timeout``. Reads only what was appended since the last look."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            while loop.time() < deadline:
                chunk = fh.read()
                if b"\nS " in b"\n" + chunk:
                    return True
                await asyncio.sleep(0.001)
    except FileNotFoundError:
        pass
    return False


def _running(logs: list[Path]) -> set[str]:
    """Jobs started and not finished in these workers' logs, now."""
    running: set[str] = set()
    for path in logs:
        started, finished = _read_log(path)
        running |= set(started) - set(finished)
    return running


async def _wait_alive(event: asyncio.Event, procs: list[subprocess.Popen[bytes]], timeout: float,
                      what: str) -> None:
    """Wait for ``event``; fail at once, and say so, if a worker process dies on its own meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not event.is_set():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"bench worker pid {dead[0].pid} exited with code {dead[0].returncode} "
                               f"before {what}; see its stderr above")
        if loop.time() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g}s")
        try:
            await asyncio.wait_for(event.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def _read_missing(client: Client, ids: list[str], completed_at: dict[str, float]) -> None:
    """Completions whose events were lost still count if the record says so, at its finish time."""
    offset = time.perf_counter() - time.time()  # wall clock -> perf_counter, on this host
    for job_id in ids:
        if job_id not in completed_at:
            rec = await client.get(job_id)
            if rec.state == JobState.COMPLETED:
                completed_at[job_id] = (rec.finished_at or time.time()) + offset


# --- the worker process ---------------------------------------------------------------------------------
async def _worker_main(args: argparse.Namespace) -> None:
    from ..worker.context import current_job
    from ..worker.registry import Registry
    from ..worker.service import WorkerService

    log_fh = open(args.log, "a", buffering=1)  # one write per line: what SIGKILL interrupts is whole lines

    async def crash_sleep() -> None:
        ctx = current_job()
        job_id = ctx.job_id if ctx is not None else "?"
        log_fh.write(f"S {job_id}\n")
        await asyncio.sleep(args.sleep)
        log_fh.write(f"F {job_id}\n")

    reg = Registry()
    reg.register(crash_sleep, name=TASK)
    worker = {"concurrency": args.concurrency, "ack_wait": args.ack_wait}
    if args.running_write_after is not None:
        worker["running_write_after"] = args.running_write_after
    settings = load_settings(overrides={"namespace": args.namespace, "nats": {"url": args.url}, "worker": worker},
                             read_env=False)
    svc = WorkerService(settings, reg, log_events=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.stop)
    try:
        await svc.run()
    finally:
        log_fh.close()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        ap = argparse.ArgumentParser(prog="chronos.bench.crash worker")
        ap.add_argument("--url", required=True)
        ap.add_argument("--namespace", required=True)
        ap.add_argument("--concurrency", type=int, default=8)
        ap.add_argument("--sleep", type=float, default=0.05)
        ap.add_argument("--ack-wait", type=float, default=2.0)
        ap.add_argument("--log", required=True)
        ap.add_argument("--running-write-after", type=float, default=None)
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(_worker_main(ap.parse_args(argv[1:])))
        return
    ap = argparse.ArgumentParser(prog="chronos.bench.crash")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--ack-wait", type=float, default=2.0)
    ap.add_argument("--running-write-after", type=float, default=None)
    ap.add_argument("--kill", choices=["worker", "server"], default="worker")
    a = ap.parse_args(argv)
    result = asyncio.run(run_crash(a.n, ack_wait=a.ack_wait, running_write_after=a.running_write_after, timeout=120,
                                   kill=a.kill))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()
