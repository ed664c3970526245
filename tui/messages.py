"""App-wide messages. Feeds post them; high-rate ones coalesce with ``can_replace``.

A pending message that a newer one of the same type can replace is dropped by
Textual's message pump, so a burst of 5,000 events per second reaches the UI as at
most one StatsChanged per tick (the Toolong pattern).
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from chronos.models import DLQEntry, Event

from .data import Cluster, Connection, JobDetail, JobsPage, ScheduleRow, Stats


class _Latest(Message):
    """Only the newest one matters: a queued older one is replaced."""

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


class StatsChanged(_Latest):
    def __init__(self, stats: Stats) -> None:
        super().__init__()
        self.stats = stats


class ClusterChanged(_Latest):
    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.cluster = cluster


class EventsTail(_Latest):
    """The whole tail buffer each time (newest last), so replacing one loses nothing shown."""

    def __init__(self, events: tuple[tuple[int, Event], ...]) -> None:
        super().__init__()
        self.events = events


class ConnectionChanged(_Latest):
    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection


# --- replies to a screen's request ---------------------------------------------------------------
class JobsLoaded(_Latest):
    def __init__(self, page: JobsPage) -> None:
        super().__init__()
        self.page = page


class JobLoaded(_Latest):
    def __init__(self, detail: JobDetail) -> None:
        super().__init__()
        self.detail = detail


class SchedulesLoaded(_Latest):
    def __init__(self, rows: list[ScheduleRow]) -> None:
        super().__init__()
        self.rows = rows


class DlqLoaded(_Latest):
    def __init__(self, entries: list[DLQEntry]) -> None:
        super().__init__()
        self.entries = entries


class QueuesLoaded(_Latest):
    """Each queue's pause state, backlog and limits (``Client.queues()``)."""

    def __init__(self, queues: list[Any]) -> None:
        super().__init__()
        self.queues = queues


class LimitsLoaded(_Latest):
    """Every limit in force (``Client.limits()``): holders, waiting, current rate."""

    def __init__(self, snapshot: Any) -> None:
        super().__init__()
        self.snapshot = snapshot


class LoadFailed(Message):
    def __init__(self, what: str, error: str) -> None:
        super().__init__()
        self.what = what
        self.error = error


# --- actions ----------------------------------------------------------------------------------------
class ActionDone(Message):
    def __init__(self, verb: str, target: str, detail: str = "", result: Any = None) -> None:
        super().__init__()
        self.verb = verb
        self.target = target
        self.detail = detail
        self.result = result


class ActionFailed(Message):
    def __init__(self, verb: str, target: str, error: str) -> None:
        super().__init__()
        self.verb = verb
        self.target = target
        self.error = error
