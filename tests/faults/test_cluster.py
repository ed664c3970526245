"""A three-node cluster on loopback, R3 streams: one node SIGKILLed while 5,000 jobs flow; all complete."""

from __future__ import annotations

import asyncio
import time

from chronos.client import Client
from chronos.runtime import Outcome, WorkerMain, run_service
from chronos.states import JobState
from chronos.worker.registry import Registry

from .conftest import Cluster, fault_settings, wait_until

N = 5000


async def test_node_sigkill_in_r3_cluster_loses_nothing(tmp_path):
    cluster = Cluster(tmp_path).start()
    try:
        await wait_until(lambda: all(cluster.healthy(n) for n in cluster.nodes), 60, "a healthy cluster")
        settings = fault_settings(cluster.url, "cluster", nats={"url": cluster.url, "replicas": 3})
        client = await Client.connect(settings)
        info = await client.conn.js.stream_info(client.names.jobs_stream)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2

        completed = 0
        halfway = asyncio.Event()
        reg = Registry()

        async def noop() -> None:
            nonlocal completed
            completed += 1
            if completed >= N // 3:
                halfway.set()

        reg.register(noop, name="f.noop")
        worker = WorkerMain(settings, reg, concurrency=64)
        stop = asyncio.Event()
        services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
        try:
            await asyncio.wait_for(worker.ready.wait(), 30)
            ids = await client.submit_specs([client.build_spec("f.noop") for _ in range(N)])
            await asyncio.wait_for(halfway.wait(), 60)
            # Kill the node the worker talks to: it must reconnect and the streams elect new leaders.
            connected = worker.service.conn.nc.connected_url
            victim = next(n for n in cluster.nodes if connected and n.port == connected.port)
            t_kill = time.perf_counter()
            victim.kill()

            store = await client.ops.store()

            async def all_completed() -> bool:
                try:
                    entries = await store.entries()
                except Exception:  # reconnecting, or a stream leader election under way
                    return False
                from chronos import codec
                from chronos.models import JobRecord

                states = [codec.decode(e.value, JobRecord).state for e in entries]
                return len(states) == N and all(s == JobState.COMPLETED for s in states)

            await wait_until(all_completed, 90, f"all {N} jobs to complete with one node down", every=1.0)
            recovery = time.perf_counter() - t_kill
            print(f"cluster: {N} jobs done {recovery:.1f}s after the node was killed")
            assert len(ids) == N
            assert not services.done()
        finally:
            stop.set()
            outcome = await asyncio.wait_for(services, 60)
            await client.close()
        assert outcome in (Outcome.STOPPED, Outcome.FORCED)
    finally:
        cluster.cleanup()
