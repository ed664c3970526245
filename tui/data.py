"""Plain, immutable view data carried by the console's messages. No I/O, no Textual."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from chronos.console import ConsumerStat
from chronos.lease import LeaderInfo
from chronos.models import DLQEntry, Event, JobRecord, Schedule, WorkerHeartbeat
from chronos.states import JobState
from chronos.where import matches_all, parse_all

FAILED_STATES = ("retryable", "discarded")


@dataclass(frozen=True)
class QueueRow:
    """Counts for one queue and priority."""

    queue: str
    priority: str
    scheduled: int = 0
    available: int = 0
    running: int = 0
    retrying: int = 0
    completed_5m: int = 0
    completed_1h: int = 0
    failed_5m: int = 0
    failed_1h: int = 0


@dataclass(frozen=True)
class Failure:
    job_id: str
    task: str
    error: str
    at: float


@dataclass(frozen=True)
class Stats:
    """What the event tally knows at one moment."""

    at: float
    rows: tuple[QueueRow, ...] = ()
    completed_per_s: tuple[float, ...] = ()  # oldest first, one value per second
    failed_per_s: tuple[float, ...] = ()
    enqueued_per_s: tuple[float, ...] = ()
    events_seen: int = 0
    last_failure: Failure | None = None
    seeded: bool = False


@dataclass(frozen=True)
class Cluster:
    """What the poller read from the server at one moment."""

    at: float
    consumers: tuple[ConsumerStat, ...] = ()
    workers: tuple[WorkerHeartbeat, ...] = ()
    leader: LeaderInfo | None = None
    dlq: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Connection:
    connected: bool
    detail: str = ""
    since: float = 0.0
    attempts: int = 0


@dataclass(frozen=True)
class JobQuery:
    """A jobs-table request: filter, sort, page, source."""

    text: str = ""
    state: str | None = None  # a JobState value, or "failed" (retryable + discarded)
    queue: str | None = None
    task: str | None = None
    tag: str | None = None
    sort: str = "created"
    descending: bool = True
    offset: int = 0
    limit: int = 50
    archive: bool = False
    where: tuple[str, ...] = ()  # --where filters (chronos/where.py): args.x=1 annotations.team=billing

    def with_(self, **changes: Any) -> JobQuery:
        return replace(self, **changes)

    def describe(self) -> str:
        parts = [f"{k}:{v}" for k, v in (("state", self.state), ("queue", self.queue), ("task", self.task),
                                           ("tag", self.tag)) if v]
        parts += self.where
        if self.text:
            parts.append(self.text)
        return " ".join(parts)


FILTER_KEYS = ("state", "queue", "task", "tag")
_WHERE_TOKEN = re.compile(r"!?(args|annotations)[.\[]")


def parse_filter(text: str, base: JobQuery | None = None) -> JobQuery:
    """``state:failed queue:mail task:emails.send tag:x args.customer_id=42 free words`` -> JobQuery (page 1).

    A token that starts with ``args``/``annotations`` (or ``!`` and one) is a ``--where`` filter
    (no spaces inside); a malformed one raises ValidationError (one line for the status bar)."""
    q = base or JobQuery()
    found: dict[str, Any] = {k: None for k in FILTER_KEYS}
    words: list[str] = []
    where: list[str] = []
    for token in text.split():
        key, sep, value = token.partition(":")
        if _WHERE_TOKEN.match(token):
            where.append(token)
        elif sep and key in FILTER_KEYS and value:
            found[key] = value
        elif token in {s.value for s in JobState} or token == "failed":
            found["state"] = token
        else:
            words.append(token)
    found["where"] = tuple(w.text for w in parse_all(where))
    return q.with_(text=" ".join(words), offset=0, **found)


@dataclass(frozen=True)
class JobsPage:
    query: JobQuery
    jobs: tuple[JobRecord, ...]
    total: int
    error: str | None = None


@dataclass(frozen=True)
class JobDetail:
    record: JobRecord
    timeline: tuple[Event, ...] = ()
    dlq: DLQEntry | None = None


@dataclass(frozen=True)
class ScheduleRow:
    schedule: Schedule
    timing: str
    next_fire: float | None
    last_state: str | None


def job_matches(rec: JobRecord, q: JobQuery) -> bool:
    """The local part of a filter: the 'failed' alias and free text (id, task, error, tags)."""
    if q.state == "failed" and rec.state not in FAILED_STATES:
        return False
    if q.state not in (None, "failed") and rec.state != q.state:
        return False
    if q.queue and rec.spec.queue != q.queue:
        return False
    if q.task and rec.spec.task != q.task:
        return False
    if q.tag and q.tag not in rec.spec.tags:
        return False
    if q.where and not matches_all(parse_all(q.where), rec.spec.args, rec.spec.annotations):
        return False
    if q.text:
        hay = " ".join([rec.id, rec.spec.task, rec.error or "", *rec.spec.tags]).lower()
        return all(w.lower() in hay for w in q.text.split())
    return True


SORT_KEYS: dict[str, Any] = {
    "created": lambda r: (r.created_at, r.id),
    "updated": lambda r: (r.updated_at, r.id),
    "task": lambda r: (r.spec.task, r.created_at),
    "state": lambda r: (str(r.state), r.created_at),
    "queue": lambda r: (r.spec.queue, r.spec.priority, r.created_at),
    "attempt": lambda r: (r.attempt, r.created_at),
}
