"""Tally: turns job records and lifecycle events into per-queue counts and per-second rates.

Pure and synchronous (no I/O, no Textual), so the feed can call it for every event
and tests can drive it by hand. Two ways to know the counts:

* from a scheduler's job index (``set_counts``, polled by the feed every second):
  per (queue, priority, state) counts and per-10 s finish buckets, without reading
  a record, so a million jobs cost what a thousand do; events still drive the
  per-second rates and the last failure;
* without an index (no scheduler running): seeded from one scan of the job
  records, then kept current from events. Events are a view and may arrive out of
  order between publishers, so a job that already finished ignores later
  non-terminal events.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable

from chronos.models import Event, JobRecord
from chronos.console import Counts

from .data import Failure, QueueRow, Stats

LIVE_STATES = ("scheduled", "available", "running", "retryable")
TERMINAL_STATES = ("completed", "cancelled", "discarded")
_BUCKET = 10.0  # seconds per bucket of the 5-minute and 1-hour windows
_RATE_SECONDS = 60  # length of the per-second series


class Tally:
    def __init__(self, finished_memory: int = 65536) -> None:
        self._live: dict[str, tuple[str, str, str, float]] = {}  # id -> (state, queue, priority, at)
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._finished: OrderedDict[str, float] = OrderedDict()  # recently finished ids (bounded)
        self._finished_memory = finished_memory
        # (queue, priority, "completed"|"failed") -> {bucket start: count}
        self._windows: dict[tuple[str, str, str], dict[float, int]] = {}
        self._rates: dict[int, list[int]] = {}  # second -> [enqueued, completed, failed]
        self._keys: set[tuple[str, str]] = set()
        self.events_seen = 0
        self.last_failure: Failure | None = None
        self.seeded = False
        self._indexed: Counts | None = None  # the job index's latest counts, when a scheduler answers

    def set_counts(self, counts: Counts | None) -> None:
        """Counts from the job index replace the ones kept from records and events (None: back to those)."""
        self._indexed = counts
        if counts is not None:
            self.seeded = True

    # --- input ---------------------------------------------------------------------------------
    def seed(self, records: Iterable[JobRecord], now: float, *, fresh: bool = False) -> None:
        """Merge a scan of the records: at connect (events that arrived while scanning are
        kept, and whichever is newer wins), or with ``fresh`` start over (after a reconnect)."""
        if fresh:
            self._live.clear()
            self._counts.clear()
            self._windows.clear()
            self._finished.clear()
        for rec in records:
            state = str(rec.state)
            at = (rec.finished_at or rec.updated_at) if state in TERMINAL_STATES else rec.updated_at
            self._apply(rec.id, state, (rec.spec.queue, rec.spec.priority), at, rec.spec.task, rec.error,
                        live=False)
        self._expire(now)
        self.seeded = True

    def add(self, ev: Event) -> None:
        self.events_seen += 1
        if not ev.job_id or (ev.kind not in LIVE_STATES and ev.kind not in TERMINAL_STATES):
            return
        self._apply(ev.job_id, ev.kind, (ev.queue or "?", ev.priority or "default"), ev.at, ev.task or "",
                    ev.error, live=True)

    def _apply(self, job_id: str, kind: str, key: tuple[str, str], at: float, task: str, error: str | None,
               *, live: bool) -> None:
        """One fact about a job, from an event (``live``) or a record; the newer fact wins."""
        self._keys.add(key)
        finished_at = self._finished.get(job_id)
        if finished_at is not None and at <= finished_at:
            return  # a late or repeated fact about a job that already finished
        prev = self._live.pop(job_id, None)
        if prev is not None:
            if at < prev[3]:  # older than what we hold: put it back
                self._live[job_id] = prev
                return
            self._counts[(prev[1], prev[2], prev[0])] -= 1
        elif live and kind in ("available", "scheduled"):
            self._rate(at)[0] += 1
        if kind in LIVE_STATES:
            self._live[job_id] = (kind, key[0], key[1], at)
            self._counts[(key[0], key[1], kind)] += 1
            if kind == "retryable":
                if live:
                    self._rate(at)[2] += 1
                self._failure(job_id, task, error, at)
            return
        self._remember_finished(job_id, at)
        self._count_finished(key, kind, at, per_second=live)
        if kind == "discarded":
            self._failure(job_id, task, error, at)

    def _failure(self, job_id: str, task: str, error: str | None, at: float) -> None:
        if self.last_failure is None or at >= self.last_failure.at:
            self.last_failure = Failure(job_id, task, error or "", at)

    def _remember_finished(self, job_id: str, at: float) -> None:
        self._finished[job_id] = at
        if len(self._finished) > self._finished_memory:
            self._finished.popitem(last=False)

    def _count_finished(self, key: tuple[str, str], state: str, at: float, *, per_second: bool) -> None:
        kind = "completed" if state == "completed" else "failed" if state == "discarded" else None
        if kind is None:
            return
        buckets = self._windows.setdefault((key[0], key[1], kind), {})
        start = at - at % _BUCKET
        buckets[start] = buckets.get(start, 0) + 1
        if per_second:
            self._rate(at)[1 if kind == "completed" else 2] += 1

    def _rate(self, at: float) -> list[int]:
        sec = int(at)
        slot = self._rates.get(sec)
        if slot is None:
            slot = self._rates[sec] = [0, 0, 0]
        return slot

    # --- output --------------------------------------------------------------------------------
    def snapshot(self, now: float) -> Stats:
        self._expire(now)
        rows = []
        counts, windows = self._counts, self._windows
        keys = self._keys
        if self._indexed is not None:
            counts, windows, keys = self._from_index(self._indexed)

        def win(key: tuple[str, str, str], seconds: float) -> int:
            return sum(c for start, c in windows.get(key, {}).items() if now - start < seconds + _BUCKET)

        for q, p in sorted(keys):
            rows.append(QueueRow(
                queue=q, priority=p, scheduled=counts.get((q, p, "scheduled"), 0),
                available=counts.get((q, p, "available"), 0), running=counts.get((q, p, "running"), 0),
                retrying=counts.get((q, p, "retryable"), 0),
                completed_5m=win((q, p, "completed"), 300), completed_1h=win((q, p, "completed"), 3600),
                failed_5m=win((q, p, "failed"), 300), failed_1h=win((q, p, "failed"), 3600),
            ))
        last = int(now) - 1  # the current second is still filling
        seconds = range(last - _RATE_SECONDS + 1, last + 1)
        series = [self._rates.get(s, (0, 0, 0)) for s in seconds]
        return Stats(
            at=now, rows=tuple(rows),
            enqueued_per_s=tuple(float(s[0]) for s in series),
            completed_per_s=tuple(float(s[1]) for s in series),
            failed_per_s=tuple(float(s[2]) for s in series),
            events_seen=self.events_seen, last_failure=self.last_failure, seeded=self.seeded,
        )

    def _from_index(self, c: Counts) -> tuple[Counter[tuple[str, str, str]],
                                               dict[tuple[str, str, str], dict[float, int]], set[tuple[str, str]]]:
        counts: Counter[tuple[str, str, str]] = Counter()
        keys = set(self._keys)
        for q, p, state, n in c.rows:
            keys.add((q, p))
            if state in LIVE_STATES:
                counts[(q, p, state)] += n
        windows: dict[tuple[str, str, str], dict[float, int]] = {}
        for q, p, state, start, n in c.finished:
            kind = "completed" if state == "completed" else "failed" if state == "discarded" else None
            if kind is None:
                continue
            keys.add((q, p))
            bucket = windows.setdefault((q, p, kind), {})
            bucket[start] = bucket.get(start, 0) + n
        return counts, windows, keys

    def _expire(self, now: float) -> None:
        oldest_sec = int(now) - _RATE_SECONDS - 5
        for sec in [s for s in self._rates if s < oldest_sec]:
            del self._rates[sec]
        horizon = now - 3600 - 2 * _BUCKET
        for buckets in self._windows.values():
            for start in [s for s in buckets if s < horizon]:
                del buckets[start]


def ring(maxlen: int) -> deque[tuple[int, Event]]:
    """The event tail's buffer: (sequence, event) pairs, newest last."""
    return deque(maxlen=maxlen)
