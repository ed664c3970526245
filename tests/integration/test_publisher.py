"""chronos/publisher.py against a real server, on the transport under test (conftest runs this module
on both): PubAcks settle futures and callbacks, a publish nobody acknowledges fails after the timeout
instead of hanging, an oversize message fails its own call and leaves the connection up, and the
connection's stats count what went through."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from chronos.errors import PayloadTooLargeError
from chronos.publisher import Publisher, PubAck
from chronos.transport import select_transport


async def _publisher(nc, transport: str, **kwargs) -> Publisher:  # type: ignore[no-untyped-def]
    pub = Publisher(nc, transport=select_transport(transport, nc), **kwargs)
    await pub.start()
    return pub


async def test_futures_and_callbacks_settle_from_pubacks(nats_server, chronos_transport):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="PUBTEST", subjects=["pubtest.>"])
    pub = await _publisher(nc, chronos_transport)
    try:
        got: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        assert pub.publish_cb("pubtest.a", b"1", None, lambda ack, exc: got.set_result(ack))
        fut = await pub.publish("pubtest.b", b"2", {"Nats-Msg-Id": "x"})
        first, second = await asyncio.wait_for(asyncio.gather(got, fut), 5)
        assert (first.stream, first.seq) == ("PUBTEST", 1) and second.seq == 2
        again = await pub.request("pubtest.b", b"2", {"Nats-Msg-Id": "x"})
        assert again.duplicate and pub.in_flight == 0
    finally:
        await pub.close()
        await js.delete_stream("PUBTEST")
        await nc.close()


async def test_an_unanswered_publish_times_out(nats_server, chronos_transport):
    nc = await nats.connect(nats_server.url)
    silent = await nc.subscribe("nobody.acks")  # a core subscriber: the message lands, no PubAck comes
    pub = await _publisher(nc, chronos_transport, timeout=0.4)
    try:
        failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        assert pub.publish_cb("nobody.acks", b"x", None, lambda ack, exc: failed.set_result(exc))
        fut = await pub.publish("nobody.acks", b"y")
        exc = await asyncio.wait_for(failed, 5)
        assert isinstance(exc, nats.errors.TimeoutError)
        with pytest.raises(nats.errors.TimeoutError):
            await asyncio.wait_for(fut, 5)
        assert pub.in_flight == 0
        await silent.unsubscribe()
    finally:
        await pub.close()
        await nc.close()


async def test_an_oversize_message_fails_its_call_and_the_connection_stays_up(nats_server, chronos_transport):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="PUBBIG", subjects=["pubbig.>"])
    pub = await _publisher(nc, chronos_transport)
    try:
        limit = nc.max_payload
        # The payload alone fits (nats-py's own check passes it); with headers the frame does not, and
        # the server would answer a too-large frame by closing the connection.
        payload = b"x" * (limit - 10)
        headers = {"Nats-Msg-Id": "big-one"}
        with pytest.raises(PayloadTooLargeError, match=f"max_payload is {limit}"):
            await pub.publish("pubbig.a", payload, headers)
        with pytest.raises(PayloadTooLargeError):
            await pub.publish("pubbig.a", b"y" * (limit + 1))
        assert not pub.publish_cb("pubbig.a", payload, b"NATS/1.0\r\nA: bbbbbbbbbbbb\r\n\r\n", lambda a, e: None)
        assert pub.in_flight == 0
        ack = await pub.request("pubbig.a", b"small")  # the same connection, still up
        assert ack.seq == 1 and nc.is_connected
        assert (await pub.request("pubbig.a", b"z" * (limit - 1000))).seq == 2  # a large one that fits
    finally:
        await pub.close()
        await js.delete_stream("PUBBIG")
        await nc.close()


async def test_the_connection_stats_count_what_the_publisher_sent_and_received(nats_server, chronos_transport):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="PUBSTATS", subjects=["pubstats.>"])
    pub = await _publisher(nc, chronos_transport)
    try:
        before = dict(nc.stats)
        futs = [await pub.publish("pubstats.a", b"12345") for _ in range(50)]
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert nc.stats["out_msgs"] - before["out_msgs"] == 50
        assert nc.stats["out_bytes"] - before["out_bytes"] == 250
        assert nc.stats["in_msgs"] - before["in_msgs"] == 50  # one PubAck each
    finally:
        await pub.close()
        await js.delete_stream("PUBSTATS")
        await nc.close()


async def test_messages_sent_without_a_coroutine_keep_their_order(nats_server, chronos_transport):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="PUBORDER", subjects=["puborder.>"])
    pub = await _publisher(nc, chronos_transport)
    try:
        seqs: dict[int, int] = {}
        done = asyncio.Event()

        def on_ack(i: int, ack: PubAck | None, exc: BaseException | None) -> None:
            seqs[i] = ack.seq if ack is not None else -1
            if len(seqs) == 300:
                done.set()

        for i in range(300):  # interleaved with awaited publishes, which must not overtake them
            if i % 50 == 0:
                seqs[i] = (await pub.request("puborder.a", b"%d" % i)).seq
            else:
                assert pub.publish_cb("puborder.a", b"%d" % i, None, lambda a, e, i=i: on_ack(i, a, e))
        await asyncio.wait_for(done.wait(), 10)
        assert [seqs[i] for i in range(300)] == list(range(1, 301))
    finally:
        await pub.close()
        await js.delete_stream("PUBORDER")
        await nc.close()
