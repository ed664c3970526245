"""Least-privilege NATS permissions for each chronos role, derived from ``subjects.Names``.

Roles, for one namespace (docs/security.md has the threat model)::

    worker     pull jobs and ack/nak/term them, write its job records, heartbeats and task catalog,
               publish events and DLQ entries (write-only), watch cancel requests
    scheduler  the worker's rights plus the lease, schedules, the delayed stream, republishing work,
               reading heartbeats, archiving events, answering history requests, and deleting one
               pruned record at a time from the jobs bucket
    console    read everything in the namespace, submit/cancel/retry jobs, edit schedules, write
               its operator actions to the audit stream
    viewer     read everything the console reads; write nothing (``chronos tui --readonly``)
    admin      the whole JetStream API of the account: create, update, purge and delete streams

What holds against a stolen credential, whatever client it runs:

* No role but ``admin`` may create, update, purge or delete a stream. The scheduler's pruner
  deletes single messages of the jobs bucket (``STREAM.MSG.DELETE``, one record per request);
  nobody else deletes stream messages except the console's single DLQ entries.
* Rollup headers are refused by every stream (``allow_rollup_hdrs`` false, set by
  ``ensure_topology``), so a ``Nats-Rollup: all`` write to a key cannot wipe a bucket.
* Each user subscribes only to its own reply inboxes (``_INBOX_<user>.>``; the client connects
  with that ``inbox_prefix``), so no role reads another's replies. The scheduler may answer
  history requests into the single-token inboxes of the users that ask (console, viewer,
  admin), not into their JetStream API inboxes (two tokens).
* Consumers: only ``$JS.API.CONSUMER.CREATE.<stream>`` (five tokens) is allowed to the
  non-admin roles on the streams they read, and the server refuses a durable name on that
  subject; so workers, consoles and viewers create ephemeral consumers only, which the
  streams' ``consumer_limits`` expire after ``_EPHEMERAL_IDLE`` without interest. Only the
  scheduler creates a durable, its archive consumer on the events stream.
* Each user publishes audit entries under its own subject ``<ns>.audit.<user>``, so the
  server vouches for the role in an audit entry.

Topology is made by an admin (``chronos admin init``); the others run with
``nats.manage_topology = false``.

``render_authorization()`` writes the server config's ``accounts`` block;
``deploy/nats/accounts.conf`` is its output for the default namespace (a test keeps
them equal). ``python -m chronos.permissions --namespace NAME`` prints it for another.
"""

from __future__ import annotations

import argparse
import json
from typing import Mapping

from .subjects import Names, inbox_prefix

ROLES: tuple[str, ...] = ("admin", "scheduler", "worker", "console", "viewer")
# Roles that ask the scheduler's archive for history (and so get its answers in their inboxes).
_HISTORY_ASKERS: tuple[str, ...] = ("console", "viewer", "admin")


def _ephemeral(stream: str) -> list[str]:
    """Create (ephemeral only: the 5-token subject), inspect and pull from consumers on one stream,
    ack what they deliver (on these limits streams an ack removes nothing) and answer their flow
    control. No delete: an idle ephemeral goes away by itself."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _stream_read(stream: str) -> list[str]:
    """Get a message (direct or through the leader) and follow the stream with ephemeral consumers."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        *_ephemeral(stream),
    ]


def _kv_read(names: Names, bucket: str) -> list[str]:
    return _stream_read(names.kv_stream(bucket))


def _kv_write(names: Names, bucket: str) -> list[str]:
    return [names.kv_subject(bucket, ">")]


def default_user(role: str) -> str:
    return f"chronos-{role}"


