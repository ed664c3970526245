"""Issue 12's attacks on NATS, each run as every role that could try it, against a server started
from the shipped configs: each must be refused, and nothing stored may change."""

from __future__ import annotations

import asyncio
import json
import time

import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from chronos import audit
from chronos.client import Client
from chronos.connection import ensure_topology, connect
from chronos.errors import ChronosError, PermissionDeniedError

from .conftest import NAMES, Raw, consumers, raw, settings_for, snapshot

N = NAMES
ROLES = ("worker", "console", "scheduler", "viewer")
BUCKETS = (N.jobs_bucket, N.workers_bucket, N.tasks_bucket, N.control_bucket, N.schedules_bucket, N.lease_bucket,
           N.queues_bucket, N.limits_bucket, N.unique_bucket, N.workflows_bucket)


async def refused(coro, timeout: float = 3.0) -> BaseException:
    """The exception a refused operation raised; fails the test if it succeeded."""
    try:
        result = await asyncio.wait_for(coro, timeout)
    except (PermissionDeniedError, nats.js.errors.APIError) as exc:
        return exc
    raise AssertionError(f"not refused: {result!r}")


@pytest.fixture
async def before(admin: Raw):
    return await snapshot(admin)


async def as_role(server, role: str) -> Raw:
    return await raw(server, role)


# --- 1. one message wipes a bucket: Nats-Rollup ------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
async def test_rollup_cannot_wipe_any_bucket_or_stream(server, admin, before, role):
    r = await as_role(server, role)
    try:
        for bucket in BUCKETS:
            for scope in ("all", "sub"):
                exc = await refused(r.js.publish(N.kv_subject(bucket, "x"), b"", headers={"Nats-Rollup": scope}))
                # Where the role may write the bucket, the stream itself refuses the header.
                assert isinstance(exc, PermissionDeniedError) or "rollup" in str(exc).lower(), (bucket, exc)
        for subject in (N.event_subject("completed", "default"), N.dlq_subject("default"),
                        N.job_subject("default", "default"), N.audit_subject(f"chronos-{role}")):
            await refused(r.js.publish(subject, b"", headers={"Nats-Rollup": "all"}))
        after = await snapshot(admin)
        assert after == before
        assert all(after[N.kv_stream(b)][0] for b in BUCKETS[:6])  # every seeded bucket still holds its keys
    finally:
        await r.nc.close()


# --- 1. purge and message delete ------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
async def test_no_role_but_admin_purges_and_few_delete_messages(server, admin, before, role, seeded):
    r = await as_role(server, role)
    try:
        for stream in (N.kv_stream(N.jobs_bucket), N.jobs_stream, N.dlq_stream, N.events_stream, N.audit_stream,
                       N.kv_stream(N.schedules_bucket)):
            # The scheduler's purger may purge the jobs stream (acknowledged work messages; its
            # effect is tested in test_roles_purge.py); nothing else, and no role any other stream.
            purger = role == "scheduler" and stream == N.jobs_stream
            attempts = [] if purger else [r.js.purge_stream(stream),
                                          r.js.purge_stream(stream, subject=N.kv_subject(N.jobs_bucket, seeded["jobs"][1]))]
            for attempt in (*attempts, r.js.delete_stream(stream),
                            r.js.update_stream(api.StreamConfig(name=stream, subjects=["stolen.>"]))):
                assert isinstance(await refused(attempt), PermissionDeniedError), stream
        # Stream message deletes: only the scheduler on the jobs bucket and the delayed stream,
        # and the console on the DLQ; never a worker.
        jobs_kv = N.kv_stream(N.jobs_bucket)
        for stream in (N.jobs_stream, jobs_kv, N.dlq_stream, N.events_stream, N.audit_stream,
                       N.kv_stream(N.control_bucket)):
            if (role, stream) in {("scheduler", jobs_kv), ("console", N.dlq_stream)}:
                continue
            exc = await refused(r.js.delete_msg(stream, 1))
            assert isinstance(exc, PermissionDeniedError), (stream, exc)
        assert await snapshot(admin) == before
    finally:
        await r.nc.close()


async def test_audit_stream_refuses_deletes_even_to_the_admin(admin, before):
    await refused(admin.js.delete_msg(N.audit_stream, 1))
    await refused(admin.js.purge_stream(N.audit_stream))
    assert await snapshot(admin) == before


