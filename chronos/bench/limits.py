"""``chronos bench limits``: fleet-wide rate and concurrency limits, measured from the tasks' side.

An embedded nats-server and ``workers`` worker processes (each in its own process group). Each
run writes ``S|F <job id> <key> <unix time>`` lines, line-buffered, to its worker's log, so the
measures come from the task itself and a SIGKILL loses no whole line. All processes share one
host clock.

(a) rate: one task limited to ``rate`` (default 50/s), a backlog of ``duration`` seconds of it
    submitted at once; the achieved rate over the starts, and the most starts in any 1 s window.
    Goals: within 5 % of the limit, never above 55 in a window (for 50/s).
(b) concurrency: ``jobs`` jobs of a task limited to 1 running per key, over ``keys`` keys; runs
    whose [start, end] overlap another run of the same key (goal 0), and the total time.
(c) recovery: a worker holding slots (long jobs, one per key) is SIGKILLed; the time until its
    slots are free again (the lease, ``worker.limit_lease``) and until every one of its jobs has
    started again on a surviving worker.
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
from collections import defaultdict
from pathlib import Path

import msgspec

from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ._common import stop_process, wait_for_workers

RATE_TASK = "bench.limited_rate"
KEY_TASK = "bench.limited_key"


class RateResult(msgspec.Struct):
    limit: str
    workers: int
    jobs: int
    achieved_per_second: float  # (starts - 1) / (last start - first start)
    within_5_percent: bool
    max_in_1s_window: int
    goal_window: int  # the limit per second + 10 %
    handed_back: int  # deliveries handed back over the limit (from the records)
    seconds: float


class ConcurrencyResult(msgspec.Struct):
    workers: int
    jobs: int
    keys: int
    job_seconds: float
    overlapping_runs: int  # goal 0
    completed: int
    total_seconds: float
    serial_seconds_per_key: float  # the least time one key's jobs need back to back
    # a run's end to the next start of the same key: how soon a released slot is used
    handoff_p50_ms: float = 0.0
    handoff_p90_ms: float = 0.0
    handoff_max_ms: float = 0.0
    first_start_ms: float = 0.0  # submit -> the slowest key's first start


class RecoveryResult(msgspec.Struct):
    lease: float
    ack_wait: float
    held_at_kill: int  # slots the killed worker held
    slots_free_seconds: float  # kill -> none of its slots held any more
    jobs_restarted_seconds: float  # kill -> every job it ran has started again elsewhere


class SnapshotResult(msgspec.Struct):
    keys: int  # distinct limit keys with a rate state
    holders: int  # held slots
    waiters: int  # wait notes
    seconds_median: float  # client.limits(), median of ``runs``
    seconds_max: float
    listed: int  # views in the snapshot
    omitted: int
    truncated: bool


class LimitsResult(msgspec.Struct):
    rate: RateResult | None
    concurrency: ConcurrencyResult | None
    recovery: RecoveryResult | None
    loadavg: str
    snapshot: SnapshotResult | None = None


def spawn_limit_worker(url: str, namespace: str, log: Path, *, concurrency: int = 16, rate: str = "50/s",
                       sleep: float = 0.0, lease: float = 5.0, ack_wait: float = 2.0,
                       max_deliver: int = 50) -> subprocess.Popen[bytes]:
    """A worker with the two limited tasks, in its own process group (so it can be SIGKILLed whole)."""
    args = [sys.executable, "-m", "chronos.bench.limits", "worker", "--url", url, "--namespace", namespace,
            "--concurrency", str(concurrency), "--rate", rate, "--sleep", str(sleep), "--lease", str(lease),
            "--ack-wait", str(ack_wait), "--max-deliver", str(max_deliver), "--log", str(log)]
    return subprocess.Popen(args, env=dict(os.environ), start_new_session=True)


def read_runs(paths: list[Path]) -> tuple[dict[str, list[float]], dict[str, list[tuple[str, float, float]]]]:
    """(starts by job id, [(job id, start, end)] by key) from worker logs."""
    starts: dict[str, list[float]] = defaultdict(list)
    open_: dict[str, tuple[str, float]] = {}
    spans: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split(" ")
            if len(parts) != 4:
                continue
            kind, job_id, key, at = parts[0], parts[1], parts[2], float(parts[3])
            if kind == "S":
                starts[job_id].append(at)
                open_[f"{path}:{job_id}"] = (key, at)
            elif kind == "F":
                k, s = open_.pop(f"{path}:{job_id}", (key, at))
                spans[k].append((job_id, s, at))
    return starts, spans


def overlapping(spans: dict[str, list[tuple[str, float, float]]]) -> int:
    n = 0
    for runs in spans.values():
        runs = sorted(runs, key=lambda r: r[1])
        end = -1.0
        for _id, s, e in runs:
            if s < end:
                n += 1
            end = max(end, e)
    return n


def max_in_window(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


async def _until(check, timeout: float, what: str, every: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g}s")
        await asyncio.sleep(every)


async def run_rate(server: EmbeddedServer, tmp: Path, *, rate: str = "50/s", duration: float = 60.0,
                   workers: int = 3) -> RateResult:
    from ..limits import parse_rate

    r = parse_rate(rate, "rate")
    ns = "limrate"
    settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url}}, read_env=False)
    client = await Client.connect(settings)
    logs = [tmp / f"rate-{i}.log" for i in range(workers)]
    procs = [spawn_limit_worker(server.url, ns, log, rate=rate) for log in logs]
    try:
        await wait_for_workers(client, workers)
        n = max(2, int(round(r.per_second * duration)))
        ids = await client.submit_specs([client.build_spec(RATE_TASK, {"i": i}) for i in range(n)])
        t0 = time.monotonic()
        await _until(lambda: len(read_runs(logs)[0]) >= n, duration * 2 + 60, f"{n} starts", every=0.5)
        seconds = time.monotonic() - t0
        handed = 0
        for job_id in ids[:: max(1, n // 200)]:  # a sample of the records
            handed += (await client.get(job_id)).handed_back
    finally:
        for p in procs:
            stop_process(p)
        await client.close()
    starts, _ = read_runs(logs)
    firsts = sorted(min(v) for v in starts.values())
    achieved = (len(firsts) - 1) / (firsts[-1] - firsts[0]) if len(firsts) > 1 and firsts[-1] > firsts[0] else 0.0
    goal_window = int(r.per_second * 1.1 + 0.5)
    return RateResult(limit=rate, workers=workers, jobs=n, achieved_per_second=round(achieved, 2),
                      within_5_percent=abs(achieved - r.per_second) <= 0.05 * r.per_second,
                      max_in_1s_window=max_in_window(firsts), goal_window=goal_window,
                      handed_back=handed * max(1, n // 200), seconds=round(seconds, 2))


async def run_concurrency(server: EmbeddedServer, tmp: Path, *, jobs: int = 1000, keys: int = 20, workers: int = 3,
                          job_seconds: float = 0.02) -> ConcurrencyResult:
    ns = "limconc"
    settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url}}, read_env=False)
    client = await Client.connect(settings)
    logs = [tmp / f"conc-{i}.log" for i in range(workers)]
    procs = [spawn_limit_worker(server.url, ns, log, sleep=job_seconds) for log in logs]
    try:
        await wait_for_workers(client, workers)
        t0 = time.monotonic()
        t_wall = time.time()
        await client.submit_specs([client.build_spec(KEY_TASK, {"key": f"k{i % keys}"}) for i in range(jobs)])

        def done() -> bool:
            _, spans = read_runs(logs)
            return sum(len(v) for v in spans.values()) >= jobs

        await _until(done, 600, f"{jobs} finished runs", every=0.25)
        total = time.monotonic() - t0
    finally:
        for p in procs:
            stop_process(p)
        await client.close()
    _, spans = read_runs(logs)
    gaps = sorted(g for runs in spans.values() for g in handoff_gaps(runs))
    firsts = [min(s for _j, s, _e in runs) for runs in spans.values() if runs]

    def q(p: float) -> float:
        return round(gaps[min(len(gaps) - 1, int(p * len(gaps)))] * 1000, 1) if gaps else 0.0

    return ConcurrencyResult(workers=workers, jobs=jobs, keys=keys, job_seconds=job_seconds,
                             overlapping_runs=overlapping(spans), completed=len({j for v in spans.values() for j, *_ in v}),
                             total_seconds=round(total, 2), serial_seconds_per_key=round(jobs / keys * job_seconds, 2),
                             handoff_p50_ms=q(0.5), handoff_p90_ms=q(0.9), handoff_max_ms=q(1.0),
                             first_start_ms=round((max(firsts) - t_wall) * 1000, 1) if firsts else 0.0)


def handoff_gaps(runs: list[tuple[str, float, float]]) -> list[float]:
    """Seconds from each run's end to the next run's start, for the runs of one key."""
    runs = sorted(runs, key=lambda r: r[1])
    return [max(0.0, b[1] - a[2]) for a, b in zip(runs, runs[1:])]


async def run_recovery(server: EmbeddedServer, tmp: Path, *, lease: float = 5.0, ack_wait: float = 2.0,
                       keys: int = 4) -> RecoveryResult:
    ns = "limkill"
    settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url}}, read_env=False)
    client = await Client.connect(settings)
    victim_log, other_log = tmp / "kill-victim.log", tmp / "kill-other.log"
    victim = spawn_limit_worker(server.url, ns, victim_log, sleep=3600.0, lease=lease, ack_wait=ack_wait)
    other: subprocess.Popen[bytes] | None = None
    try:
        await wait_for_workers(client, 1)
        await client.submit_specs([client.build_spec(KEY_TASK, {"key": f"k{i}"}) for i in range(keys)])
        await _until(lambda: len(read_runs([victim_log])[0]) >= keys, 60, "the victim holding every slot")
        # A second worker, started only now: every slot is the victim's.
        other = spawn_limit_worker(server.url, ns, other_log, sleep=0.0, lease=lease, ack_wait=ack_wait)
        await wait_for_workers(client, 2)
        snap = await client.limits()
        held = sum(len(v.holders) for v in snap.limits if v.kind == "concurrency")
        os.killpg(victim.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        victim.wait()
        freed_at: float | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lease * 4 + 60
        while loop.time() < deadline:
            if freed_at is None:
                snap = await client.limits()
                if not any(h.worker.startswith("victim-") for v in snap.limits for h in v.holders):
                    freed_at = time.monotonic()
            if len(read_runs([other_log])[0]) >= keys:
                break
            await asyncio.sleep(0.05)
        restarted = time.monotonic()
    finally:
        for p in [victim, *([other] if other else [])]:
            if p.poll() is None:
                stop_process(p)
        await client.close()
    return RecoveryResult(lease=lease, ack_wait=ack_wait, held_at_kill=held,
                          slots_free_seconds=round((freed_at or restarted) - t_kill, 2),
                          jobs_restarted_seconds=round(restarted - t_kill, 2))


async def run_snapshot(server: EmbeddedServer, *, keys: int = 10_000, holders: int = 1_000, waiters: int = 5_000,
                       runs: int = 5) -> SnapshotResult:
    """The cost of ``client.limits()`` over a bucket with ``keys`` rate-limited keys, ``holders`` held
    slots and ``waiters`` wait notes (written straight into the bucket, as workers would)."""
    from .. import codec
    from ..limits import RateState, SlotHolder, Waiter, digest
    from ..limitstore import RATE_PREFIX, SLOT_PREFIX, WAIT_PREFIX

    ns = "limsnap"
    settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url}}, read_env=False)
    client = await Client.connect(settings)
    try:
        pub = client.conn.publisher
        bucket = client.names.limits_bucket
        now = time.time()
        futs = []
        for i in range(keys):
            st = RateState(tat=now + (i % 50), scope="task", name="bench.snap", key=f"customer-{i}", limit="1/s")
            futs.append(await pub.publish(client.names.kv_subject(bucket, RATE_PREFIX + digest("task", "bench.snap",
                                                                                                  f"customer-{i}")),
                                          codec.encode(st)))
        for i in range(holders):
            k = f"customer-{i}"
            h = SlotHolder(job_id=f"job-{i}", worker="w", since=now, scope="task", name="bench.snapc", key=k,
                           limit=1, lease=3600.0, renewed=now)
            futs.append(await pub.publish(client.names.kv_subject(
                bucket, SLOT_PREFIX + digest("task", "bench.snapc", k) + ".0"), codec.encode(h), {"Nats-TTL": "3600s"}))
        for i in range(waiters):
            k = f"customer-{i % max(1, holders)}"
            w = Waiter(job_id=f"wjob-{i}", scope="task", name="bench.snapc", key=k, since=now)
            futs.append(await pub.publish(client.names.kv_subject(
                bucket, WAIT_PREFIX + digest("task", "bench.snapc", k) + f".wjob-{i}"), codec.encode(w),
                {"Nats-TTL": "3600s"}))
        for f in futs:
            await f
        times = []
        snap = None
        for _ in range(runs):
            t0 = time.perf_counter()
            snap = await client.limits()
            times.append(time.perf_counter() - t0)
    finally:
        await client.close()
    times.sort()
    assert snap is not None
    return SnapshotResult(keys=keys, holders=holders, waiters=waiters, seconds_median=round(times[len(times) // 2], 3),
                          seconds_max=round(times[-1], 3), listed=len(snap.limits),
                          omitted=getattr(snap, "omitted", 0), truncated=getattr(snap, "truncated", False))


async def run_limits(*, which: tuple[str, ...] = ("rate", "concurrency", "recovery"), rate: str = "50/s",
                     duration: float = 60.0, workers: int = 3, jobs: int = 1000, keys: int = 20,
                     job_seconds: float = 0.02, lease: float = 5.0) -> LimitsResult:
    with tempfile.TemporaryDirectory(prefix="chronos-limits-") as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        t = Path(tmp)
        rr = await run_rate(server, t, rate=rate, duration=duration, workers=workers) if "rate" in which else None
        cr = (await run_concurrency(server, t, jobs=jobs, keys=keys, workers=workers, job_seconds=job_seconds)
              if "concurrency" in which else None)
        kr = await run_recovery(server, t, lease=lease) if "recovery" in which else None
        sr = await run_snapshot(server) if "snapshot" in which else None
    return LimitsResult(rate=rr, concurrency=cr, recovery=kr, loadavg=_loadavg(), snapshot=sr)


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return ""


# --- the worker process ---------------------------------------------------------------------------------
async def _worker_main(args: argparse.Namespace) -> None:
    from ..limits import task_limits
    from ..worker.context import current_job
    from ..worker.registry import Registry
    from ..worker.service import WorkerService

    log_fh = open(args.log, "a", buffering=1)  # one write per line: what SIGKILL interrupts is whole lines

    def line(kind: str, key: str) -> None:
        ctx = current_job()
        log_fh.write(f"{kind} {ctx.job_id if ctx is not None else '?'} {key or '-'} {time.time():.6f}\n")

    async def limited_rate(i: int = 0) -> None:
        line("S", "-")
        line("F", "-")

    async def limited_key(key: str) -> None:
        line("S", key)
        if args.sleep:
            await asyncio.sleep(args.sleep)
        line("F", key)

    reg = Registry()
    reg.register(limited_rate, name=RATE_TASK, limits=task_limits(rate_limit=args.rate))
    reg.register(limited_key, name=KEY_TASK, limits=task_limits(concurrency=1, limit_key="key"))
    name = Path(args.log).stem.split("-")[-1]
    settings = load_settings(overrides={
        "namespace": args.namespace, "nats": {"url": args.url},
        "worker": {"concurrency": args.concurrency, "ack_wait": args.ack_wait, "limit_lease": args.lease,
                   "max_deliver": args.max_deliver}}, read_env=False)
    svc = WorkerService(settings, reg, log_events=False, worker_id=f"{name}-{os.getpid()}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.stop)
    try:
        await svc.run()
    finally:
        log_fh.close()
        lim = svc.limiter
        if lim is not None:  # how jobs waiting on a limit came back (stderr, for the one running the bench)
            logging.getLogger("chronos.bench.limits").debug(
                "worker %s: %d hand-backs over a limit, %d re-parked, %d slots handed over, woken %s",
                name, lim.waited, lim.reparked, lim.handed_over, lim.woken)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        ap = argparse.ArgumentParser(prog="chronos.bench.limits worker")
        ap.add_argument("--url", required=True)
        ap.add_argument("--namespace", required=True)
        ap.add_argument("--concurrency", type=int, default=16)
        ap.add_argument("--rate", default="50/s")
        ap.add_argument("--sleep", type=float, default=0.0)
        ap.add_argument("--lease", type=float, default=5.0)
        ap.add_argument("--ack-wait", type=float, default=2.0)
        ap.add_argument("--max-deliver", type=int, default=50)
        ap.add_argument("--log", required=True)
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(_worker_main(ap.parse_args(argv[1:])))
        return
    ap = argparse.ArgumentParser(prog="chronos.bench.limits")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--which", default="rate,concurrency,recovery")
    a = ap.parse_args(argv)
    result = asyncio.run(run_limits(which=tuple(a.which.split(",")), duration=a.duration))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()
