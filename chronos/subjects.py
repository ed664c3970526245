"""Every stream, subject, consumer and bucket name, derived from the namespace.

No other module spells a subject or bucket literal. A namespace isolates one
chronos deployment (or one test) from another on the same NATS server.
"""

from __future__ import annotations

import re

PRIORITIES: tuple[str, ...] = ("critical", "high", "default", "low")
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_valid_token(value: str) -> bool:
    """A queue or namespace must be one NATS subject token and a valid stream-name part.

    ``fullmatch``, not ``match`` with ``$``: ``$`` also matches before a trailing newline, and a
    queue named "q\n" made a subject the server answers by closing the connection."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


class Names:
    """All names for one namespace. Cheap to build; pass it around instead of strings."""

    def __init__(self, namespace: str = "chronos") -> None:
        if not is_valid_token(namespace):
            raise ValueError(
                f"namespace {namespace!r} must be 1-64 characters of letters, digits, '_' or '-'"
            )
        self.ns = namespace
        self._job_subjects: dict[tuple[str, str], str] = {}  # checked once per (priority, queue)
        up = namespace.upper().replace("-", "_")
        # streams
        self.jobs_stream = f"{up}_JOBS"
        self.dlq_stream = f"{up}_DLQ"
        self.events_stream = f"{up}_EVENTS"
        self.delayed_stream = f"{up}_DELAYED"
        # KV buckets
        self.jobs_bucket = f"{namespace}_jobs"
        self.workers_bucket = f"{namespace}_workers"
        self.tasks_bucket = f"{namespace}_tasks"
        self.control_bucket = f"{namespace}_control"
        self.schedules_bucket = f"{namespace}_schedules"
        self.lease_bucket = f"{namespace}_lease"
        # operator settings per queue (pause flags): no TTL, written by the console role only
        self.queues_bucket = f"{namespace}_queues"
        # holders of unique-while-active and debounce keys: no TTL (a key is held while its job is)
        self.unique_bucket = f"{namespace}_unique"
        # rate-limit state, concurrency slots (per-message TTL leases) and waiters: workers write
        self.limits_bucket = f"{namespace}_limits"
        # workflows: definitions, node specs, state records and fan-in bitmaps (workflows.md)
        self.workflows_bucket = f"{namespace}_workflows"
        # subject roots
        self.jobs_root = f"{namespace}.jobs"
        self.events_root = f"{namespace}.events"
        self.dlq_root = f"{namespace}.dlq"
        self.delayed_root = f"{namespace}.delayed"
        self.api_root = f"{namespace}.api"
        # operator actions (retry, cancel, purge, schedule changes): append-only, one subject per NATS user
        self.audit_stream = f"{up}_AUDIT"
        self.audit_root = f"{namespace}.audit"

    # --- work-queue stream -------------------------------------------------
    def job_subject(self, priority: str, queue: str) -> str:
        """The work subject; ValueError for a priority or queue no subject may carry (a record
        written before validation, or forged), never a publish the server drops the connection for."""
        subject = self._job_subjects.get((priority, queue))
        if subject is None:
            if priority not in PRIORITY_RANK or not is_valid_token(queue):
                raise ValueError(f"no work subject for priority {priority!r}, queue {queue!r}: "
                                 "the queue must be 1-64 letters, digits, '_' or '-'")
            subject = self._job_subjects[(priority, queue)] = f"{self.jobs_root}.{priority}.{queue}"
        return subject

    def jobs_wildcard(self) -> str:
        return f"{self.jobs_root}.>"

    def priority_filter(self, priority: str) -> str:
        return f"{self.jobs_root}.{priority}.*"

    def queue_filter(self, priority: str, queue: str) -> str:
        return self.job_subject(priority, queue)

    def consumer_name(self, priority: str, queue: str | None = None) -> str:
        """One durable per priority (and queue): work-queue streams refuse overlapping filters."""
        base = f"{self.ns}_{priority}"
        return f"{base}_{queue}" if queue else base

    # --- events --------------------------------------------------------------
    def event_subject(self, kind: str, queue: str) -> str:
        return f"{self.events_root}.{kind}.{queue}"

    def events_wildcard(self) -> str:
        return f"{self.events_root}.>"

    def events_filter(self, kind: str = "*", queue: str = "*") -> str:
        return f"{self.events_root}.{kind}.{queue}"

    # --- DLQ -----------------------------------------------------------------
    def dlq_subject(self, queue: str) -> str:
        return f"{self.dlq_root}.{queue}"

    def dlq_wildcard(self) -> str:
        return f"{self.dlq_root}.>"

    # --- delayed jobs --------------------------------------------------------
    def delayed_subject(self, minute: int) -> str:
        return f"{self.delayed_root}.{minute}"

    def delayed_wildcard(self) -> str:
        return f"{self.delayed_root}.>"

    # --- KV keys and raw KV subjects (for pipelined compare-and-set) ---------
    def kv_subject(self, bucket: str, key: str) -> str:
        return f"$KV.{bucket}.{key}"

    def kv_stream(self, bucket: str) -> str:
        return f"KV_{bucket}"

    # --- control / API -------------------------------------------------------
    def cancel_key(self, job_id: str) -> str:
        return f"cancel.{job_id}"

    def pause_key(self, queue: str) -> str:
        """A queue's pause flag in ``queues_bucket`` (every worker watches ``pause_wildcard``)."""
        return f"paused.{queue}"

    def pause_wildcard(self) -> str:
        return "paused.>"

    def queue_limit_key(self, queue: str) -> str:
        """A queue's rate and concurrency limits in ``queues_bucket`` (chronos/limitstore.py)."""
        return f"limit.{queue}"

    def queue_limit_wildcard(self) -> str:
        return "limit.>"

    def unique_key(self, digest: str) -> str:
        return f"unique.{digest}"

    def active_key(self, digest: str) -> str:
        """A unique-while-active or debounce key's holder in ``unique_bucket``."""
        return f"active.{digest}"

    def history_api(self) -> str:
        return f"{self.api_root}.history"

    def archive_consumer(self, node_key: str) -> str:
        """The durable events consumer of one node's archive (``node_key``: a stable token per archive file)."""
        return f"{self.ns}_archive_{node_key}"

    def max_deliveries_advisory(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.jobs_stream}.*"

    def consumer_next(self, consumer: str) -> str:
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.jobs_stream}.{consumer}"

    # --- audit and inboxes (security.md) ----------------------------------------
    def audit_subject(self, user: str | None) -> str:
        """Where ``user``'s operator actions go; the server lets each user publish to its own only."""
        return f"{self.audit_root}.{user_token(user)}"

    def audit_wildcard(self) -> str:
        return f"{self.audit_root}.>"

    def ack_subject(self, consumer: str, deliveries: int, stream_seq: int) -> str:
        """An ack for one work message by stream sequence (the max-deliveries backstop acks what it moved)."""
        return f"$JS.ACK.{self.jobs_stream}.{consumer}.{deliveries}.{stream_seq}.1.0.0"

    # --- leadership ----------------------------------------------------------
    def leader_key(self, role: str = "scheduler") -> str:
        """The lease key in ``lease_bucket``; one per role that elects a leader."""
        return f"leader.{role}"


def user_token(user: str | None) -> str:
    """A NATS user name as one subject token ("anonymous" without one)."""
    if not user:
        return "anonymous"
    return re.sub(r"[^A-Za-z0-9_-]", "_", user)[:64]


def inbox_prefix(user: str | None) -> str:
    """The reply-inbox prefix of ``user``: each user may subscribe to its own replies only.

    Without a user (no auth, a token, nkeys) it is nats-py's default ``_INBOX``.
    """
    return f"_INBOX_{user_token(user)}" if user else "_INBOX"
