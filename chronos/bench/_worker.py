"""A worker process for the benchmarks: no-op and sleep tasks that record every run.

Every run appends its job id to the stats file (flushed every 0.5 s and on exit),
so duplicates are counted from the task's side, not inferred from events, and a
SIGKILLed worker still leaves what it ran up to its last flush. Appending only
the new ids keeps the flush O(new runs): rewriting the whole map every 0.5 s
cost the worker about 6 % of its CPU at 20,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ..config import load_settings
from ..gctune import tune_gc
from ..worker.context import current_job
from ..worker.registry import Registry
from ..worker.service import WORKER_GC_GEN0, WorkerService

unflushed: list[str] = []


def build_registry(sleep: float) -> Registry:
    reg = Registry()

    async def noop() -> None:
        ctx = current_job()
        if ctx is not None:
            unflushed.append(ctx.job_id)

    async def sleepy() -> None:
        ctx = current_job()
        await asyncio.sleep(sleep)
        if ctx is not None:
            unflushed.append(ctx.job_id)

    reg.register(noop, name="bench.noop")
    reg.register(sleepy, name="bench.sleep")
    return reg


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--sleep", type=float, default=0.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(overrides={"namespace": args.namespace, "nats": {"url": args.url},
                                        "worker": {"concurrency": args.concurrency}})
    svc = WorkerService(settings, build_registry(args.sleep), log_events=False)
    tune_gc(WORKER_GC_GEN0)  # as `chronos serve worker` does
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.stop)

    async def dump() -> None:
        while True:
            await asyncio.sleep(0.5)
            _write(args.stats)

    dumper = asyncio.ensure_future(dump())
    try:
        await svc.run()
    finally:
        dumper.cancel()
        _write(args.stats)


def _write(path: str) -> None:
    if not unflushed:
        return
    batch = "\n".join(unflushed) + "\n"
    unflushed.clear()
    with open(path, "a") as fh:
        fh.write(batch)


if __name__ == "__main__":
    asyncio.run(main())
