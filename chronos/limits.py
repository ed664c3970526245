"""Rate and concurrency limits: declarations, parsing, the key a job is limited by, GCRA math.

Pure (no I/O, no nats-py): the worker's limiter (``chronos/worker/limiter.py``) and the limit
store (``chronos/limitstore.py``) do the round trips; this module decides.

Syntax, one for every place a limit is written (decorator, client, CLI)::

    rate "<count>/<unit>"    unit s, m or h: "50/s", "600/m", "1000/h"
    burst <n>                how many may start back to back after a quiet spell (default 1)
    concurrency <n>          at most n running at once, fleet-wide
    limit_key                where a per-key limit finds its key in the job's args:
                             "customer_id" (a keyword), "0" (a position),
                             "order.customer.id" (a path through dicts and lists),
                             or a function of the args returning a string

Scopes: a task's limits (declared on ``@chronos.task``) and a queue's limits (operator
settings in the limits bucket). With ``limit_key`` a task's limits apply per distinct key.

Rate limits are GCRA (the generic cell rate algorithm): one number per (scope, key), the
theoretical arrival time ``tat``. ``reserve`` hands each job a start time and moves ``tat`` on
by one interval, so a job refused now already owns its later turn and comes back once.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Callable, Literal

import msgspec

from .errors import ValidationError

UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_CONCURRENCY = 1000  # slot keys per (scope, key); a queue of more is better left unlimited
MAX_BURST = 10_000
MAX_KEY = 256  # characters of a key value shown in listings (the store key is a digest)
# Turns are reserved at most this far ahead (beyond the burst): a backlog past it waits without a
# turn and asks again later. It is what lets a reader tell a planted far-future state from a real one.
HORIZON = 3600.0
# Clock skew between hosts tolerated by the sanity checks on stored limit state (seconds).
SKEW = 30.0
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")

Scope = Literal["task", "queue"]
LimitKey = str | Callable[[Any], Any] | None


class LimitError(ValidationError):
    """A malformed limit or a job whose args do not have its limit key (one line, names the field)."""


class Rate(msgspec.Struct, frozen=True):
    """``count`` per ``per`` seconds, ``burst`` back to back."""

    count: int
    per: float
    burst: int = 1

    @property
    def interval(self) -> float:
        return self.per / self.count

    @property
    def per_second(self) -> float:
        return self.count / self.per

    def text(self) -> str:
        unit = next(u for u, s in UNITS.items() if s == self.per)
        return f"{self.count}/{unit}" + (f" burst {self.burst}" if self.burst != 1 else "")


def parse_rate(value: Any, field: str = "rate_limit", burst: Any = None) -> Rate:
    """``"50/s"`` -> Rate(50, 1.0); ``burst`` a whole number >= 1. LimitError names ``field``."""
    if isinstance(value, Rate):
        rate = value
    else:
        m = _RATE.match(value) if isinstance(value, str) else None
        if m is None:
            raise LimitError(f"{field}: {value!r} is not a rate; write <count>/<s|m|h>, e.g. '50/s', '600/m'")
        count = int(m.group(1))
        if count < 1:
            raise LimitError(f"{field}: {value!r}: the count must be at least 1")
        rate = Rate(count, UNITS[m.group(2)])
    if burst is not None:
        if not isinstance(burst, int) or isinstance(burst, bool) or not 1 <= burst <= MAX_BURST:
            raise LimitError(f"burst: must be a whole number from 1 to {MAX_BURST}, not {burst!r}")
        rate = Rate(rate.count, rate.per, burst)
    return rate


def check_concurrency(value: Any, field: str = "concurrency") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CONCURRENCY:
        raise LimitError(f"{field}: must be a whole number from 1 to {MAX_CONCURRENCY}, not {value!r}")
    return value


def check_limit_key(value: Any, field: str = "limit_key") -> LimitKey:
    if value is None or callable(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value and all(p for p in value.split(".")) and len(value) <= 256:
        return value
    raise LimitError(f"{field}: {value!r} is not a key path ('customer_id', '0', 'order.customer.id') "
                     "nor a function of the args")


class TaskLimits(msgspec.Struct, frozen=True):
    """What ``@chronos.task(rate_limit=..., burst=..., concurrency=..., limit_key=...)`` declares."""

    rate: Rate | None = None
    concurrency: int | None = None
    key: Any = None  # LimitKey: a path or a function of the args

    @property
    def any(self) -> bool:
        return self.rate is not None or self.concurrency is not None


def task_limits(rate_limit: Any = None, burst: Any = None, concurrency: Any = None,
                limit_key: Any = None) -> TaskLimits | None:
    """The decorator's limit options checked (LimitError names the field); None when there are none."""
    rate = parse_rate(rate_limit, "rate_limit", burst) if rate_limit is not None else None
    if rate_limit is None and burst is not None:
        raise LimitError("burst: given without a rate_limit")
    conc = check_concurrency(concurrency) if concurrency is not None else None
    key = check_limit_key(limit_key)
    if key is not None and rate is None and conc is None:
        raise LimitError("limit_key: given without a rate_limit or a concurrency")
    if rate is None and conc is None:
        return None
    return TaskLimits(rate, conc, key)


