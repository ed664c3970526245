"""``chronos bench workflows``: a group of N children with one callback, and a chain of M steps.

Starts its own nats-server, worker processes (this module's ``worker`` entry, tasks below) and
one scheduler process. Every run of a task appends a line to its worker's stats file (kind, job
id, wall time, flushed every 0.2 s and on exit), so runs are counted from the tasks' side.

Measured: for the group, the time to submit, the time until the last child completed, the
callback's latency (its function's start minus the last child's ``finished_at``, one clock,
one machine) and how many times it ran (must be 1); for the chain, the total time and the
per-step overhead (total / steps; the steps do nothing).

``idle`` (seconds, 0: skip), before those: the scheduler process's CPU over that long with no
workflow at all, then again with ``finished`` finished workflows in the bucket (written directly:
a completed, settled record and a one-node definition each; the leader's loop looks only at the
records), and how long one read of every record takes (what each tick of the loop cost before it
followed active workflows only); then with one running workflow of 2,000 nodes in which nothing
changes, and how long one repair of it takes (what the loop spent on it every second before it
read only workflows that changed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from .. import task
from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..worker.context import current_job
from ..worker.registry import Registry
from ._common import stop_process, wait_for_workers

registry = Registry()
_lines: list[str] = []


def _note(kind: str) -> None:
    ctx = current_job()
    _lines.append(f"{kind} {ctx.job_id if ctx else '-'} {time.time():.6f}")


@task(name="wfb.leaf", registry=registry, queue="wfb")
async def leaf(i: int, sleep: float = 0.0) -> int:
    if sleep:
        await asyncio.sleep(sleep)
    _note("leaf")
    return i


@task(name="wfb.cb", registry=registry, queue="wfb")
async def callback(results: list[int]) -> int:
    _note("cb")
    return sum(1 for r in results if isinstance(r, int))


@task(name="wfb.step", registry=registry, queue="wfb")
async def step(x: int) -> int:
    _note("step")
    return x + 1


class GroupResult(msgspec.Struct):
    children: int
    submit_seconds: float
    children_seconds: float  # submit to the last child's completion
    callback_latency: float  # last child's completion to the callback's start
    callback_created: float  # last child's completion to the callback's job being created (the fan-in)
    callback_taken: float  # last child's completion to a worker taking the callback's job
    callback_runs: int
    callback_result: int
    duplicate_children: int


class ChainResult(msgspec.Struct):
    steps: int
    total_seconds: float
    per_step_ms: float
    duplicate_steps: int


class IdleResult(msgspec.Struct):
    seconds: float  # each measuring window
    cpu_percent_empty: float  # scheduler process, no workflow in the bucket
    cpu_percent_finished: float  # the same with ``finished`` finished workflows
    finished: int
    write_seconds: float  # writing the finished workflows (pipelined)
    full_read_ms: float  # one read of every workflow record (the old loop's cost per tick)
    loadavg: str
    active_nodes: int = 0  # then one running workflow of this many nodes in which nothing changes
    cpu_percent_active: float = 0.0
    repair_ms: float = 0.0  # one repair of it: what the loop spent on it every max(1, nodes/2000) s before


class WorkflowsResult(msgspec.Struct):
    group: GroupResult | None
    chain: ChainResult | None
    workers: int
    concurrency: int
    loadavg: str
    target_met: bool  # callback once, within 1 s of the last child
    idle: IdleResult | None = None


def read_runs(paths: list[Path]) -> list[tuple[str, str, float]]:
    out = []
    for p in paths:
        try:
            text = p.read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            kind, job_id, t = line.split()
            out.append((kind, job_id, float(t)))
    return out


def spawn_wf_worker(url: str, namespace: str, *, concurrency: int, stats_file: Path, ack_wait: float = 5.0) -> Any:
    """A worker process serving this module's tasks; its own process group, so it can be SIGKILLed alone."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "chronos.bench.workflows", "worker", "--url", url, "--namespace", namespace,
            "--concurrency", str(concurrency), "--stats", str(stats_file), "--ack-wait", str(ack_wait)]
    return subprocess.Popen(args, start_new_session=True)


