"""The task catalog: which tasks workers registered, and the queue each declares.

Read once per task and client, then cached here, so a submit does not look a task up each time.
"""

from __future__ import annotations

import difflib
import logging
from typing import Iterable

from .. import codec
from ..clock import Clock
from ..connection import Connection
from ..errors import ChronosError, UnknownTaskError
from ..models import TaskInfo
from ..store.kv import KVStore
from ..worker.registry import local_task

log = logging.getLogger("chronos.client")


class TaskCatalog:
    def __init__(self, conn: Connection, clock: Clock) -> None:
        self.conn = conn
        self.settings = conn.settings
        self.names = conn.names
        self.clock = clock
        self._known_tasks: set[str] = set()
        self._task_queues: dict[str, str] = {}

    async def register_tasks(self, names: Iterable[str], worker: str = "") -> None:
        kv = await self.conn.kv(self.names.tasks_bucket)
        now = self.clock.now()
        futs = [await self.conn.publisher.publish(f"$KV.{self.names.tasks_bucket}.{n}",
                                                  codec.encode(TaskInfo(name=n, registered_at=now, worker=worker)))
                for n in names if n not in self._known_tasks]
        for f in futs:
            await self.conn.publisher.wait(f)
        self._known_tasks.update(names)
        del kv

    async def tasks(self) -> list[str]:
        kv = await self.conn.kv(self.names.tasks_bucket)
        entries = await KVStore(kv, self.conn.publisher, self.names.tasks_bucket).entries()
        for e in entries:
            try:
                info = codec.decode(e.value or b"", TaskInfo)
            except ChronosError:
                continue
            if info.queue:
                self._task_queues[e.key] = info.queue
        keys = [e.key for e in entries]
        self._known_tasks.update(keys)
        return sorted(keys)

    async def task_queue(self, task: str) -> str:
        """The queue a submit of ``task`` goes to when it names none: the task's declared queue
        (a handle imported here, else the catalog its workers wrote), else jobs.default_queue."""
        d = local_task(task)
        if d is not None and d.queue:
            return d.queue
        if task not in self._task_queues and task not in self._known_tasks:
            try:
                await self.tasks()
            except Exception as exc:  # the catalog is a convenience: fall back to the default queue
                log.debug("task catalog unreadable: %s", exc)
            # Read once per task and client: a task the catalog lacks is not looked up per submit.
            self._task_queues.setdefault(task, "")
        return self._task_queues.get(task) or self.settings.jobs.default_queue

    async def check_task(self, task: str) -> None:
        """Refuse a task no worker registered (a typo would wait forever). Tasks registered in this
        process (imported task handles) count as known, so a submitter may start before its workers."""
        if not self.settings.jobs.check_task_names or task in self._known_tasks:
            return
        if local_task(task) is not None:
            return
        known = await self.tasks()
        if task not in known:
            close = difflib.get_close_matches(task, known, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
            elif not known:
                hint = " (no worker has registered any task yet)"
            else:
                hint = " (no worker has registered it)"
            raise UnknownTaskError(
                f"unknown task {task!r}{hint}; to submit before a worker registers it, import its "
                "@chronos.task handle here, or set jobs.check_task_names = false "
                "(CHRONOS_JOBS__CHECK_TASK_NAMES=false)")
