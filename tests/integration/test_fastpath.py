"""chronos/fastpath.py: handlers run inside nats-py's read loop, so one must never end it."""

from __future__ import annotations

import asyncio

import nats

from chronos import fastpath


async def test_a_failing_handler_does_not_deafen_the_connection(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        bad = await nc.subscribe("fp.bad")

        def explode(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            raise RuntimeError("handler bug")

        assert fastpath.register(nc, bad._id, explode)
        got = asyncio.get_running_loop().create_future()

        async def on_good(msg) -> None:  # type: ignore[no-untyped-def]
            if not got.done():
                got.set_result(msg.data)

        await nc.subscribe("fp.good", cb=on_good)
        await nc.publish("fp.bad", b"boom")
        await nc.publish("fp.good", b"still reading")
        assert await asyncio.wait_for(got, 5) == b"still reading"
    finally:
        await nc.close()


async def test_a_declining_handler_leaves_the_message_to_nats_py(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe("fp.slow")
        taken: list[bytes] = []

        def only_small(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            if len(data) < 4:
                taken.append(data)
                return True
            return False

        fastpath.register(nc, sub._id, only_small)
        await nc.publish("fp.slow", b"ab")
        await nc.publish("fp.slow", b"abcdef")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"abcdef" and taken == [b"ab"]
    finally:
        await nc.close()