async def _write_finished(client: Client, count: int) -> float:
    """``count`` finished workflows, as the leader sees them: a completed, settled record each (and a
    one-node definition); pipelined puts. Seconds taken."""
    from .. import codec
    from ..ids import new_job_id
    from ..states import WorkflowState
    from ..workflows import NodeDef, WorkflowDef, WorkflowRecord

    kv = await client.workflow_api.store.kv()
    pub = client.conn.publisher
    t0 = time.perf_counter()
    now = time.time()
    futs = []
    for _ in range(count):
        wf = "w" + new_job_id(now)
        for key, value in ((f"d.{wf}", WorkflowDef(id=wf, nodes=[NodeDef(task="wfb.leaf", parents=[])])),
                           (f"w.{wf}", WorkflowRecord(id=wf, state=WorkflowState.COMPLETED, created_at=now,
                                                      updated_at=now, nodes=1, finished_at=now, settled=True))):
            if pub.in_flight >= pub.window // 2:
                await pub.wait_for_room(pub.window // 4)
            futs.append(await kv.put_nowait(key, codec.encode(value)))
    await asyncio.gather(*futs)
    return time.perf_counter() - t0


async def _write_active(client: Client, nodes: int) -> str:
    """One running workflow of ``nodes`` roots: all completed but one, waiting on a queue nobody serves
    (nothing will change in it; written directly, as the leader would find it)."""
    from .. import codec
    from ..ids import new_job_id
    from ..models import JobRecord, JobSpec
    from ..states import JobState, WorkflowState
    from ..workflows import NodeDef, WorkflowDef, WorkflowRecord, node_job_id

    kv = await client.workflow_api.store.kv()
    jobs = await client.ops.store()
    pub = client.conn.publisher
    now = time.time()
    wf = "w" + new_job_id(now)
    await kv.put(f"d.{wf}", codec.encode(WorkflowDef(id=wf, nodes=[NodeDef(task="wfb.leaf", parents=[])] * nodes)))
    futs = []
    for i in range(nodes):
        spec = JobSpec(task="wfb.leaf", args=[i], queue="nobody")
        done = i < nodes - 1
        rec = JobRecord(id=node_job_id(wf, i), spec=spec, state=JobState.COMPLETED if done else JobState.AVAILABLE,
                        created_at=now, updated_at=now, finished_at=now if done else None, result=i if done else None)
        if pub.in_flight >= pub.window // 2:
            await pub.wait_for_room(pub.window // 4)
        futs.append(await jobs.put_nowait(rec.id, codec.encode(rec)))
    await asyncio.gather(*futs)
    await kv.put(f"w.{wf}", codec.encode(WorkflowRecord(id=wf, state=WorkflowState.RUNNING, created_at=now - 3600,
                                                        updated_at=now, nodes=nodes)))
    return wf


async def measure_idle(client: Client, pid: int, *, seconds: float, finished: int, active_nodes: int = 2000
                       ) -> IdleResult:
    from ._common import cpu_seconds

    async def window() -> float:
        c0, w0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        return (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100

    await asyncio.sleep(2.0)  # the scheduler's start-up work is over
    empty = await window()
    wrote = await _write_finished(client, finished)
    await asyncio.sleep(3.0)  # its watch has taken them in
    full = await window()
    t0 = time.perf_counter()
    n = len(await client.workflow_api.store.records())
    read_ms = (time.perf_counter() - t0) * 1000
    if n < finished:
        raise RuntimeError(f"wrote {finished} workflows, read back {n}")
    active = repair_ms = 0.0
    if active_nodes:
        wf = await _write_active(client, active_nodes)
        await asyncio.sleep(3.0)  # seen, read once
        active = await window()
        t0 = time.perf_counter()
        await client.workflow_api.store.repair(wf)
        repair_ms = (time.perf_counter() - t0) * 1000
        await client.cancel_workflow(wf)  # not to leave it for what runs next
    return IdleResult(seconds=seconds, cpu_percent_empty=round(empty, 1), cpu_percent_finished=round(full, 1),
                      finished=finished, write_seconds=round(wrote, 2), full_read_ms=round(read_ms, 1),
                      loadavg=Path("/proc/loadavg").read_text().strip(), active_nodes=active_nodes,
                      cpu_percent_active=round(active, 1), repair_ms=round(repair_ms, 1))


async def run_workflows(*, children: int = 10_000, steps: int = 1_000, workers: int = 2, concurrency: int = 256,
                        timeout: float = 600.0, url: str | None = None, namespace: str = "wfbench",
                        idle: float = 0.0, finished: int = 10_000) -> WorkflowsResult:
    from ..workflows import Workflow, chain, chord, group, node_job_id
    from ._scheduler import spawn_scheduler

    tmp = Path(tempfile.mkdtemp(prefix="chronos-wfbench-"))
    server = None
    if url is None:
        server = EmbeddedServer(store_dir=tmp / "store")
        server.start()
        url = server.url
    settings = load_settings(overrides={"namespace": namespace, "nats": {"url": url}}, read_env=False)
    client = await Client.connect(settings)
    procs = []
    stats = [tmp / f"w{i}.log" for i in range(workers)]
    try:
        await client.ensure_queue("wfb")
        sched = spawn_scheduler(url, namespace, archive=tmp / "archive.sqlite3", node_id="wfb-sched")
        procs.append(sched)
        procs += [spawn_wf_worker(url, namespace, concurrency=concurrency, stats_file=s) for s in stats]
        await wait_for_workers(client, workers, timeout=60)
        client._known_tasks.update({"wfb.leaf", "wfb.cb", "wfb.step"})
        g = c = None
        idle_result = await measure_idle(client, sched.pid, seconds=idle, finished=finished) if idle > 0 else None
        if children:
            t0 = time.perf_counter()
            wall0 = time.time()
            ref = await client.submit_workflow(Workflow(chord(group(leaf.s(i) for i in range(children)),
                                                              callback.s())))
            t_sub = time.perf_counter() - t0
            rec = await ref.wait(timeout)
            cb_id = node_job_id(ref.id, children)
            cb = await client.get(cb_id)
            kids = await client.workflow_api.store.jobs(ref.id, None, children + 1)
            last = max(j.finished_at or 0.0 for i, j in kids.items() if i < children)
            await asyncio.sleep(0.5)  # the workers' stats files flush every 0.2 s
            runs = read_runs(stats)
            cb_starts = [t for kind, jid, t in runs if kind == "cb" and jid == cb_id]
            leaf_ids = [jid for kind, jid, _ in runs if kind == "leaf" and jid.startswith(ref.id + ".")]
            g = GroupResult(children=children, submit_seconds=t_sub, children_seconds=last - wall0,
                            callback_latency=(min(cb_starts) - last) if cb_starts else float("nan"),
                            callback_created=cb.created_at - last,
                            callback_taken=(cb.attempts[0].started_at - last) if cb.attempts else float("nan"),
                            callback_runs=len(cb_starts), callback_result=int(cb.result or 0),
                            duplicate_children=len(leaf_ids) - len(set(leaf_ids)))
            if rec.state != "completed":
                raise RuntimeError(f"group workflow ended {rec.state}: {rec.reason}")
        if steps:
            t0 = time.perf_counter()
            ref = await client.submit_workflow(Workflow(chain(step.s(0), *(step.s() for _ in range(steps - 1)))))
            result = await ref.result(timeout)
            total = time.perf_counter() - t0
            if result != steps:
                raise RuntimeError(f"chain of {steps} returned {result}")
            await asyncio.sleep(0.5)
            ids = [jid for kind, jid, _ in read_runs(stats) if kind == "step" and jid.startswith(ref.id + ".")]
            c = ChainResult(steps=steps, total_seconds=total, per_step_ms=total / steps * 1000,
                            duplicate_steps=len(ids) - len(set(ids)))
        ok = g is None or (g.callback_runs == 1 and g.callback_latency <= 1.0 and g.duplicate_children == 0)
        return WorkflowsResult(group=g, chain=c, workers=workers, concurrency=concurrency,
                               loadavg=Path("/proc/loadavg").read_text().strip(), target_met=ok, idle=idle_result)
    finally:
        for p in procs:
            stop_process(p)
        await client.close()
        if server is not None:
            server.cleanup()


# --- the worker process --------------------------------------------------------------------------------------
async def _worker_main(args: argparse.Namespace) -> None:
    from ..worker.service import WorkerService

    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(overrides={"namespace": args.namespace, "nats": {"url": args.url},
                                        "worker": {"concurrency": args.concurrency, "queues": ["wfb", "default"],
                                                   "ack_wait": args.ack_wait, "heartbeat_interval": 0.5}},
                             read_env=False)
    svc = WorkerService(settings, registry, log_events=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.stop)

    def flush() -> None:
        if _lines:
            batch = "\n".join(_lines) + "\n"
            _lines.clear()
            with open(args.stats, "a") as fh:
                fh.write(batch)

    async def dump() -> None:
        while True:
            await asyncio.sleep(0.2)
            flush()

    dumper = asyncio.ensure_future(dump())
    try:
        await svc.run()
    finally:
        dumper.cancel()
        flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--url", required=True)
    w.add_argument("--namespace", required=True)
    w.add_argument("--concurrency", type=int, default=256)
    w.add_argument("--stats", required=True)
    w.add_argument("--ack-wait", type=float, default=5.0)
    args = ap.parse_args(argv)
    asyncio.run(_worker_main(args))


if __name__ == "__main__":
    main()
