"""chronos/transport/fast.py: handlers run inside nats-py's read loop, so one must never end it;
what a handler declines, and everything on the stock transport, reaches the ordinary callback."""

from __future__ import annotations

import asyncio

import nats

from chronos.transport import select_transport
from chronos.transport.fast import FastTransport
from chronos.transport.stock import StockTransport


async def test_a_failing_handler_does_not_deafen_the_connection(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        transport = FastTransport(nc)
        bad = await nc.subscribe("fp.bad")

        def explode(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            raise RuntimeError("handler bug")

        assert transport.deliver_raw(bad, explode)
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
        transport = FastTransport(nc)
        sub = await nc.subscribe("fp.slow")
        taken: list[bytes] = []

        def only_small(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            if len(data) < 4:
                taken.append(data)
                return True
            return False

        assert transport.deliver_raw(sub, only_small)
        await nc.publish("fp.slow", b"ab")
        await nc.publish("fp.slow", b"abcdef")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"abcdef" and taken == [b"ab"]
    finally:
        await nc.close()


async def test_plain_delivery_builds_msgs_and_leaves_status_replies_to_the_callback(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        transport = FastTransport(nc)
        sub = await nc.subscribe("fp.plain")
        plain: list[tuple[str, str, bytes, dict[str, str] | None]] = []
        assert transport.deliver_plain(sub, lambda m: plain.append((m.subject, m.reply, m.data, m.headers)))
        before = nc.stats["in_msgs"]
        await nc.publish("fp.plain", b"job", reply="fp.reply")
        # What a job message of an atomic batch carries: headers, no status line. Taken, headers read.
        await nc.publish("fp.plain", b"batched", headers={"Nats-Batch-Id": "b1", "Nats-Msg-Id": "j:1:1"})
        # A status reply (the server's ``NATS/1.0 404 No Messages``) goes to the callback.
        assert transport.send_nowait("fp.plain", b"", b"", b"NATS/1.0 404 No Messages\r\n\r\n")
        headed = await sub.next_msg(timeout=5)
        assert headed.headers and headed.headers.get("Status") == "404"
        assert plain == [("fp.plain", "fp.reply", b"job", None),
                         ("fp.plain", "", b"batched", {"Nats-Batch-Id": "b1", "Nats-Msg-Id": "j:1:1"})]
        assert nc.stats["in_msgs"] - before == 3  # the ones taken in the read loop count too
        # After undeliver, the callback (here the iterator) gets every message again.
        transport.undeliver(sub)
        await nc.publish("fp.plain", b"again")
        assert (await sub.next_msg(timeout=5)).data == b"again" and len(plain) == 2
    finally:
        await nc.close()


async def test_a_header_block_that_is_not_utf8_goes_down_nats_pys_path(nats_server):
    """Not dropped: nats-py's own path reads it (and reports the bad header) and delivers it.
    Raising in the read loop dropped such a job on every delivery (red-team finding)."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(nats_server.url, error_cb=on_error)
    try:
        transport = FastTransport(nc)
        sub = await nc.subscribe("fp.badhdr")
        plain: list[bytes] = []
        assert transport.deliver_plain(sub, lambda m: plain.append(m.data))
        assert transport.send_nowait("fp.badhdr", b"", b"job", b"NATS/1.0\r\nX-Bad: \xff\xfe\r\n\r\n")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"job" and plain == []
    finally:
        await nc.close()


async def test_the_stock_transport_never_takes_a_message(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        transport = select_transport("stock", nc)
        assert isinstance(transport, StockTransport) and transport.name == "stock"
        sub = await nc.subscribe("fp.stock")
        assert not transport.deliver_raw(sub, lambda *a: True)
        assert not transport.deliver_plain(sub, lambda m: None)
        assert not hasattr(nc, "_chronos_fast_handlers")  # no nats-py internals touched
        await nc.publish("fp.stock", b"to the callback")
        assert (await sub.next_msg(timeout=5)).data == b"to the callback"
    finally:
        await nc.close()
