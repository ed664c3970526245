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
            for stream in (n.jobs_stream, n.dlq_stream, n.events_stream, n.kv_stream(n.jobs_bucket)):
                # The one exception: the scheduler's pruner purges pruned keys of the jobs bucket.
                pruner = role == "scheduler" and verb == "PURGE" and stream == n.kv_stream(n.jobs_bucket)
                expected = role == "admin" or pruner
                assert allowed(role, f"$JS.API.STREAM.{verb}.{stream}") == expected, (role, verb, stream)


def test_worker_cannot_read_the_dlq_or_touch_the_lease_and_schedules():
    n = Names("prod")
    assert not allowed("worker", n.dlq_wildcard().replace(">", "default"), "subscribe")
    for subject in (f"$JS.API.STREAM.MSG.GET.{n.dlq_stream}", f"$JS.API.DIRECT.GET.{n.dlq_stream}",
                    f"$JS.API.CONSUMER.CREATE.{n.dlq_stream}", f"$JS.API.CONSUMER.CREATE.{n.dlq_stream}.x.y",
                    n.kv_subject(n.lease_bucket, n.leader_key()), n.kv_subject(n.schedules_bucket, "nightly"),
                    n.job_subject("default", "default"), f"$JS.API.CONSUMER.CREATE.{n.jobs_stream}.x.y",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{n.jobs_stream}.x"):
        assert not allowed("worker", subject), subject
    # ... but may write a DLQ entry, pull, ack, and write what it owns.
    for subject in (n.dlq_subject("default"), n.consumer_next(n.consumer_name("high", "mail")),
                    f"$JS.ACK.{n.jobs_stream}.prod_high_mail.1.2.3.4.5", n.kv_subject(n.jobs_bucket, "01abc"),
                    n.kv_subject(n.workers_bucket, "w1"), n.event_subject("completed", "mail")):
        assert allowed("worker", subject), subject


def test_roles_stay_inside_their_namespace():
    for role in ("scheduler", "worker", "console"):
        for direction in ("publish", "subscribe"):
            for pattern in role_permissions(Names("prod"))[role][direction]:
                if pattern in ("_INBOX.>", "$JS.API.STREAM.NAMES"):  # its replies; stream lookup by subject
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
