"""The bulk pipeline (chronos/clientapi/bulk.py ``Bulk._run``) under a stuck action and a lost
connection: bounded, counted, never an ExceptionGroup. The actions are stand-ins; the connection's
state is the one thing read from it (``nc.is_connected``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import nats.errors
import pytest

from chronos.clientapi import bulk as bulk_mod
from chronos.clientapi.bulk import Bulk, BulkReport


def make_bulk(connected: bool = True) -> tuple[Bulk, SimpleNamespace]:
    nc = SimpleNamespace(is_connected=connected)
    conn = SimpleNamespace(names=None, nc=nc, settings=SimpleNamespace(nats=SimpleNamespace(url="nats://h:4222")))
    return Bulk(conn, None, None, None), nc  # type: ignore[arg-type]


async def pages(n: int):
    yield [str(i) for i in range(n)]


def report() -> BulkReport:
    return BulkReport(action="cancel", filter="x", matched=100)


async def test_one_action_without_a_reply_is_counted_failed_not_waited_on(monkeypatch) -> None:
    monkeypatch.setattr(bulk_mod, "ACTION_TIMEOUT", 0.3)
    b, _ = make_bulk()

    async def act(job_id: str) -> None:
        if job_id == "7":
            await asyncio.Event().wait()  # the reply that never comes

    r = await asyncio.wait_for(b._run(report(), pages(100), act, 8, None, None), 10)
    assert (r.done, r.failed, r.skipped, r.unknown, r.lost) == (99, 1, 0, 0, "")
    assert r.errors[0].job_id == "7" and "no reply" in r.errors[0].error


async def test_a_lost_connection_ends_the_run_with_what_was_in_flight_counted(monkeypatch) -> None:
    monkeypatch.setattr(bulk_mod, "LOST_AFTER", 0.5)
    b, nc = make_bulk()
    gone = asyncio.Event()

    async def act(job_id: str) -> None:
        if int(job_id) >= 20:
            nc.is_connected = False  # the server went away: requests wait for a reconnect
            gone.set()
            await asyncio.Event().wait()

    r = await asyncio.wait_for(b._run(report(), pages(100), act, 4, None, None), 10)
    assert r.done == 20 and r.failed == 0
    assert 1 <= r.unknown <= 4  # the actions in flight, abandoned
    assert r.handled + r.unknown < 100  # nothing more was started
    assert r.lost.startswith("lost the connection to NATS at nats://h:4222") and not r.interrupted


async def test_an_action_failing_for_want_of_a_connection_ends_the_run_at_once() -> None:
    b, nc = make_bulk()

    async def act(job_id: str) -> None:
        if int(job_id) >= 10:
            nc.is_connected = False
            raise nats.errors.ConnectionReconnectingError

    r = await asyncio.wait_for(b._run(report(), pages(100), act, 1, None, None), 5)
    assert (r.done, r.unknown, r.failed) == (10, 1, 0) and "ConnectionReconnectingError" in r.lost


async def test_an_unexpected_error_is_one_failure_not_an_exception_group() -> None:
    b, _ = make_bulk()

    async def act(job_id: str) -> None:
        if job_id == "3":
            raise RuntimeError("boom")
        if job_id == "4":
            raise nats.errors.TimeoutError  # connected: a slow reply, not a lost server

    r = await asyncio.wait_for(b._run(report(), pages(10), act, 4, None, None), 5)
    assert (r.done, r.failed, r.lost) == (8, 2, "")
    assert {e.job_id: e.error for e in r.errors}["3"] == "RuntimeError: boom"


async def test_an_error_reading_the_ids_is_raised_once_as_itself() -> None:
    b, _ = make_bulk()

    async def broken():
        yield ["1"]
        raise ValueError("index unreadable")

    async def act(job_id: str) -> None:
        return None

    with pytest.raises(ValueError, match="index unreadable") as info:
        await asyncio.wait_for(b._run(report(), broken(), act, 2, None, None), 5)
    assert info.value.bulk_report.done == 1  # how far it got travels with the error


async def test_the_index_failing_while_disconnected_is_the_connection_lost() -> None:
    b, nc = make_bulk()

    async def broken():
        yield ["1", "2"]
        nc.is_connected = False
        raise RuntimeError("the job index stopped answering part way")

    async def act(job_id: str) -> None:
        return None

    r = await asyncio.wait_for(b._run(report(), broken(), act, 2, None, None), 5)
    assert r.lost.startswith("lost the connection to NATS") and r.failed == 0 and r.done <= 2