def role_permissions(names: Names, users: Mapping[str, str] | None = None) -> dict[str, dict[str, list[str]]]:
    """``{role: {"publish": [...], "subscribe": [...]}}``; subjects a role may use, nothing else.

    ``users`` maps a role to its NATS user name (default ``chronos-<role>``): the inbox and
    audit subjects are per user.
    """
    n = names
    user = {role: (users or {}).get(role) or default_user(role) for role in ROLES}

    def inbox(role: str) -> str:
        return f"{inbox_prefix(user[role])}.>"

    jobs = n.jobs_stream
    job_records = [*_kv_read(n, n.jobs_bucket), *_kv_write(n, n.jobs_bucket)]
    # Pull and acknowledge on the work-queue stream's durable consumers (made by the admin).
    # The max-deliveries backstop reads the stuck message by sequence and acks it once it is in
    # the DLQ (an ack by stream sequence; no message delete).
    pull = [
        f"$JS.API.STREAM.INFO.{jobs}",
        f"$JS.API.CONSUMER.INFO.{jobs}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{jobs}.*",
        f"$JS.ACK.{jobs}.>",
        f"$JS.API.STREAM.MSG.GET.{jobs}",
    ]
    # Verifying the topology exists (read-only) when not managing it.
    stream_info = [f"$JS.API.STREAM.INFO.{s}" for s in _streams(n)]
    bucket_info = [f"$JS.API.STREAM.INFO.{n.kv_stream(b)}" for b in _buckets(n)]
    history = n.history_api()

    worker_pub = _unique([
        *pull, *stream_info, *bucket_info, *job_records,
        *_kv_write(n, n.workers_bucket), *_kv_write(n, n.tasks_bucket),
        # Peers' heartbeats: a job for a task this worker lacks is discarded only when no live
        # peer on its queue registers the task (issue 11, mixed fleets).
        *_kv_read(n, n.workers_bucket),
        *_kv_read(n, n.control_bucket),
        # Queue pause flags (watched before the first pull); only the console writes them.
        *_kv_read(n, n.queues_bucket),
        # Rate-limit turns and concurrency slots (take, renew, release); queue limits are in the
        # queues bucket, which only the console writes.
        *_kv_read(n, n.limits_bucket), *_kv_write(n, n.limits_bucket),
        # Workflows: a worker advances the workflow of a node it finished (fan-in bitmaps, the
        # workflow record) and starts the next node: its record, a pending marker while its work
        # message goes out, and the message itself (signed specs still decide what may run).
        *_kv_read(n, n.workflows_bucket), *_kv_write(n, n.workflows_bucket),
        n.kv_subject(n.control_bucket, "pending.>"), n.jobs_wildcard(),
        n.events_wildcard(), n.dlq_wildcard(),
    ])
    worker_sub = [inbox("worker"), n.max_deliveries_advisory()]

    scheduler_pub = _unique([
        *worker_pub,
        n.jobs_wildcard(), n.delayed_wildcard(), history,
        *_stream_read(n.delayed_stream), f"$JS.API.STREAM.MSG.DELETE.{n.delayed_stream}",
        f"$JS.ACK.{n.delayed_stream}.>",
        # The archive: one durable per archive file on the events stream, recreated when its settings change.
        *_stream_read(n.events_stream), f"$JS.API.CONSUMER.DURABLE.CREATE.{n.events_stream}.*",
        f"$JS.API.CONSUMER.DELETE.{n.events_stream}.*", f"$JS.ACK.{n.events_stream}.>",
        *_kv_read(n, n.workers_bucket), *_kv_read(n, n.schedules_bucket), *_kv_write(n, n.schedules_bucket),
        *_kv_read(n, n.lease_bucket), *_kv_write(n, n.lease_bucket),
        *_kv_read(n, n.tasks_bucket), *_kv_write(n, n.control_bucket),
        f"$JS.API.CONSUMER.LIST.{jobs}",  # the metrics endpoint's queue depths; the purger's ack floors
        # The leader purges acknowledged work messages below every consumer's ack floor
        # (scheduler/purger.py); only this role may: a worker or console purge could drop queued jobs.
        f"$JS.API.STREAM.PURGE.{jobs}",
        # Bucket scans name their consumer (scheduler/_scan.py); the bucket's consumer_limits
        # still expire it, durable or not, after _EPHEMERAL_IDLE without interest.
        *(f"$JS.API.CONSUMER.CREATE.{n.kv_stream(b)}.*.>" for b in _buckets(n)),
        # The stager's scan of one minute of parked jobs: nats-py names a filtered consumer
        # (seven tokens); the delayed stream's consumer_limits expire it like the bucket scans.
        f"$JS.API.CONSUMER.CREATE.{n.delayed_stream}.*.>",
        # The pruner deletes a pruned record's delete marker: one message per request, by sequence.
        f"$JS.API.STREAM.MSG.DELETE.{n.kv_stream(n.jobs_bucket)}",
        # No purge of the workflows bucket: the leader prunes a finished workflow key by key with
        # delete markers that expire by themselves (workflowstore.purge_keys); a purge right let one
        # request without a filter erase every workflow, running ones included.
        # History answers go to the asker's single-token inbox (never to its JetStream API inbox).
        *(f"{inbox_prefix(user[r])}.*" for r in _HISTORY_ASKERS),
    ])
    # The lease holder follows its key's changes with a core subscription;
    # the metrics endpoint follows every job event of the namespace.
    scheduler_sub = _unique([*worker_sub, inbox("scheduler"), n.delayed_wildcard(), history, n.events_wildcard(),
                             n.kv_subject(n.lease_bucket, ">")])
    scheduler_sub.remove(inbox("worker"))

    viewer_pub = _unique([
        *stream_info, *bucket_info,
        *(s for b in _buckets(n) for s in _kv_read(n, b)),
        *_stream_read(n.events_stream), *_stream_read(n.dlq_stream), *_stream_read(n.delayed_stream),
        *_stream_read(n.audit_stream),
        history,
        # nats-py's js.subscribe(subject) finds the stream by subject (names only, no contents).
        "$JS.API.STREAM.NAMES",
        f"$JS.API.CONSUMER.NAMES.{jobs}", f"$JS.API.CONSUMER.LIST.{jobs}", f"$JS.API.CONSUMER.INFO.{jobs}.*",
    ])
    viewer_sub = [inbox("viewer"), n.events_wildcard()]

    console_pub = _unique([
        *viewer_pub, *_kv_write(n, n.jobs_bucket),
        n.jobs_wildcard(), n.delayed_wildcard(), n.events_wildcard(),
        *_kv_write(n, n.control_bucket), *_kv_write(n, n.schedules_bucket),
        *_kv_write(n, n.queues_bucket),  # pause/resume a queue: an operator action (audited)
        # Submitting a unique-while-active or debounced job takes its key (compare-and-set).
        *_kv_write(n, n.unique_bucket),
        # Submitting, cancelling and retrying workflows (their records and node specs).
        *_kv_write(n, n.workflows_bucket),
        # dlq replay removes the entry it replayed (one message; purging the stream stays admin-only)
        f"$JS.API.STREAM.MSG.DELETE.{n.dlq_stream}",
        n.audit_subject(user["console"]),
    ])
    console_sub = [inbox("console"), n.events_wildcard()]

    return {
        "admin": {"publish": [">"], "subscribe": [">"]},
        "scheduler": {"publish": scheduler_pub, "subscribe": scheduler_sub},
        "worker": {"publish": worker_pub, "subscribe": worker_sub},
        "console": {"publish": console_pub, "subscribe": console_sub},
        "viewer": {"publish": viewer_pub, "subscribe": viewer_sub},
    }


