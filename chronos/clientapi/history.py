"""Finished jobs from the schedulers' archive, asked over NATS."""

from __future__ import annotations

from ..connection import Connection
from ..models import JobRecord


class History:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def history(
        self,
        *,
        task: str | None = None,
        state: str | None = None,
        queue: str | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        limit: int = 100,
        timeout: float = 5.0,
        cursor: str | None = None,
    ) -> list[JobRecord]:
        """Finished jobs from the schedulers' archive, asked over NATS (works from any machine).
        ``cursor``: ``archive.history_cursor(previous page, limit)`` for the page after it."""
        from ..history import query_history  # loads aiosqlite: here, so the CLI starts without it

        return await query_history(self.conn, task=task, state=state, queue=queue, since=since, until=until,
                                   text=text, limit=limit, cursor=cursor, timeout=timeout)