def key_of(args: Any, key: LimitKey) -> str | None:
    """The limit key of a job with these args (None without a key). LimitError if they lack it."""
    if key is None:
        return None
    if callable(key):
        try:
            value = key(args)
        except Exception as exc:  # the user's function: its failure is the job's bad input
            raise LimitError(f"limit_key: the key function failed on these args: {type(exc).__name__}: {exc}") \
                from None
    else:
        value = args
        for part in key.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif not isinstance(value, (dict, list, tuple)) and hasattr(value, part):
                value = getattr(value, part)
            else:
                raise LimitError(f"limit_key: the job's args have no {key!r} (no {part!r} in {_short(value)})")
    if value is None or isinstance(value, (dict, list)):
        raise LimitError(f"limit_key: {key if isinstance(key, str) else 'the key function'} gave "
                         f"{_short(value)}, not a string or number")
    return str(value)[:MAX_KEY]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def digest(*parts: str) -> str:
    """A KV-safe token for (scope, name, key): key values are anyone's strings."""
    h = hashlib.blake2b("\x00".join(parts).encode(), digest_size=10)
    return h.hexdigest()


# --- GCRA -------------------------------------------------------------------------------
def reserve(tat: float, now: float, rate: Rate) -> tuple[float, float]:
    """(start time for the next job, the new tat). The start is ``now`` while within the burst;
    else the first moment the rate allows, reserved for this job."""
    tau = rate.interval * (rate.burst - 1)
    start = max(now, tat - tau)
    return start, max(tat, now) + rate.interval


def horizon(rate: Rate) -> float:
    """How far ahead of now a turn may be reserved under ``rate``: the burst plus an hour (or one
    interval, for rates slower than one an hour)."""
    return rate.interval * (rate.burst - 1) + max(HORIZON, rate.interval)


def tat_is_sane(tat: float, now: float, rate: Rate) -> bool:
    """Whether a stored GCRA state could have been written by ``reserve`` under ``rate``: never more
    than the horizon and one interval ahead (plus clock skew). A state further ahead was planted
    (or written under a slower limit since changed) and would starve the limit: it is reset."""
    return tat - now <= horizon(rate) + rate.interval + SKEW


def waiting(tat: float, now: float, rate: Rate) -> int:
    """Jobs holding a reserved start still ahead (an estimate of how many wait)."""
    tau = rate.interval * (rate.burst - 1)
    ahead = tat - tau - now
    return max(0, math.ceil(ahead / rate.interval)) if ahead > 0 else 0


# --- stored and reported shapes (the limits bucket; snapshot for consoles) -----------------
class QueueLimit(msgspec.Struct, omit_defaults=True):
    """An operator's limits on one queue (key ``queue.<queue>`` of the limits bucket)."""

    queue: str
    rate: str | None = None  # "50/s"
    burst: int = 1
    concurrency: int | None = None
    updated_at: float = 0.0
    updated_by: str = ""
    v: int = 1

    def parsed_rate(self) -> Rate | None:
        return parse_rate(self.rate, "rate", self.burst) if self.rate else None


