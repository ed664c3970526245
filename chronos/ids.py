"""Job identifiers: time-ordered (so listings sort by age) and safe as KV keys."""

from __future__ import annotations

import hashlib
import os
import random
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


# Uniqueness, not secrecy, is what ids need: a generator seeded from os.urandom, reseeded in a
# forked child (which would otherwise repeat its parent's next ids). os.urandom per id was a
# syscall per job in a bulk submit.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_job_id(now: float | None = None) -> str:
    """28 hex characters: 48-bit milliseconds then 64 random bits, so ids sort by creation."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{_random.getrandbits(64):016x}"


def derived_job_id(*parts: str) -> str:
    """A stable id for a job that must be the same wherever it is computed (cron fires)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()
    return "d" + _b32(int.from_bytes(digest, "big"), 25)


def key_digest(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
