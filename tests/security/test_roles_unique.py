"""Unique keys and least privilege (issue 16): the console (a submitter) takes unique-while-active and
debounce keys in the unique bucket; a worker or a viewer cannot take, move or free one, so a stolen
worker credential can neither block a key nor let a duplicate in. Progress is a job-record write,
which workers already make."""

from __future__ import annotations

from chronos.client import Client
from chronos.clientapi.spec import unique_digest
from chronos.errors import PermissionDeniedError

from .conftest import NAMES, raw, settings_for
from .test_nats_attacks import refused

N = NAMES


async def test_console_takes_a_key_worker_and_viewer_cannot_touch_it(server, seeded):
    console = await Client.connect(settings_for(server, "console"), ensure=False)
    try:
        first = await console.submit_job("t.ok", [1], unique="while_active", unique_key="sec", delay=3600)
        assert first.outcome == "created"
        spec = console.build_spec("t.ok", [1], unique="while_active", unique_key="sec")
        key = N.active_key(unique_digest(spec))
        held = await (await console.submitter._unique_store()).get(key)
        assert held is not None and held.value.decode().split()[0] == first.id
        for role in ("worker", "viewer"):
            r = await raw(server, role)
            try:
                # Take it over (compare-and-set on its revision), free it, or plant a new key.
                for subject, hdr in ((N.kv_subject(N.unique_bucket, key),
                                      {"Nats-Expected-Last-Subject-Sequence": str(held.revision)}),
                                     (N.kv_subject(N.unique_bucket, key), {"KV-Operation": "DEL"}),
                                     (N.kv_subject(N.unique_bucket, "active.planted"), None)):
                    exc = await refused(r.js.publish(subject, b"someone-else 0", headers=hdr))
                    assert isinstance(exc, PermissionDeniedError), (role, subject, exc)
            finally:
                await r.nc.close()
        again = await console.submit_job("t.ok", [2], unique="while_active", unique_key="sec")
        assert again == (first.id, "active")  # the key still names the first job
        await console.cancel(first.id)
    finally:
        await console.close()
