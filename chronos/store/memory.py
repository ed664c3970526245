"""In-memory Store for unit tests; same semantics as the KV store, revision is a global counter."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable

from ..errors import ConflictError
from .base import Entry, done_future, matches


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[str, Entry] = {}
        self._rev = 0
        self._watchers: list[tuple[str, asyncio.Queue[Entry]]] = []

    def _write(self, key: str, value: bytes | None) -> int:
        self._rev += 1
        entry = Entry(key, value, self._rev)
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = entry
        for prefix, q in self._watchers:
            if matches(prefix, key):
                q.put_nowait(entry)
        return self._rev

    async def get(self, key: str) -> Entry | None:
        return self._data.get(key)

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        if key in self._data:
            raise ConflictError(f"key {key} already exists")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        current = self._data.get(key)
        if current is None or current.revision != revision:
            raise ConflictError(f"key {key} is not at revision {revision}")
        return self._write(key, value)

    async def update_nowait(self, key: str, value: bytes, revision: int) -> Awaitable[int]:
        try:
            return done_future(await self.update(key, value, revision))
        except ConflictError as exc:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            return fut

    async def delete(self, key: str, revision: int | None = None) -> None:
        current = self._data.get(key)
        if revision is not None and (current is None or current.revision != revision):
            raise ConflictError(f"key {key} is not at revision {revision}")
        if current is not None:
            self._write(key, None)

    async def entries(self, pattern: str = ">") -> list[Entry]:
        return [e for k, e in sorted(self._data.items()) if matches(pattern, k)]

    async def watch(self, pattern: str = ">", *, include_existing: bool = False) -> AsyncIterator[Entry]:
        prefix = pattern
        q: asyncio.Queue[Entry] = asyncio.Queue()
        if include_existing:
            for e in await self.entries(prefix):
                q.put_nowait(e)
        item = (prefix, q)
        self._watchers.append(item)
        try:
            while True:
                yield await q.get()
        finally:
            self._watchers.remove(item)
