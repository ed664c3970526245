"""Stored and wire types, as msgspec Structs. No I/O here.

Times are float seconds since the epoch (UTC). ``v`` on a top-level wire type is
its schema version; codec.py refuses versions newer than it knows.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import msgspec

from .states import JobState

JSONValue = Any  # checked at submit by codec.check_json_compatible


# gc=False on the per-job structs (spec, record, attempt, message, event): tens of thousands are
# made per second on the hot path, and tracking them made the collector run through them again
# and again (a bulk submit's record building took twice as long). They cannot form reference
# cycles: they hold scalars, lists of each other, and JSON-compatible args and results.


class Backoff(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Delay before attempt n+1 after attempt n failed.

    ``exponential`` with full jitter (the AWS rule): uniform(0, min(cap, base * 2**(n-1))).
    ``fixed``: always ``base`` (jitter still spreads it when ``jitter`` is true).
    """

    kind: Literal["exponential", "fixed"] = "exponential"
    base: float = 1.0
    cap: float = 300.0
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        if self.kind == "fixed":
            ceiling = self.base
        else:
            ceiling = min(self.cap, self.base * math.pow(2.0, max(0, attempt - 1)))
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)


class Uniqueness(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """Unique while active, or debounce (docs/unique-jobs.md). ``key`` is the caller's key, or
    ``args:<digest>`` when none was given (a digest of the task and its args); the holder of
    ``<task>\0<key>`` is found in the unique bucket. A debounce holds the key while ``scheduled``."""

    mode: Literal["while_active", "debounce"]
    key: str
    debounce: float | None = None  # seconds after the last submit (debounce mode)
    max_wait: float | None = None  # at most this long after the first submit (debounce mode)


class Progress(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """What a running task last reported (``current_job().progress``): fraction 0..1."""

    fraction: float
    at: float
    message: str | None = None
    attempt: int = 0  # the attempt that reported it


class JobSpec(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """What to run: everything a submitter says about a job."""

    task: str
    args: list[Any] | dict[str, Any] = msgspec.field(default_factory=list)
    queue: str = "default"
    priority: str = "default"
    run_at: float | None = None
    max_attempts: int = 5
    timeout: float | None = None  # seconds; None means the worker's default
    backoff: Backoff = Backoff()
    unique_key: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    unique: Uniqueness | None = None  # unique while active or debounce (``unique_key`` alone: the dedupe window)


class JobAuth(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """Who vouches for a job's spec: an ed25519 signature by a submitter or scheduler key.

    The signature covers the root of a Merkle tree over (namespace, job id, spec) leaves of one
    submit batch; ``path`` holds the sibling hashes from this job's leaf up to the root and
    ``index`` its leaf position (see signing.py). A single job has an empty path.
    """

    kid: str  # which trusted key signed (a short digest of its public key)
    sig: bytes
    path: bytes = b""
    index: int = 0


class Attempt(msgspec.Struct, omit_defaults=True, gc=False):
    number: int
    started_at: float
    worker: str = ""
    ended_at: float | None = None
    outcome: str | None = None  # completed | error | timeout | retry | cancelled | lost | shutdown
    error: str | None = None
    traceback: str | None = None
    delivery: int = 0  # the work message's delivery count when this attempt started


class LimitTicket(msgspec.Struct, frozen=True, gc=False):
    """A rate-limit turn reserved for a job handed back over its limit: valid for delivery
    ``delivery`` of the work message of generation ``gen``, to start at ``at`` (chronos/worker/limiter.py)."""

    gen: int
    delivery: int
    at: float


class JobRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """The authoritative state of one job, stored in the jobs KV bucket under its id."""

    id: str
    spec: JobSpec
    state: JobState
    created_at: float
    updated_at: float
    v: int = 1
    attempt: int = 0  # attempts started so far
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    gen: int = 1  # bumped each time a fresh work message is published; older ones are skipped
    scheduled_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    result_truncated: bool = False
    error: str | None = None
    worker: str | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    schedule_id: str | None = None
    fire_time: float | None = None
    auth: JobAuth | None = None  # the submitter's signature over (id, spec); see signing.py
    revision: int = 0  # the KV revision it was read at; not part of the stored value's meaning
    # Deliveries of the work message of generation ``delivered_gen`` this record accounts for: runs
    # started (attempts) plus hand-backs (a worker without the task). A server delivery count above
    # it means runs that started and were never recorded (worker lost in its first moments).
    delivered: int = 0
    handed_back: int = 0
    delivered_gen: int = 0
    progress: Progress | None = None  # the running task's last report (worker/progress.py)
    limit_ticket: LimitTicket | None = None  # a rate-limit turn this job holds (see LimitTicket)


class JobMessage(msgspec.Struct, omit_defaults=True, gc=False):
    """The message on a work-queue subject: the job's record as of revision ``rev``.

    Carrying the record lets the worker's first write be a compare-and-set with no read.
    """

    record: JobRecord
    rev: int = 0
    v: int = 1


class DLQEntry(msgspec.Struct, omit_defaults=True):
    """What the DLQ stream holds: why a job landed there and everything needed to replay it."""

    reason: str
    at: float
    v: int = 1
    job_id: str | None = None
    spec: JobSpec | None = None
    traceback: str | None = None
    attempts: int = 0
    subject: str | None = None
    raw: bytes | None = None  # the undecodable original payload, for malformed messages
    auth: JobAuth | None = None  # the job's signature, kept so a replay of a pruned job still verifies
    seq: int = 0  # the DLQ stream sequence, filled on read


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One lifecycle fact. ``kind`` is a job state, or a service event (worker.*, leader.*)."""

    kind: str
    at: float
    job_id: str | None = None
    task: str | None = None
    queue: str | None = None
    priority: str | None = None
    attempt: int = 0
    worker: str | None = None
    error: str | None = None
    message: str | None = None
    duration: float | None = None
    progress: float | None = None  # a ``progress`` event's fraction


class EventBatch(msgspec.Struct, omit_defaults=True):
    """Events are published in small batches so a busy worker sends one message per flush, not per job."""

    events: list[Event]
    v: int = 1


class RunningJob(msgspec.Struct, omit_defaults=True):
    id: str
    task: str
    started_at: float
    progress_at: float


class WorkerHeartbeat(msgspec.Struct, omit_defaults=True):
    id: str
    host: str
    pid: int
    queues: list[str]
    slots_total: int
    slots_used: int
    started_at: float
    heartbeat_at: float
    slots_peak: int = 0  # the most slots held at once since start (running jobs, by weight)
    tasks: list[str] = msgspec.field(default_factory=list)
    running: list[RunningJob] = msgspec.field(default_factory=list)
    processed: int = 0
    failed: int = 0
    state: str = "running"  # running | draining
    v: int = 1
    # Threads of interrupted sync jobs (timed out, cancelled) still running their function: they
    # hold a thread, not a slot, so no more sync jobs are fetched than threads are left.
    stuck_threads: int = 0


class TaskInfo(msgspec.Struct, omit_defaults=True):
    """An entry in the task catalog: a name some worker has registered."""

    name: str
    registered_at: float
    worker: str = ""
    v: int = 1
    queue: str = ""  # the queue a submit by name goes to when it names none (the task's declared queue)


class PendingWrite(msgspec.Struct, frozen=True, gc=False):
    """One job a writer is about to (re)publish: its id and the generation and attempt count
    the record will have when the write lands."""

    id: str
    gen: int
    attempt: int = 0


class PendingMarker(msgspec.Struct, omit_defaults=True):
    """Written (control bucket, ``pending.<id>``) before job records whose work message must
    follow, deleted once every message is out. One older than the repair bound means a writer
    died or failed in between: the leader's rescuer republishes what is missing (rescuer.py)."""

    at: float
    jobs: list[PendingWrite]
    by: str = ""  # submit | retry | run-now | rescue
    v: int = 1


class CancelRequest(msgspec.Struct, omit_defaults=True):
    job_id: str
    at: float
    reason: str = "cancelled"
    gen: int = 1  # the job generation it cancels; a later manual retry is not affected
    v: int = 1


class JobPage(msgspec.Struct):
    jobs: list[JobRecord]
    total: int  # with ``exact`` false, at least this many (a filtered count stops at a cap)
    offset: int
    limit: int
    next: str | None = None  # cursor of the page after this one (Client.list(cursor=...)); None: last page
    exact: bool = True


class Schedule(msgspec.Struct, omit_defaults=True):
    """A stored schedule (schedules KV bucket, key = name): when to fire and what job to make.

    Exactly one of ``cron`` (in ``tz``) and ``every`` (seconds from ``anchor``) is set.
    ``last_fire_time`` is written by the leader's enqueuer with compare-and-set after
    each fire, so a new leader resumes where the last one stopped.
    """

    name: str
    task: str
    created_at: float
    updated_at: float
    args: list[Any] | dict[str, Any] = msgspec.field(default_factory=list)
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    anchor: float = 0.0
    queue: str = "default"
    priority: str = "default"
    timeout: float | None = None
    max_attempts: int = 5
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    paused: bool = False
    paused_until: float | None = None  # paused until then; None with ``paused`` means until resumed
    overlap: Literal["allow", "skip", "replace"] = "allow"
    misfire: Literal["skip", "run-once", "catch-up"] = "skip"
    catch_up_max: int = 10
    last_fire_time: float | None = None
    last_job_id: str | None = None
    v: int = 1
    revision: int = 0  # the KV revision it was read at

    def is_paused(self, now: float) -> bool:
        if not self.paused:
            return False
        return self.paused_until is None or now < self.paused_until
