"""``chronos bench delayed-memory``: the scheduler's RSS with N delayed jobs waiting far ahead.

An embedded nats-server and one scheduler process. N jobs are written the way
``Client.submit`` writes a delayed job (a ``scheduled`` record in the jobs KV,
then a parked message on its minute subject), but pipelined so a million take
a minute or two, with ``run_at`` spread from past the stager's horizon to
``days`` ahead. The scheduler's resident memory (``/proc/<pid>/status``) is
sampled while they arrive; then a second scheduler process is started over the
full store (its initial load and its first rescuer and pruner passes read every
record) and sampled for ``settle`` seconds. Reported: the peak RSS of each
(``VmHWM``). Target: below 250 MB for 1,000,000 jobs.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import deque
from pathlib import Path

import msgspec

from .. import codec
from ..client import Client
from ..config import load_settings
from ..delayed import minute_of
from ..embedded import EmbeddedServer
from ..ids import new_job_id
from ..jobs import new_record
from ..models import JobMessage
from ..states import JobState
from ._common import stop_process
from ._scheduler import spawn_scheduler
from .precision import _line


class DelayedMemoryResult(msgspec.Struct):
    n: int
    fill_seconds: float
    peak_rss_mb_while_filling: float
    peak_rss_mb_restarted: float
    rss_mb_restarted_end: float
    passed: bool


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB; zeros once the process is gone."""
    out = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in out:
                out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out["VmRSS"], out["VmHWM"]


async def _park_many(client: Client, n: int, horizon: float, days: float, chunk: int = 2000) -> None:
    ops, names, pub = client.ops, client.names, client.conn.publisher
    store = await ops.store()
    rng = random.Random(11)
    now = time.time()
    spec = client.build_spec("bench.noop")
    pending: deque[object] = deque()
    for start in range(0, n, chunk):
        batch = []
        for _ in range(min(chunk, n - start)):
            run_at = now + horizon + 60 + rng.uniform(0, days * 86400)
            rec = new_record(new_job_id(now), msgspec.structs.replace(spec, run_at=run_at), now,
                             JobState.SCHEDULED, scheduled_at=run_at)
            batch.append((rec, await store.create_nowait(rec.id, codec.encode(rec))))
        for rec, fut in batch:
            rev = await fut
            data = codec.encode(JobMessage(record=rec, rev=rev))
            subject = names.delayed_subject(minute_of(rec.spec.run_at or 0.0))
            pending.append(await pub.publish(subject, data, {"Nats-Msg-Id": f"park:{rec.id}:{rec.gen}"}))
        # Settle the parks of the previous chunk so acks do not pile up.
        while len(pending) > 2 * chunk:
            await pub.wait(pending.popleft())  # type: ignore[arg-type]
    for fut in pending:
        await pub.wait(fut)  # type: ignore[arg-type]


async def run_delayed_memory(n: int = 1_000_000, days: float = 7.0, settle: float = 20.0) -> DelayedMemoryResult:
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        ns = "bench"
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url},
                                            "jobs": {"check_task_names": False}}, read_env=False)
        horizon = settings.scheduler.horizon
        client = await Client.connect(settings)
        first = spawn_scheduler(server.url, ns, archive=Path(tmp) / "a.sqlite3", node_id="mem-a")
        second = None
        peak_fill = 0.0
        try:
            await _line(first, "LEADING", 30)
            stop = asyncio.Event()

            async def sample(pid: int) -> None:
                nonlocal peak_fill
                while not stop.is_set():
                    peak_fill = max(peak_fill, _rss_mb(pid)[1])
                    await asyncio.sleep(0.5)

            sampler = asyncio.ensure_future(sample(first.pid))
            t0 = time.perf_counter()
            await _park_many(client, n, horizon, days)
            fill = time.perf_counter() - t0
            await asyncio.sleep(2.0)  # the live subscription catches up with the last parks
            stop.set()
            await sampler
            peak_fill = max(peak_fill, _rss_mb(first.pid)[1])
            stop_process(first)
            second = spawn_scheduler(server.url, ns, archive=Path(tmp) / "b.sqlite3", node_id="mem-b")
            await _line(second, "LEADING", 120)
            await asyncio.sleep(settle)  # initial load, a rescuer pass and a pruner pass over every record
            end_rss, peak_restart = _rss_mb(second.pid)
        finally:
            for proc in (first, second):
                if proc is not None:
                    stop_process(proc)
            await client.close()
    return DelayedMemoryResult(
        n=n,
        fill_seconds=round(fill, 1),
        peak_rss_mb_while_filling=round(peak_fill, 1),
        peak_rss_mb_restarted=round(peak_restart, 1),
        rss_mb_restarted_end=round(end_rss, 1),
        passed=max(peak_fill, peak_restart) < 250,
    )


if __name__ == "__main__":
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(msgspec.json.encode(asyncio.run(run_delayed_memory(count))).decode())