# --- 3. reading other roles' replies ---------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
async def test_no_role_reads_another_roles_replies(server, admin, role):
    spy = await as_role(server, role)
    console = await Client.connect(settings_for(server, "console"))
    try:
        got: list[str] = []

        async def cb(msg):
            got.append(msg.subject)

        targets = ["_INBOX.>", ">", "_INBOX_chronos-console.>", "_INBOX_chronos-admin.>"]
        if role == "console":
            targets.remove("_INBOX_chronos-console.>")
        for subject in targets:
            await spy.nc.subscribe(subject, cb=cb)
        await spy.nc.flush()
        deadline = time.monotonic() + 3
        while set(spy.denials.seen) < set(targets) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert set(spy.denials.seen) >= set(targets), spy.denials.seen
        # The console's requests and their replies (JetStream API, DLQ reads) meanwhile reach nobody else.
        assert await console.dlq_list()
        await console.list(limit=5)
        await spy.nc.flush()
        assert got == []
    finally:
        await console.close()
        await spy.nc.close()


async def test_a_role_reads_its_own_replies(server):
    r = await raw(server, "worker")
    try:
        info = await r.js.stream_info(N.jobs_stream)
        assert info.config.name == N.jobs_stream and r.denials.seen == []
    finally:
        await r.nc.close()


# --- 4. consumers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ("worker", "console", "viewer"))
async def test_no_durable_or_long_lived_consumers_on_buckets(server, admin, before, role):
    r = await as_role(server, role)
    held = await consumers(admin)
    try:
        stream = N.kv_stream(N.control_bucket)  # a bucket every one of these roles reads
        await refused(r.js.add_consumer(stream, api.ConsumerConfig(durable_name="squat")))
        await refused(r.js.add_consumer(stream, api.ConsumerConfig(name="squat")))
        # The ephemeral subject with a durable name in the body: the server refuses it.
        body = json.dumps({"stream_name": stream, "config": {"durable_name": "squat", "ack_policy": "none"}})
        reply = await r.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}", body.encode(), timeout=3)
        assert "error" in json.loads(reply.data)
        # An ephemeral that would live for a year: refused by the bucket's consumer limits.
        await refused(r.js.add_consumer(stream, api.ConsumerConfig(inactive_threshold=365 * 86400.0)))
        await refused(r.js.add_consumer(N.jobs_stream, api.ConsumerConfig(durable_name="squat")))
        assert await snapshot(admin) == before and await consumers(admin) == held
        # What a watch needs still works, and expires with its connection.
        ci = await r.js.add_consumer(stream, api.ConsumerConfig(ack_policy=api.AckPolicy.NONE))
        assert ci.config.inactive_threshold and ci.config.inactive_threshold <= 300
    finally:
        await r.nc.close()


async def test_the_schedulers_named_bucket_consumers_expire_too(server):
    r = await raw(server, "scheduler")
    try:
        stream = N.kv_stream(N.jobs_bucket)
        ci = await r.js.add_consumer(stream, api.ConsumerConfig(name="scan", durable_name="scan",
                                                                filter_subject=N.kv_subject(N.jobs_bucket, ">")))
        assert ci.config.inactive_threshold == 300
        await refused(r.js.add_consumer(stream, api.ConsumerConfig(name="scan2", inactive_threshold=86400.0,
                                                                   filter_subject=N.kv_subject(N.jobs_bucket, ">"))))
    finally:
        await r.nc.close()


# --- 5. viewer and audit ----------------------------------------------------------------------------------------
async def test_the_viewer_reads_but_writes_nothing(server, admin, before, seeded):
    viewer = await Client.connect(settings_for(server, "viewer"))
    try:
        assert (await viewer.get(seeded["jobs"][1])).id == seeded["jobs"][1]
        assert await viewer.dlq_list() and await viewer.list_schedules()
        assert await audit.read(viewer.conn)
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError,
                           match=r"permission denied: chronos\.audit\.chronos-viewer \(role viewer\)"):
            await viewer.retry(seeded["jobs"][0])
        with pytest.raises(ChronosError, match="permission denied"):
            await viewer.remove_schedule("nightly")
        assert time.monotonic() - started < 3  # one clear line at once, not a 10 s timeout
        r = await raw(server, "viewer")
        try:
            for subject in (N.kv_subject(N.jobs_bucket, seeded["jobs"][1]), N.job_subject("default", "default"),
                            N.kv_subject(N.control_bucket, "cancel.x"), N.kv_subject(N.schedules_bucket, "nightly"),
                            N.event_subject("completed", "default"), N.dlq_subject("default")):
                assert isinstance(await refused(r.js.publish(subject, b"x")), PermissionDeniedError)
        finally:
            await r.nc.close()
        assert await snapshot(admin) == before
    finally:
        await viewer.close()


