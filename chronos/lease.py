"""The lease's stored value and the leader report: plain types, no I/O.

They live apart from ``leadership.py`` (which talks to NATS) so that ``codec.py`` can decode a
``LeaseHolder`` and a console can show a ``LeaderInfo`` without importing nats-py.
``leadership`` re-exports both names.
"""

from __future__ import annotations

import msgspec


class LeaseHolder(msgspec.Struct, frozen=True, omit_defaults=True):
    """The value stored under the lease key."""

    node: str
    host: str
    pid: int
    acquired_at: float  # the holder's wall clock; for display, never compared across hosts
    term: int = 0  # revision of the create that began the term; 0 in that first entry itself
    v: int = 1


class LeaderInfo(msgspec.Struct, frozen=True):
    """Who holds the lease, for a banner or ``chronos admin leader``."""

    node: str
    host: str
    pid: int
    acquired_at: float
    term: int
    revision: int
    ttl: float | None = None
    # Approximate: server write time + TTL - this host's wall clock. Display only.
    expires_in: float | None = None
