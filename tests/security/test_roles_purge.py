"""Purging acknowledged work messages (scheduler/purger.py) is the scheduler's alone: the jobs stream
keeps acked messages until the leader purges them, and a purge by any other role could drop queued
jobs. A raw nats-py client per role, as an attacker holding its password would have."""

from __future__ import annotations

import json

import pytest

from chronos.errors import PermissionDeniedError

from .conftest import NAMES, raw, snapshot
from .test_nats_attacks import refused

N = NAMES


@pytest.mark.parametrize("role", ["worker", "console", "viewer"])
async def test_only_the_scheduler_purges_the_jobs_stream(server, seeded, admin, role):
    before = await snapshot(admin)
    r = await raw(server, role)
    try:
        for body in ({}, {"filter": N.job_subject("default", "default"), "seq": 1 << 40}):
            exc = await refused(r.nc.request(f"$JS.API.STREAM.PURGE.{N.jobs_stream}", json.dumps(body).encode(),
                                             timeout=3.0))
            assert isinstance(exc, PermissionDeniedError), (role, exc)
    finally:
        await r.nc.close()
    assert await snapshot(admin) == before  # nothing removed


async def test_the_scheduler_may_purge_acknowledged_work(server, seeded, admin):
    r = await raw(server, "scheduler")
    try:
        # A purge below sequence 1 removes nothing, but it is answered, not refused.
        reply = await r.nc.request(f"$JS.API.STREAM.PURGE.{N.jobs_stream}",
                                   json.dumps({"filter": N.job_subject("default", "default"), "seq": 1}).encode(),
                                   timeout=3.0)
        body = json.loads(reply.data)
        assert body.get("success") is True and body.get("purged") == 0, body
    finally:
        await r.nc.close()
