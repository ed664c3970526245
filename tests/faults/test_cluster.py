"""A three-node cluster on loopback, R3 streams: one node SIGKILLed while 5,000 jobs flow; all complete.

The node killed is the one the worker talks to, made the leader of the jobs bucket first: the
worker reconnects, so its backlog takes the checked path (worker/replay.py), whose running
writes get 503s until the bucket elects a new leader. Those deliveries are held and tried again
(executor.START_RETRY_FOR); nakked, they came back each second, each counted as a run, and
jobs never run went to the DLQ as "ran 7 times" (2,729 of 5,000 in one run before the fix)."""

from __future__ import annotations

import asyncio
import collections
import json
import time

from chronos.client import Client
from chronos.publisher import is_transient
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
            await asyncio.sleep(0.05)  # the flow lasts seconds: the kill comes mid-flow
            completed += 1
            if completed >= N // 3:
                halfway.set()

        reg.register(noop, name="f.noop")
        worker = WorkerMain(settings, reg, concurrency=64)
        stop = asyncio.Event()
        services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
        try:
            await asyncio.wait_for(worker.ready.wait(), 30)
            # The node the worker talks to leads the jobs bucket; it is the one killed: the worker
            # must reconnect, and the streams elect new leaders.
            connected = worker.service.conn.nc.connected_url
            victim = next(n for n in cluster.nodes if connected and n.port == connected.port)
            await lead_jobs_bucket(client, victim.extra_args[1])
            ids = await client.submit_specs([client.build_spec("f.noop") for _ in range(N)])
            await asyncio.wait_for(halfway.wait(), 60)
            assert worker.service.conn.nc.connected_url == connected
            t_kill = time.perf_counter()
            victim.kill()
            assert completed < N, "the kill should come mid-flow"

            store = await client.ops.store()

            async def all_completed() -> bool:
                try:
                    entries = await store.entries()
                except Exception:  # reconnecting, or a stream leader election under way
                    return False
                from chronos import codec
                from chronos.models import JobRecord

                states = collections.Counter(codec.decode(e.value, JobRecord).state for e in entries)
                seen.append(dict(states))
                return states[JobState.COMPLETED] == N

            seen: list[dict[JobState, int]] = []
            await wait_until(all_completed, 90,
                             lambda: f"all {N} jobs to complete with one node down (last seen: {seen[-1:]})",
                             every=1.0)
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


async def lead_jobs_bucket(client: Client, node: str) -> None:
    """Move the jobs bucket's stream leader to ``node`` (a stepdown with a preferred placement)."""
    stream = f"KV_{client.names.jobs_bucket}"
    for _ in range(40):
        try:
            info = await client.conn.js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader == node:
                return
            await client.conn.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                                         json.dumps({"placement": {"preferred": node}}).encode(), timeout=5)
        except Exception as exc:  # the election this set off is under way (503, a timeout): ask again
            if not is_transient(exc):
                raise
        await asyncio.sleep(0.25)
    raise AssertionError(f"{stream}'s leader did not move to {node}")
