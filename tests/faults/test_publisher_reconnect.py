"""A PubAck lost with its connection fails soon after the reconnect, not at the publisher's timeout.

A reply goes to the connection that asked: once that connection has dropped, nothing sent on it
will be answered. A worker whose completed writes were in flight when nats-server was killed
waited out the 10 s timeout before writing them again, while the restarted server handed their
messages to another worker, which ran them a second time (bench crash --kill server: 8-16 such
runs in 20,000 jobs, and 19 s to drain)."""

from __future__ import annotations

import asyncio
import os
import signal

import nats.errors
import pytest

from chronos.client import Client
from chronos.embedded import EmbeddedServer

from .conftest import fault_settings, reconnected, restart_on_same_store


async def test_a_puback_lost_with_the_connection_fails_as_such_after_the_reconnect(tmp_path):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted: EmbeddedServer | None = None
    client = await Client.connect(fault_settings(server.url, "pubacklost"))
    try:
        pub = client.conn.publisher
        subject = client.names.kv_subject(client.names.tasks_bucket, "probe")
        assert (await pub.request(subject, b"before")).seq > 0
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # reads nothing more: the next publish is never answered
        fut = await pub.publish(subject, b"lost")
        server.kill()
        restarted = restart_on_same_store(server)
        await reconnected(client.conn.nc)
        with pytest.raises(nats.errors.ConnectionReconnectingError):
            await asyncio.wait_for(fut, 30)  # the sweeper's own timeout would raise TimeoutError
        assert pub.lost_on_reconnect == 1
        assert (await pub.request(subject, b"after")).seq > 0  # what is sent after the reconnect is answered
    finally:
        await client.close()
        for s in (restarted, server):
            if s is not None:
                s.cleanup()
