"""chronos/transport/fast.py's parser must read the wire exactly as nats-py's does, however it is split."""

from __future__ import annotations

from typing import Any

import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from chronos.transport.fast import _ATTR, _FastParser


def hmsg(subject: bytes, sid: int, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    sizes = b"%d %d" % (len(headers), len(headers) + len(payload))
    line = b" ".join(x for x in (b"HMSG", subject, b"%d" % sid, reply, sizes) if x)
    return line + b"\r\n" + headers + payload + b"\r\n"


WIRE = (
    b"INFO {\"server_id\":\"x\"}\r\n"
    b"MSG jobs.default.q 7 $JS.ACK.s.c.1.2.3.4.5 5\r\nhello\r\n"
    b"PING\r\n"
    + hmsg(b"_INBOX.a.1", 9, b"", b"NATS/1.0 404\r\n\r\n", b"abcde")
    + b"+OK\r\n"
    b"MSG pubacks.42 9 0\r\n\r\n"
    b"PONG\r\n"
    + hmsg(b"ev.x", 7, b"reply.to", b"NATS/1.0\r\nA: b\r\n\r\n", b"xy")
    + b"MSG other 3 4\r\n\r\n\r\n\r\n"
)

EXPECTED = [
    ("info", {"server_id": "x"}),
    ("msg", 7, b"jobs.default.q", b"$JS.ACK.s.c.1.2.3.4.5", b"hello", None),
    ("ping",),
    ("msg", 9, b"_INBOX.a.1", b"", b"abcde", b"NATS/1.0 404\r\n\r\n"),
    ("msg", 9, b"pubacks.42", b"", b"", None),
    ("pong",),
    ("msg", 7, b"ev.x", b"reply.to", b"xy", b"NATS/1.0\r\nA: b\r\n\r\n"),
    ("msg", 3, b"other", b"", b"\r\n\r\n", None),
]


class FakeConn:
    def __init__(self, handled_sids: set[int]) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        handlers = {sid: self._handler(sid) for sid in handled_sids}
        setattr(self, _ATTR, handlers)

    def _handler(self, sid: int):  # type: ignore[no-untyped-def]
        def handle(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            self.seen.append(("msg", sid, subject, reply, data, headers))
            return True
        return handle

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.seen.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.seen.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.seen.append(("err", err))


async def feed(parser: Parser, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await parser.parse(chunk)


@pytest.mark.parametrize("handled", [set(), {7}, {7, 9, 3}])
async def test_every_split_point_reads_the_same_messages(handled: set[int]) -> None:
    for cut in range(1, len(WIRE)):
        for second_cut in (cut, min(len(WIRE), cut + 7)):
            nc = FakeConn(handled)
            parser = _FastParser(nc)
            await feed(parser, [WIRE[:cut], WIRE[cut:second_cut], WIRE[second_cut:]])
            assert nc.seen == EXPECTED, f"split at {cut}/{second_cut}"
            assert not parser.buf


async def test_one_byte_at_a_time_matches_the_stock_parser() -> None:
    stock_nc, fast_nc = FakeConn(set()), FakeConn({9})
    await feed(Parser(stock_nc), [WIRE])
    await feed(_FastParser(fast_nc), [WIRE[i:i + 1] for i in range(len(WIRE))])
    assert fast_nc.seen == stock_nc.seen == EXPECTED


async def test_a_switch_in_the_middle_of_a_message_keeps_its_state() -> None:
    nc = FakeConn({7})
    parser = Parser(nc)
    await parser.parse(WIRE[:60])  # stops inside the first MSG's payload or line
    parser.__class__ = _FastParser
    await parser.parse(WIRE[60:])
    assert nc.seen == EXPECTED


async def test_a_malformed_msg_line_is_a_protocol_error() -> None:
    parser = _FastParser(FakeConn(set()))
    with pytest.raises(ProtocolError):
        await parser.parse(b"MSG onlysubject\r\n")


async def test_messages_a_handler_takes_count_in_the_connection_stats() -> None:
    nc = FakeConn({7})
    wire = (b"MSG a 7 5\r\nhello\r\n" + hmsg(b"b", 7, b"r", b"NATS/1.0\r\nA: b\r\n\r\n", b"xy")
            + b"MSG c 8 3\r\nabc\r\n")  # sid 8 has no handler: nats-py's _process_msg counts it
    await _FastParser(nc).parse(wire)
    assert nc.stats == {"in_msgs": 2, "in_bytes": 7}
    assert [m[1] for m in nc.seen] == [7, 7, 8]
