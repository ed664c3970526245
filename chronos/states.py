"""The job state machine: the only place a job's state is decided.

::

    scheduled ──► available ──► running ──► completed
        │             │  ▲         │ │ ▲
        │             │  │         │ └─┘ (redelivered after a lost worker)
        │             │  └─────────┤ (shutdown returns it)
        │             │            ▼
        │             │        retryable ──► running
        ▼             ▼            │
    cancelled ◄───────┴────────────┤
        │                          ▼
        └──► available ◄──── discarded (in the DLQ)   (manual retry / replay)

Every writer calls :func:`transition` and persists the result with a
compare-and-set on the record's KV revision.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

from .errors import IllegalTransitionError


class JobState(StrEnum):
    SCHEDULED = "scheduled"  # waiting for run_at; the stager promotes it
    AVAILABLE = "available"  # in the work-queue stream, waiting for a worker
    RUNNING = "running"  # a worker holds it
    RETRYABLE = "retryable"  # failed, will run again after its backoff
    COMPLETED = "completed"  # finished successfully (terminal)
    CANCELLED = "cancelled"  # stopped by a person or by the task (terminal)
    DISCARDED = "discarded"  # attempts spent or unrunnable; in the DLQ (terminal)


S = JobState

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.SCHEDULED: frozenset({S.AVAILABLE, S.CANCELLED}),
    S.AVAILABLE: frozenset({S.RUNNING, S.CANCELLED, S.DISCARDED}),
    S.RUNNING: frozenset({S.COMPLETED, S.RETRYABLE, S.CANCELLED, S.DISCARDED, S.AVAILABLE, S.RUNNING}),
    S.RETRYABLE: frozenset({S.RUNNING, S.AVAILABLE, S.CANCELLED, S.DISCARDED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset({S.AVAILABLE}),
    S.DISCARDED: frozenset({S.AVAILABLE}),
}

TERMINAL: frozenset[JobState] = frozenset({S.COMPLETED, S.CANCELLED, S.DISCARDED})
PENDING: frozenset[JobState] = frozenset({S.SCHEDULED, S.AVAILABLE, S.RETRYABLE})
RETRIABLE_BY_HAND: frozenset[JobState] = frozenset({S.RETRYABLE, S.CANCELLED, S.DISCARDED})


def can_transition(src: JobState, dst: JobState) -> bool:
    return dst in TRANSITIONS[src]


def is_terminal(state: JobState) -> bool:
    return state in TERMINAL


def transition(record: Any, to: JobState, now: float, **changes: Any) -> Any:
    """Return a copy of ``record`` in state ``to`` with ``changes`` applied.

    Raises IllegalTransitionError when the table forbids the move. ``record``
    is a msgspec Struct with ``state`` and ``updated_at`` fields.
    """
    src = record.state if type(record.state) is JobState else JobState(record.state)
    if to not in TRANSITIONS[src]:
        raise IllegalTransitionError(f"job {getattr(record, 'id', '?')}: cannot go from {src} to {to}")
    finished = now if to in TERMINAL else None
    return msgspec.structs.replace(record, state=to, updated_at=now, finished_at=finished, **changes)


class WorkflowState(StrEnum):
    """A workflow's state (its nodes are jobs, with the states above)::

        running ──► completed | failed | cancelled      (failed/cancelled ──► running: retry)
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


W = WorkflowState

WORKFLOW_TRANSITIONS: dict[WorkflowState, frozenset[WorkflowState]] = {
    W.PENDING: frozenset({W.RUNNING, W.CANCELLED}),
    W.RUNNING: frozenset({W.COMPLETED, W.FAILED, W.CANCELLED}),
    W.COMPLETED: frozenset(),
    W.FAILED: frozenset({W.RUNNING, W.CANCELLED}),
    W.CANCELLED: frozenset({W.RUNNING}),
}
WORKFLOW_TERMINAL: frozenset[WorkflowState] = frozenset({W.COMPLETED, W.FAILED, W.CANCELLED})


def workflow_transition(record: Any, to: WorkflowState, now: float, **changes: Any) -> Any:
    """``transition`` for a workflow record (``state``, ``updated_at``, ``finished_at``)."""
    src = WorkflowState(record.state)
    if to not in WORKFLOW_TRANSITIONS[src]:
        raise IllegalTransitionError(f"workflow {getattr(record, 'id', '?')}: cannot go from {src} to {to}")
    finished = now if to in WORKFLOW_TERMINAL else None
    return msgspec.structs.replace(record, state=to, updated_at=now, finished_at=finished, **changes)
