"""Static checks on the role permissions (the live checks are in test_nats_auth.py)."""

from __future__ import annotations

from chronos.permissions import ROLES, role_permissions
from chronos.subjects import Names


def _covers(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` one token, ``>`` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allowed(role: str, subject: str, direction: str = "publish", ns: str = "prod") -> bool:
    return any(_covers(p, subject) for p in role_permissions(Names(ns))[role][direction])


def test_only_admin_manages_streams():
    n = Names("prod")
    for role in ROLES:
        for verb in ("CREATE", "UPDATE", "DELETE", "PURGE"):
            for stream in (n.jobs_stream, n.dlq_stream, n.events_stream, n.audit_stream, n.kv_stream(n.jobs_bucket),
                           n.kv_stream(n.workflows_bucket)):
                # The leader's purger drops acknowledged work messages (the jobs stream keeps limits
                # retention, so an ack is not a delete); no other purge and no other role (the
                # workflows bucket is pruned key by key with expiring delete markers).
                purger = role == "scheduler" and verb == "PURGE" and stream == n.jobs_stream
                assert allowed(role, f"$JS.API.STREAM.{verb}.{stream}") == (role == "admin" or purger), (role, verb, stream)


def test_message_deletes_are_single_and_few():
    """Deleting one stream message: the pruner's markers, the stager's parked jobs, the console's DLQ entries."""
    n = Names("prod")
    expected = {("scheduler", n.kv_stream(n.jobs_bucket)), ("scheduler", n.delayed_stream), ("console", n.dlq_stream)}
    for role in ROLES:
        if role == "admin":
            continue
        for stream in (n.jobs_stream, n.dlq_stream, n.events_stream, n.delayed_stream, n.audit_stream,
                       *(n.kv_stream(b) for b in (n.jobs_bucket, n.workers_bucket, n.tasks_bucket,
                                                  n.control_bucket, n.schedules_bucket, n.lease_bucket))):
            assert allowed(role, f"$JS.API.STREAM.MSG.DELETE.{stream}") == ((role, stream) in expected), (role, stream)


def test_each_user_reads_only_its_own_inbox():
    n = Names("prod")
    perms = role_permissions(n)
    for role in ROLES:
        if role == "admin":
            continue
        assert not allowed(role, "_INBOX.abc.def", "subscribe"), role
        assert allowed(role, f"_INBOX_chronos-{role}.abc.def", "subscribe"), role
        for other in ROLES:
            if other != role:
                assert not allowed(role, f"_INBOX_chronos-{other}.abc.def", "subscribe"), (role, other)
        assert not any(p.startswith("_INBOX.") for p in perms[role]["publish"]), role
    # The scheduler answers history requests into single-token inboxes only, never a JetStream API reply inbox.
    assert allowed("scheduler", "_INBOX_chronos-console.nuid", "publish")
    assert not allowed("scheduler", "_INBOX_chronos-console.nuid.token", "publish")
    assert not allowed("scheduler", "_INBOX_chronos-worker.nuid", "publish")


def test_durable_consumers_only_where_needed():
    n = Names("prod")
    for role in ("worker", "console", "viewer"):
        for stream in (n.kv_stream(n.jobs_bucket), n.kv_stream(n.control_bucket), n.events_stream, n.dlq_stream,
                       n.jobs_stream):
            assert not allowed(role, f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.x"), (role, stream)
            assert not allowed(role, f"$JS.API.CONSUMER.CREATE.{stream}.x"), (role, stream)
            assert not allowed(role, f"$JS.API.CONSUMER.CREATE.{stream}.x.$KV.a.>"), (role, stream)
            assert not allowed(role, f"$JS.API.CONSUMER.DELETE.{stream}.x"), (role, stream)
    assert allowed("worker", f"$JS.API.CONSUMER.CREATE.{n.kv_stream(n.control_bucket)}")
    assert allowed("scheduler", f"$JS.API.CONSUMER.DURABLE.CREATE.{n.events_stream}.prod_archive_x")


def test_viewer_writes_nothing():
    n = Names("prod")
    for subject in (n.kv_subject(n.jobs_bucket, "x"), n.kv_subject(n.control_bucket, "cancel.x"),
                    n.kv_subject(n.schedules_bucket, "s"), n.job_subject("default", "default"),
                    n.delayed_subject(1), n.event_subject("completed", "default"), n.dlq_subject("default"),
                    n.audit_subject("chronos-viewer"), f"$JS.API.STREAM.MSG.DELETE.{n.dlq_stream}",
                    f"$JS.ACK.{n.jobs_stream}.x.1.2.3.4.5"):
        assert not allowed("viewer", subject), subject
    for subject in (f"$JS.API.DIRECT.GET.{n.kv_stream(n.jobs_bucket)}.$KV.prod_jobs.x",
                    f"$JS.API.STREAM.MSG.GET.{n.dlq_stream}", f"$JS.API.STREAM.MSG.GET.{n.audit_stream}",
                    n.history_api()):
        assert allowed("viewer", subject), subject


def test_audit_subject_is_per_user():
    n = Names("prod")
    assert allowed("console", n.audit_subject("chronos-console"))
    for role in ("worker", "scheduler", "viewer"):
        assert not allowed(role, n.audit_subject(f"chronos-{role}"))
    assert not allowed("console", n.audit_subject("chronos-admin"))


def test_worker_cannot_read_the_dlq_or_touch_the_lease_and_schedules():
    n = Names("prod")
    assert not allowed("worker", n.dlq_wildcard().replace(">", "default"), "subscribe")
    for subject in (f"$JS.API.STREAM.MSG.GET.{n.dlq_stream}", f"$JS.API.DIRECT.GET.{n.dlq_stream}",
                    f"$JS.API.CONSUMER.CREATE.{n.dlq_stream}", f"$JS.API.CONSUMER.CREATE.{n.dlq_stream}.x.y",
                    n.kv_subject(n.lease_bucket, n.leader_key()), n.kv_subject(n.schedules_bucket, "nightly"),
                    f"$JS.API.CONSUMER.CREATE.{n.jobs_stream}.x.y",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{n.jobs_stream}.x"):
        assert not allowed("worker", subject), subject
    # ... but may write a DLQ entry, pull, ack, and write what it owns.
    for subject in (n.dlq_subject("default"), n.consumer_next(n.consumer_name("high", "mail")),
                    f"$JS.ACK.{n.jobs_stream}.prod_high_mail.1.2.3.4.5", n.kv_subject(n.jobs_bucket, "01abc"),
                    n.kv_subject(n.workers_bucket, "w1"), n.event_subject("completed", "mail")):
        assert allowed("worker", subject), subject
    # Workflows start a finished parent's next node and the limiter re-parks a waiting job: both
    # publish a work message for an existing record (docs/security.md: the signature decides what runs).
    assert allowed("worker", n.job_subject("default", "default"))
    assert allowed("worker", n.kv_subject(n.control_bucket, "pending.x"))
    assert not allowed("worker", n.kv_subject(n.control_bucket, "cancel.x"))
    assert not allowed("worker", n.kv_subject(n.unique_bucket, "x"))


def test_roles_stay_inside_their_namespace():
    for role in ("scheduler", "worker", "console", "viewer"):
        for direction in ("publish", "subscribe"):
            for pattern in role_permissions(Names("prod"))[role][direction]:
                if pattern.startswith("_INBOX_") or pattern == "$JS.API.STREAM.NAMES":  # replies; lookup by subject
                    continue
                assert "prod" in pattern.lower(), (role, pattern)
                assert not allowed(role, pattern.replace("prod", "other").replace("PROD", "OTHER"), direction)


def test_console_reads_and_submits_but_does_not_pull_work():
    n = Names("prod")
    assert allowed("console", n.job_subject("default", "default"))
    assert allowed("console", f"$JS.API.STREAM.MSG.GET.{n.dlq_stream}")
    assert allowed("console", n.events_wildcard().replace(">", "completed.default"), "subscribe")
    assert not allowed("console", n.consumer_next(n.consumer_name("default", "default")))
    assert not allowed("console", f"$JS.ACK.{n.jobs_stream}.x.1.2.3.4.5")


def test_workers_read_their_peers_heartbeats():
    """A worker hands back a job whose task it lacks and discards it only when no live peer has the
    task: it must read the workers bucket (mixed fleets, issue 11)."""
    n = Names("prod")
    stream = n.kv_stream(n.workers_bucket)
    assert allowed("worker", f"$JS.API.DIRECT.GET.{stream}") or allowed("worker", f"$JS.API.STREAM.MSG.GET.{stream}")
    assert allowed("worker", f"$JS.API.CONSUMER.CREATE.{stream}")
