"""Least-privilege NATS permissions for each chronos role, derived from ``subjects.Names``.

Roles, for one namespace::

    worker     pull jobs, ack/nak/term them, write its job records, heartbeats and task catalog,
               publish events and DLQ entries (write-only), watch cancel requests
    scheduler  the worker's job-record rights plus the lease, schedules, the delayed stream,
               republishing work, reading heartbeats, archiving events and answering history requests
    console    read everything in the namespace, submit/cancel/retry jobs, edit schedules
    admin      the whole JetStream API of the account: create, update, purge and delete streams

No role but ``admin`` may create, update, purge or delete a stream (one exception: the
scheduler's pruner purges single keys of the jobs bucket). Topology is made
by an admin (``chronos admin init``); the others run with ``nats.manage_topology = false``.

``render_authorization()`` writes the server config's ``accounts`` block;
``deploy/nats/accounts.conf`` is its output for the default namespace (a test keeps
them equal). ``python -m chronos.permissions --namespace NAME`` prints it for another.
"""

from __future__ import annotations

import argparse
import json
from typing import Mapping

from .subjects import Names

ROLES: tuple[str, ...] = ("admin", "scheduler", "worker", "console")

# Replies to requests (JetStream API, PubAcks, history answers) come back on inboxes.
_INBOX = "_INBOX.>"


def _kv_read(names: Names, bucket: str) -> list[str]:
    """Get a key (direct get or stream get) and follow keys with an ordered consumer."""
    stream = names.kv_stream(bucket)
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        *_consumers(stream),
    ]


def _consumers(stream: str) -> list[str]:
    """Create, inspect, pull from and remove (ephemeral) consumers on one stream, and their flow control."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _kv_write(names: Names, bucket: str) -> list[str]:
    return [names.kv_subject(bucket, ">")]


def _stream_read(stream: str) -> list[str]:
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        *_consumers(stream),
    ]


def role_permissions(names: Names) -> dict[str, dict[str, list[str]]]:
    """``{role: {"publish": [...], "subscribe": [...]}}``; subjects a role may use, nothing else."""
    n = names
    jobs = n.jobs_stream
    job_records = [*_kv_read(n, n.jobs_bucket), *_kv_write(n, n.jobs_bucket)]
    # Pull and acknowledge on the work-queue stream's durable consumers (made by the admin).
    pull = [
        f"$JS.API.STREAM.INFO.{jobs}",
        f"$JS.API.CONSUMER.INFO.{jobs}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{jobs}.*",
        f"$JS.ACK.{jobs}.>",
    ]
    # The max-deliveries backstop: fetch the stuck message by sequence, delete it once in the DLQ.
    backstop = [f"$JS.API.STREAM.MSG.GET.{jobs}", f"$JS.API.STREAM.MSG.DELETE.{jobs}"]
    # Verifying the topology exists (read-only) when not managing it.
    stream_info = [f"$JS.API.STREAM.INFO.{s}" for s in (n.jobs_stream, n.dlq_stream, n.events_stream,
                                                        n.delayed_stream)]
    bucket_info = [f"$JS.API.STREAM.INFO.{n.kv_stream(b)}" for b in _buckets(n)]

    worker_pub = _unique([
        *pull, *backstop, *stream_info, *bucket_info, *job_records,
        *_kv_write(n, n.workers_bucket), *_kv_write(n, n.tasks_bucket),
        *_kv_read(n, n.control_bucket),
        n.events_wildcard(), n.dlq_wildcard(),
    ])
    worker_sub = [_INBOX, n.max_deliveries_advisory()]

    scheduler_pub = _unique([
        *worker_pub,
        n.jobs_wildcard(), n.delayed_wildcard(), f"{n.api_root}.>", _INBOX,
        *_stream_read(n.delayed_stream), f"$JS.API.STREAM.MSG.DELETE.{n.delayed_stream}",
        *_stream_read(n.events_stream), f"$JS.API.CONSUMER.DURABLE.CREATE.{n.events_stream}.*",
        f"$JS.ACK.{n.events_stream}.>", f"$JS.API.CONSUMER.MSG.NEXT.{n.events_stream}.*",
        *_kv_read(n, n.workers_bucket), *_kv_read(n, n.schedules_bucket), *_kv_write(n, n.schedules_bucket),
        *_kv_read(n, n.lease_bucket), *_kv_write(n, n.lease_bucket),
        *_kv_read(n, n.tasks_bucket), *_kv_write(n, n.control_bucket),
        f"$JS.API.CONSUMER.LIST.{jobs}",  # the metrics endpoint's queue depths
        # The pruner purges a pruned job's key up to its delete marker (a subject-filtered purge
        # of the jobs bucket only; purging other streams stays admin-only).
        f"$JS.API.STREAM.PURGE.{n.kv_stream(n.jobs_bucket)}",
    ])
    # The lease holder follows its key's changes with a core subscription.
    # ... and the metrics endpoint follows every job event of the namespace.
    scheduler_sub = _unique([*worker_sub, n.delayed_wildcard(), f"{n.api_root}.>", n.events_wildcard(),
                             n.kv_subject(n.lease_bucket, ">")])

    console_pub = _unique([
        *job_records, *stream_info, *bucket_info,
        n.jobs_wildcard(), n.delayed_wildcard(), f"{n.api_root}.>", n.events_wildcard(),
        *(s for b in _buckets(n) for s in _kv_read(n, b)),
        *_kv_write(n, n.control_bucket), *_kv_write(n, n.schedules_bucket),
        *_stream_read(n.events_stream), *_stream_read(n.dlq_stream), *_stream_read(n.delayed_stream),
        # dlq replay removes the entry it replayed (one message; purging the stream stays admin-only)
        f"$JS.API.STREAM.MSG.DELETE.{n.dlq_stream}",
        # nats-py's js.subscribe(subject) finds the stream by subject (names only, no contents).
        "$JS.API.STREAM.NAMES",
        f"$JS.API.CONSUMER.NAMES.{jobs}", f"$JS.API.CONSUMER.LIST.{jobs}", f"$JS.API.CONSUMER.INFO.{jobs}.*",
    ])
    console_sub = [_INBOX, n.events_wildcard()]

    return {
        "admin": {"publish": [">"], "subscribe": [">"]},
        "scheduler": {"publish": scheduler_pub, "subscribe": scheduler_sub},
        "worker": {"publish": worker_pub, "subscribe": worker_sub},
        "console": {"publish": console_pub, "subscribe": console_sub},
    }


def _buckets(n: Names) -> list[str]:
    return [n.jobs_bucket, n.workers_bucket, n.tasks_bucket, n.control_bucket, n.schedules_bucket, n.lease_bucket]


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
    perms = role_permissions(names)
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
    return {role: (f"chronos-{role}", f"$CHRONOS_{role.upper()}_PASSWORD") for role in ROLES}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", default="chronos")
    args = ap.parse_args(argv)
    out = render_authorization(Names(args.namespace), default_users(), system_user=("sys", "$NATS_SYSTEM_PASSWORD"))
    import sys

    sys.stdout.write(out)


if __name__ == "__main__":
    main()
