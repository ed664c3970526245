"""A worker process for the benchmarks: no-op and sleep tasks that record every run.

On exit it writes how often each job id ran, so duplicates are counted from the
task's side, not inferred from events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections import Counter

from ..config import load_settings
from ..worker.context import current_job
from ..worker.registry import Registry
from ..worker.service import WorkerService

runs: Counter[str] = Counter()


def build_registry(sleep: float) -> Registry:
    reg = Registry()

    async def noop() -> None:
        ctx = current_job()
        if ctx is not None:
            runs[ctx.job_id] += 1

    async def sleepy() -> None:
        ctx = current_job()
        await asyncio.sleep(sleep)
        if ctx is not None:
            runs[ctx.job_id] += 1

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
    with open(path, "w") as fh:
        json.dump({"runs": dict(runs)}, fh)


if __name__ == "__main__":
    asyncio.run(main())
