"""Measure the console under load: CPU of the TUI process and how often the dashboard refreshes.

Not a pytest module (run it by hand; it takes about a minute)::

    python -m tests.tui.measure_load [--rate 5000] [--seconds 20]

It starts an embedded nats-server, one benchmark worker process and one load
generator process (submitting ``rate`` no-op jobs per second, like ``chronos bench
throughput``), then runs the console headless in this process (App.run_test) on
the dashboard and reports, over the measured window: CPU seconds used by this
process per wall second (the TUI with its client, feeds and rendering), the
intervals between dashboard refreshes, how long a view switch takes under load,
and how many events the feed absorbed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chronos.bench._common import spawn_worker, stop_process, wait_for_workers
from chronos.client import Client
from chronos.config import load_settings
from chronos.embedded import EmbeddedServer
from chronos.tui.app import make_app
from chronos.tui.screens.dashboard import DashboardScreen


async def generate(url: str, namespace: str, rate: int, seconds: float) -> None:
    """Submit ``rate`` jobs per second in 50 ms slices for ``seconds``."""
    settings = load_settings(overrides={"namespace": namespace, "nats": {"url": url}}, read_env=False)
    client = await Client.connect(settings)
    try:
        slice_s = 0.05
        per_slice = max(1, int(rate * slice_s))
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < seconds:
            due = int((time.monotonic() - start) / slice_s + 1) * per_slice
            if due > sent:
                n = due - sent
                await client.submit_specs([client.build_spec("bench.noop") for _ in range(n)])
                sent += n
            await asyncio.sleep(max(0.0, start + (sent / per_slice) * slice_s - time.monotonic()))
        print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 2)}), flush=True)
    finally:
        await client.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


async def measure(rate: int, seconds: float, switch_to: str = "events", profile: str | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="chronos-tui-load-") as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        ns = "tuiload"
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url}}, read_env=False)
        client = await Client.connect(settings)
        worker = spawn_worker(server.url, ns, concurrency=256, stats_file=Path(tmp) / "w.json")
        gen = None
        try:
            await wait_for_workers(client, 1)
            app = make_app(settings, client)
            async with app.run_test(size=(160, 48)) as pilot:
                deadline = time.monotonic() + 20
                while not (app.latest_stats and app.latest_stats.seeded and app.latest_cluster):
                    if time.monotonic() > deadline:
                        raise TimeoutError("console did not come up")
                    await pilot.pause(0.05)
                dash = app.screen
                assert isinstance(dash, DashboardScreen)
                gen = subprocess.Popen([sys.executable, "-m", "tests.tui.measure_load", "--generate",
                                        "--url", server.url, "--namespace", ns, "--rate", str(rate),
                                        "--seconds", str(seconds + 4)], stdout=subprocess.PIPE)
                await asyncio.sleep(2.0)  # let the load ramp up before measuring
                events0, refresh0 = app.feeds.tally.events_seen, len(dash.refreshes)
                prof = None
                if profile:
                    import cProfile

                    prof = cProfile.Profile()
                    prof.enable()
                cpu0, wall0 = time.process_time(), time.monotonic()
                switches: list[float] = []
                lags: list[float] = []
                loop = asyncio.get_running_loop()

                async def probe() -> None:  # event-loop lag: how late a 50 ms timer fires
                    while True:
                        t = loop.time()
                        await asyncio.sleep(0.05)
                        lags.append(loop.time() - t - 0.05)

                prober = loop.create_task(probe())
                while time.monotonic() - wall0 < seconds:
                    await asyncio.sleep(1.0)
                    keys = {"jobs": "2", "events": "3", "schedules": "4", "dlq": "5"}
                    if switch_to == "none":
                        continue
                    for key, mode in ((keys[switch_to], switch_to), ("1", "dashboard")):
                        t = time.monotonic()
                        press = loop.create_task(pilot.press(key))  # the key goes in as a terminal's would
                        limit = t + 30
                        while (app.current_mode != mode or not app.screen.is_current) and time.monotonic() < limit:
                            await asyncio.sleep(0.002)
                        switches.append(time.monotonic() - t)
                        await asyncio.wait_for(press, 30)
                prober.cancel()
                cpu = time.process_time() - cpu0
                wall = time.monotonic() - wall0
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(profile)
                events = app.feeds.tally.events_seen - events0
                stamps = [s for s in dash.refreshes[refresh0:] if s >= wall0]
                intervals = [b - a for a, b in zip(stamps, stamps[1:])]
                completed = sum(r.completed_5m for r in app.latest_stats.rows) if app.latest_stats else 0
            out, _ = gen.communicate(timeout=60)
            sent = json.loads(out.decode().strip().splitlines()[-1])
            return {
                "target_rate": rate,
                "view_switched_each_second": switch_to,
                "generator": sent,
                "window_s": round(wall, 2),
                "tui_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
                "events_absorbed_per_s": round(events / wall),
                "completed_5m_at_end": completed,
                "dashboard_refreshes": len(stamps),
                "refresh_interval_ms": {
                    "mean": round(1000 * statistics.mean(intervals), 1) if intervals else None,
                    "p50": round(1000 * pct(intervals, 50), 1),
                    "p95": round(1000 * pct(intervals, 95), 1),
                    "max": round(1000 * max(intervals), 1) if intervals else None,
                },
                "loop_lag_ms": {"p50": round(1000 * pct(lags, 50), 1), "p95": round(1000 * pct(lags, 95), 1),
                                "max": round(1000 * max(lags), 1) if lags else None},
                "view_switch_ms": {"p50": round(1000 * pct(switches, 50), 1),
                                   "max": round(1000 * max(switches), 1) if switches else None},
            }
        finally:
            if gen is not None and gen.poll() is None:
                gen.kill()
                gen.wait()
            stop_process(worker)
            await client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--switch", default="events", choices=["none", "jobs", "events", "schedules", "dlq"],
                    help="the view to switch to and back from each second while measuring")
    ap.add_argument("--profile", help="write a cProfile of the measured window here")
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--url")
    ap.add_argument("--namespace")
    args = ap.parse_args()
    if args.generate:
        asyncio.run(generate(args.url, args.namespace, args.rate, args.seconds))
        return
    result = asyncio.run(measure(args.rate, args.seconds, args.switch, args.profile))
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