async def test_operator_actions_are_audited_with_the_servers_word_for_the_role(server, admin, seeded):
    console = await Client.connect(settings_for(server, "console"))
    try:
        await console.pause_schedule("nightly")
        entries = await audit.read(console.conn, limit=5)
        last = entries[-1]
        assert (last.action, last.target, last.role) == ("schedule_pause", "nightly", "chronos-console")
        assert last.user and last.at > time.time() - 60
        # A console cannot write entries in another user's name.
        r = await raw(server, "console")
        try:
            for who in ("chronos-admin", "chronos-viewer"):
                await refused(r.js.publish(N.audit_subject(who), b"forged"))
        finally:
            await r.nc.close()
        for role in ("worker", "scheduler"):
            r = await raw(server, role)
            try:
                await refused(r.js.publish(N.audit_subject(f"chronos-{role}"), b"forged"))
            finally:
                await r.nc.close()
        assert (await audit.read(console.conn, limit=1))[-1].seq == last.seq
    finally:
        await console.close()


# --- the DLQ is write-only to workers ------------------------------------------------------------------------------
async def test_workers_cannot_read_the_dlq(server, admin, before):
    r = await raw(server, "worker")
    try:
        await refused(r.js.get_msg(N.dlq_stream, 1))
        await refused(r.js.get_msg(N.dlq_stream, 1, direct=True))
        await refused(r.js.add_consumer(N.dlq_stream, api.ConsumerConfig()))
        assert await snapshot(admin) == before
    finally:
        await r.nc.close()


# --- 9. a refusal is one clear line, at once ------------------------------------------------------------------------
async def test_a_refusal_names_the_subject_and_the_role_quickly(server):
    conn = await connect(settings_for(server, "worker"))
    try:
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as info:
            await conn.js.purge_stream(N.jobs_stream)
        assert str(info.value) == f"permission denied: $JS.API.STREAM.PURGE.{N.jobs_stream} (role worker)"
        assert time.monotonic() - started < 2
    finally:
        await conn.close()


# --- upgrades: buckets made by an older chronos ---------------------------------------------------------------------
async def test_admin_init_switches_rollups_off_on_existing_buckets(server):
    settings = settings_for(server, "admin")
    import msgspec

    legacy = msgspec.structs.replace(settings, namespace="legacy")
    conn = await connect(legacy)
    try:
        kv = await conn.js.create_key_value(bucket="legacy_jobs", history=1)  # as chronos did before
        await kv.put("a", b"1")
        assert (await conn.js.stream_info("KV_legacy_jobs")).config.allow_rollup_hdrs
        await ensure_topology(conn)
        cfg = (await conn.js.stream_info("KV_legacy_jobs")).config
        assert not cfg.allow_rollup_hdrs and cfg.consumer_limits.inactive_threshold == 300
        await refused(conn.js.publish("$KV.legacy_jobs.a", b"", headers={"Nats-Rollup": "all"}))
        assert await kv.keys() == ["a"]
    finally:
        await conn.close()


# --- the command line: `chronos logs --audit`, and a refusal as one line ----------------------------------------------
def _config(tmp_path, server, role: str):
    path = tmp_path / f"{role}.toml"
    path.write_text(f'namespace = "{N.ns}"\n[nats]\nurl = "{server.url}"\nuser = "chronos-{role}"\n'
                    f'password = "{role}-pw"\nmanage_topology = false\n')
    return str(path)


def test_cli_audit_log_and_a_refused_action(server, seeded, tmp_path):
    from typer.testing import CliRunner

    from chronos.cli.main import app

    runner = CliRunner()
    job = seeded["jobs"][2]
    viewer = runner.invoke(app, ["--config", _config(tmp_path, server, "viewer"), "cancel", job])
    assert viewer.exit_code == 6, viewer.output
    assert "permission denied: chronos.audit.chronos-viewer (role viewer)" in viewer.output
    assert "Traceback" not in viewer.output
    console = runner.invoke(app, ["--config", _config(tmp_path, server, "console"), "cancel", job])
    assert console.exit_code == 0, console.output
    listed = runner.invoke(app, ["--config", _config(tmp_path, server, "viewer"), "logs", "--audit", "--json"])
    assert listed.exit_code == 0, listed.output
    items = json.loads(listed.output)["items"]
    assert (items[-1]["action"], items[-1]["target"], items[-1]["role"]) == ("cancel", job, "chronos-console")
    text = runner.invoke(app, ["--config", _config(tmp_path, server, "viewer"), "logs", "--audit"])
    assert f"console    " in text.output and f"cancel           {job}" in text.output
