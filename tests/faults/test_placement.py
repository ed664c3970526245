"""Creating R3 topology while the cluster cannot place it yet: chronos waits, or says clearly why not.

A cluster whose third node is not up yet answers JetStream API requests with nothing, then 503,
then (as seen in CI right after every node's health check said ok) "no suitable peers for
placement, peer offline". A service started then must wait for the cluster, not die with a
traceback, and give up with one clear line if the cluster never comes whole.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from chronos import connection
from chronos.client import Client
from chronos.connection import TopologyUnavailableError

from .conftest import Cluster, fault_settings, wait_until


@pytest.mark.timeout(240)
async def test_topology_waits_for_the_cluster_then_fails_clearly(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="chronos.connection")
    cluster = Cluster(tmp_path)
    try:
        for node in cluster.nodes[:2]:
            Cluster.launch(node)
        for node in cluster.nodes[:2]:
            await asyncio.to_thread(node._wait_ready, 30)  # listening, JetStream on (not yet served)
        two = ",".join(n.url for n in cluster.nodes[:2])
        settings = fault_settings(two, "placed", nats={"url": two, "replicas": 3})

        # Out of patience: one clear error naming what could not be placed.
        monkeypatch.setattr(connection, "_PLACEMENT_PATIENCE", 1.0)
        with pytest.raises(TopologyUnavailableError) as err:
            await Client.connect(settings)
        assert "could not place stream" in str(err.value) and "are all of its nodes up" in str(err.value)

        # With patience, the third node coming up lets the same connect finish.
        monkeypatch.setattr(connection, "_PLACEMENT_PATIENCE", 120.0)
        caplog.clear()
        connecting = asyncio.ensure_future(Client.connect(settings))
        await wait_until(lambda: any("cannot place" in r.getMessage() for r in caplog.records), 60,
                         "connect to wait for placement")
        assert not connecting.done()
        Cluster.launch(cluster.nodes[2])
        client = await asyncio.wait_for(connecting, 150)
        try:
            info = await client.conn.js.stream_info(client.names.jobs_stream)
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
        finally:
            await client.close()
    finally:
        cluster.cleanup()