class RateState(msgspec.Struct, omit_defaults=True):
    """One rate limit's GCRA state (key ``rate.<digest>``)."""

    tat: float
    scope: str
    name: str  # the task or queue
    key: str | None = None
    limit: str = ""  # the rate as declared, for listings
    burst: int = 1
    # admissions per whole second of start time, the last few seconds: the current rate
    recent: list[tuple[int, int]] = msgspec.field(default_factory=list)
    v: int = 1


class SlotHolder(msgspec.Struct, omit_defaults=True):
    """Who holds one concurrency slot (key ``slot.<digest>.<n>``, with a per-message TTL)."""

    job_id: str
    worker: str
    since: float
    scope: str
    name: str
    key: str | None = None
    limit: int = 1
    lease: float = 0.0
    gen: int = 0  # the job's generation
    renewed: float = 0.0  # the holder's clock at its last renewal (listings only)
    # Handed over by the job that released it to a waiting job (job_id), which has not taken it
    # yet: only that job may take it; if it never comes, the short TTL frees the slot.
    reserved: bool = False
    v: int = 1


def holder_is_sane(h: SlotHolder, now: float, own_lease: float) -> bool:
    """Whether a held slot could still be alive under the rules every worker follows: its last write
    (``renewed`` or ``since``, the writer's clock) plus its lease is not long past, nor in the future.
    The lease trusted is at most ``trust_lease(own_lease)``: a stolen credential that writes a slot
    with a day-long TTL holds it only as long as it keeps writing."""
    stamp = h.renewed or h.since
    lease = min(h.lease, trust_lease(own_lease)) if h.lease > 0 else trust_lease(own_lease)
    return now - SKEW - lease <= stamp <= now + SKEW


def trust_lease(own_lease: float) -> float:
    """The longest lease a reader honours: four times its own (fleets keep one setting), at least 60 s."""
    return max(4.0 * own_lease, 60.0)


class Waiter(msgspec.Struct, omit_defaults=True):
    """A job waiting for a concurrency slot (key ``wait.<digest>.<job id>``, expires by TTL)."""

    job_id: str
    scope: str
    name: str
    key: str | None = None
    since: float = 0.0
    v: int = 1


class Holder(msgspec.Struct, omit_defaults=True):
    """A held concurrency slot, as a snapshot reports it; ``expires`` is server time."""

    job_id: str
    worker: str
    since: float
    expires: float
    slot: int


class LimitView(msgspec.Struct, omit_defaults=True):
    """One limit in force somewhere, with its live state."""

    kind: Literal["rate", "concurrency"]
    scope: str  # "task" | "queue"
    name: str  # task or queue name
    key: str | None = None  # the limit key's value, for per-key limits
    limit: str = ""  # "50/s" or "1"
    holders: list[Holder] = msgspec.field(default_factory=list)  # concurrency: who runs now
    waiting: int = 0  # concurrency: jobs seen waiting; rate: jobs holding a later turn
    rate_now: float | None = None  # rate: starts per second over the last few seconds
    next_free_in: float | None = None  # rate: seconds until the next unreserved turn


class LimitsSnapshot(msgspec.Struct):
    """The limits with state in the limits bucket (the ``top`` most waited on), and every queue's
    operator settings. ``omitted`` limits with state were left out of ``limits`` (fewer waiting);
    ``truncated``: the bucket held more keys than a snapshot reads, so counts are partial."""

    at: float
    queues: list[QueueLimit]
    limits: list[LimitView]
    omitted: int = 0
    truncated: bool = False


def bump_recent(recent: list[tuple[int, int]], start: float, keep: int = 8) -> list[tuple[int, int]]:
    sec = int(start)
    out = [(s, n) for s, n in recent if s > sec - keep]
    for i, (s, n) in enumerate(out):
        if s == sec:
            out[i] = (s, n + 1)
            break
    else:
        out.append((sec, 1))
    out.sort()
    return out


def rate_now(recent: list[tuple[int, int]], now: float, window: int = 5) -> float:
    """Starts per second over the ``window`` whole seconds before ``now``."""
    sec = int(now)
    return sum(n for s, n in recent if sec - window <= s < sec) / window
