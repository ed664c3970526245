"""chronos/transport: the probe at connect, the fallback to stock with one warning, the setting that
forces either, and the fast writer's pending-bytes rule, against a real server."""

from __future__ import annotations

import asyncio
import logging
import types

import nats
import nats.errors
import pytest

import chronos.transport as transport_mod
from chronos.client import Client
from chronos.config import load_settings
from chronos.errors import ConfigError
from chronos.transport import nats_py_version, probe, select_transport, server_version
from chronos.transport.fast import FastTransport, missing
from chronos.transport.stock import StockTransport

from ..conftest import make_settings


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_mod, "_warned", set())


async def test_the_pinned_nats_py_passes_the_probe_and_auto_picks_fast(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        lacks, untested = probe(nc)
        assert lacks == [] and untested is None, (nats_py_version(), lacks, untested)
        chosen = select_transport("auto", nc)
        assert isinstance(chosen, FastTransport)
        assert select_transport("auto", nc) is chosen  # one per connection: hooks installed once
    finally:
        await nc.close()


def test_the_probe_names_every_missing_internal():
    lacks = missing(types.SimpleNamespace())  # type: ignore[arg-type]
    for name in ("Client._process_msg", "Client._pending", "Client._flush_queue", "Client._ps"):
        assert any(name in item for item in lacks), (name, lacks)


async def test_an_untested_nats_py_falls_back_to_stock_with_one_warning(nats_server, monkeypatch, caplog):
    monkeypatch.setattr(transport_mod, "TESTED_NATS_PY", ("9.9",))
    caplog.set_level(logging.WARNING, logger="chronos.transport")
    conns = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        chosen = [select_transport("auto", nc) for nc in conns]
        assert all(isinstance(t, StockTransport) and t.name == "stock" for t in chosen)
        assert not any(hasattr(nc, "_chronos_fast_handlers") for nc in conns)  # nothing of nats-py touched
        warnings = [r for r in caplog.records if r.name == "chronos.transport"]
        assert len(warnings) == 1 and "stock transport" in warnings[0].getMessage()
        # Forced fast on an untested version: used anyway, with its own single warning.
        nc = await nats.connect(nats_server.url)
        conns.append(nc)
        assert isinstance(select_transport("fast", nc), FastTransport)
        assert len([r for r in caplog.records if r.name == "chronos.transport"]) == 2
    finally:
        for nc in conns:
            await nc.close()


async def test_fast_forced_where_an_internal_is_missing_is_one_clear_error(nats_server, monkeypatch):
    monkeypatch.setattr("chronos.transport.fast.missing", lambda nc: ["Client._flush_queue"])
    nc = await nats.connect(nats_server.url)
    try:
        with pytest.raises(ConfigError, match=r'nats.transport = "fast" needs .*Client._flush_queue.*"stock"'):
            select_transport("fast", nc)
        assert isinstance(select_transport("auto", nc), StockTransport)  # auto falls back instead
    finally:
        await nc.close()


def test_the_setting_is_checked_once_at_load():
    with pytest.raises(ConfigError, match="^nats.transport: must be one of auto, fast, stock, got 'quick'$"):
        load_settings(overrides={"nats": {"transport": "quick"}}, read_env=False)
    env = load_settings(environ={"CHRONOS_NATS__TRANSPORT": "stock"})
    assert env.nats.transport == "stock"


@pytest.mark.parametrize("choice", ["fast", "stock"])
async def test_the_setting_reaches_the_connection(nats_server, namespace, choice):
    s = make_settings(nats_server.url, namespace, nats={"transport": choice})
    client = await Client.connect(s)
    try:
        assert client.conn.transport.name == choice
        assert client.conn.publisher.transport is client.conn.transport
    finally:
        await client.close()


async def test_the_fast_writer_never_passes_the_pending_bytes_limit(nats_server):
    nc = await nats.connect(nats_server.url, pending_size=1000)
    try:
        t = FastTransport(nc)
        sub = await nc.subscribe("tw.x")
        await nc.flush()
        frame = b"PUB tw.x 590\r\n" + b"p" * 590 + b"\r\n"
        before = nc.stats["out_msgs"]
        assert t.write_nowait(frame, 590)
        assert not t.write_nowait(frame, 590)  # 1,200 bytes would be buffered: Client.publish must take it
        assert nc.stats["out_msgs"] - before == 1
        await nc.publish("tw.x", b"q" * 590)  # nats-py's own path, which flushes at its limit
        got = [await sub.next_msg(timeout=5), await sub.next_msg(timeout=5)]
        assert [len(m.data) for m in got] == [590, 590] and got[0].data[:1] == b"p"
        assert t.write_nowait(frame, 590)  # flushed: room again
    finally:
        await nc.close()


async def test_stock_tracks_iterator_subscriptions_for_the_drain(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        t = select_transport("stock", nc)

        async def cb(msg) -> None:  # type: ignore[no-untyped-def]
            pass

        with_cb = await nc.subscribe("it.a", cb=cb)
        iterator = await nc.subscribe("it.b")
        positional = await nc.subscribe("it.c", "", cb)
        assert t.iterator_subscriptions() == [iterator]
        assert with_cb is not None and positional is not None
    finally:
        await nc.close()


async def test_the_server_version_comes_from_the_public_api(nats_server):
    import json
    import urllib.request

    nc = await nats.connect(nats_server.url)
    try:
        with urllib.request.urlopen(f"http://{nats_server.host}:{nats_server.monitor_port}/varz", timeout=5) as r:
            assert server_version(nc) == json.load(r)["version"]
    finally:
        await nc.close()


async def test_a_message_the_stock_writer_cannot_send_fails_its_own_publish(nats_server):
    from chronos.publisher import Publisher

    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc, timeout=30, transport=select_transport("stock", nc))
    await pub.start()
    try:
        failed = asyncio.get_running_loop().create_future()
        # Accepted without a coroutine; nats-py's own publish then refuses the empty subject.
        assert pub.publish_cb("", b"x", None, lambda ack, exc: failed.set_result(exc))
        assert isinstance(await asyncio.wait_for(failed, 5), nats.errors.BadSubjectError)
        assert pub.in_flight == 0 and nc.is_connected  # settled at once, not by the 30 s sweeper
    finally:
        await pub.close()
        await nc.close()