def _streams(n: Names) -> list[str]:
    return [n.jobs_stream, n.dlq_stream, n.events_stream, n.delayed_stream, n.audit_stream]


def _buckets(n: Names) -> list[str]:
    return [n.jobs_bucket, n.workers_bucket, n.tasks_bucket, n.control_bucket, n.schedules_bucket, n.lease_bucket,
            n.queues_bucket, n.unique_bucket, n.limits_bucket, n.workflows_bucket]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def render_authorization(
    names: Names,
    users: Mapping[str, tuple[str, str]],
    *,
    account: str = "CHRONOS",
    jetstream_limits: Mapping[str, object] | None = None,
    system_user: tuple[str, str] | None = None,
) -> str:
    """The ``accounts { ... }`` block (and ``system_account``) of a nats-server config.

    ``users`` maps a role to ``(user, password)``; a password written ``$NAME`` is left
    unquoted, so nats-server substitutes the environment variable ``NAME`` at start.
    """
    perms = role_permissions(names, {role: u for role, (u, _) in users.items()})
    limits = jetstream_limits or {"max_mem": "512M", "max_file": "20G", "max_streams": 64, "max_consumers": 1024}

    def value(v: object) -> str:
        if isinstance(v, str) and v.startswith("$"):
            return v
        if isinstance(v, str) and v[-1:] in "KMGT" and v[:-1].isdigit():
            return v
        return json.dumps(v)

    lines = [f"# Generated by `python -m chronos.permissions --namespace {names.ns}`; do not edit by hand.",
             "accounts {", f"  {account} {{", "    jetstream {"]
    lines += [f"      {k}: {value(v)}" for k, v in limits.items()]
    lines += ["    }", "    users = ["]
    for role in ROLES:
        if role not in users:
            continue
        user, password = users[role]
        p = perms[role]
        lines.append(f"      # {role}")
        lines.append(f"      {{ user: {json.dumps(user)}, password: {value(password)}, permissions: {{")
        for direction in ("publish", "subscribe"):
            lines.append(f"        {direction}: {{ allow: [")
            lines += [f"          {json.dumps(s)}" for s in p[direction]]
            lines.append("        ] }")
        lines.append("      } }")
    lines += ["    ]", "  }"]
    if system_user is not None:
        lines += ["  SYS {", f"    users = [{{ user: {json.dumps(system_user[0])}, "
                  f"password: {value(system_user[1])} }}]", "  }"]
    lines.append("}")
    if system_user is not None:
        lines.append("system_account: SYS")
    return "\n".join(lines) + "\n"


def default_users() -> dict[str, tuple[str, str]]:
    """Role -> (user, password from the environment of nats-server), as in deploy/nats/accounts.conf."""
    return {role: (default_user(role), f"$CHRONOS_{role.upper()}_PASSWORD") for role in ROLES}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", default="chronos")
    args = ap.parse_args(argv)
    out = render_authorization(Names(args.namespace), default_users(), system_user=("sys", "$NATS_SYSTEM_PASSWORD"))
    import sys

    sys.stdout.write(out)


if __name__ == "__main__":
    main()
