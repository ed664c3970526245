"""A scheduler process for the benchmarks: one SchedulerService, stopped by SIGTERM (or killed).

It prints ``READY <pid>`` on stdout once its archive is open, and ``LEADING`` when
its leader-only loops (stager loaded) run. On a clean exit it writes the stager's
own lateness samples to ``--stats`` (JSON), so a bench can compare the timer's
view with what an outside observer saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..config import load_settings
from ..runtime import tune_gc_for_timers
from ..scheduler import SchedulerService


def spawn_scheduler(url: str, namespace: str, *, archive: Path, node_id: str, stats_file: Path | None = None,
                    overrides: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Its own process group, so a bench can SIGKILL exactly it by its PID."""
    args = [sys.executable, "-m", "chronos.bench._scheduler", "--url", url, "--namespace", namespace,
            "--archive", str(archive), "--id", node_id]
    if stats_file is not None:
        args += ["--stats", str(stats_file)]
    for k, v in (overrides or {}).items():
        args += ["--set", f"{k}={v}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, start_new_session=True)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--stats")
    ap.add_argument("--set", action="append", default=[], help="scheduler.<key>=<value> (seconds)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    sched = {k.rsplit(".", 1)[-1]: float(v) for k, v in (s.split("=", 1) for s in args.set)}
    settings = load_settings(overrides={"namespace": args.namespace, "nats": {"url": args.url},
                                        "scheduler": {"archive_path": args.archive, **sched}}, read_env=False)
    tune_gc_for_timers()  # as `chronos serve scheduler` does
    svc = SchedulerService(settings, node_id=args.id, log_events=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.stop)

    async def announce() -> None:
        while svc.archiver is None:
            await asyncio.sleep(0.01)
        await svc.archiver.ready.wait()
        print(f"READY {os.getpid()}", flush=True)
        await svc.leading.wait()
        assert svc.stager is not None
        await svc.stager.ready.wait()
        print("LEADING", flush=True)

    teller = asyncio.ensure_future(announce())
    try:
        await svc.run()
    finally:
        teller.cancel()
        if args.stats and svc.stager is not None:
            st = svc.stager.stats
            Path(args.stats).write_text(json.dumps({"lateness": st.lateness, "fire_lateness": st.fire_lateness}))


if __name__ == "__main__":
    asyncio.run(main())
