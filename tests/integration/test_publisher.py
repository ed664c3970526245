"""chronos/publisher.py against a real server: PubAcks settle futures and callbacks, and a
publish nobody acknowledges fails after the timeout instead of hanging."""

from __future__ import annotations

import asyncio

import nats
import nats.errors

from chronos.publisher import Publisher, PubAck


async def test_futures_and_callbacks_settle_from_pubacks(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="PUBTEST", subjects=["pubtest.>"])
    pub = Publisher(nc)
    await pub.start()
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
        await nc.close()


async def test_an_unanswered_publish_times_out(nats_server):
    nc = await nats.connect(nats_server.url)
    silent = await nc.subscribe("nobody.acks")  # a core subscriber: the message lands, no PubAck comes
    pub = Publisher(nc, timeout=0.4)
    await pub.start()
    try:
        failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        assert pub.publish_cb("nobody.acks", b"x", None, lambda ack, exc: failed.set_result(exc))
        fut = await pub.publish("nobody.acks", b"y")
        exc = await asyncio.wait_for(failed, 5)
        assert isinstance(exc, nats.errors.TimeoutError)
        try:
            await asyncio.wait_for(fut, 5)
        except nats.errors.TimeoutError:
            pass
        else:
            raise AssertionError("the unanswered publish did not fail")
        assert pub.in_flight == 0
        await silent.unsubscribe()
    finally:
        await pub.close()
        await nc.close()
