"""The Store protocol: get, put, compare-and-set on revision, list, watch.

Values are bytes (codec.py owns encoding). A revision is a per-store counter that
changes on every write of a key; update() succeeds only at the revision read.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Protocol

import msgspec


class Entry(msgspec.Struct):
    key: str
    value: bytes | None  # None for a delete
    revision: int


class Store(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, value: bytes) -> int: ...

    async def create(self, key: str, value: bytes) -> int:
        """Write only if the key does not exist; ConflictError otherwise."""

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Compare-and-set: write only if the key is at ``revision``; ConflictError otherwise."""

    async def update_nowait(self, key: str, value: bytes, revision: int) -> Awaitable[int]:
        """Send a compare-and-set now and return an awaitable for its new revision (pipelining)."""

    async def delete(self, key: str, revision: int | None = None) -> None: ...

    async def entries(self, pattern: str = ">") -> list[Entry]:
        """Current entries (no deletes) whose keys match ``pattern``, in key order."""

    def watch(self, pattern: str = ">", *, include_existing: bool = False) -> AsyncIterator[Entry]:
        """Changes to keys matching ``pattern``: a key, or NATS wildcards (``*`` one token, ``>`` the rest)."""


def done_future(value: int) -> asyncio.Future[int]:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


def matches(pattern: str, key: str) -> bool:
    """NATS subject matching over dot-separated key tokens."""
    p_tokens, k_tokens = pattern.split("."), key.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(k_tokens) > i
        if i >= len(k_tokens) or (p != "*" and p != k_tokens[i]):
            return False
    return len(p_tokens) == len(k_tokens)
