"""Client: the front door. Submit, get, list, cancel, retry, watch, DLQ, workers.

The CLI and the TUI use only this. Every state change goes through
``states.transition`` and is persisted with compare-and-set (via JobOps).

Submit writes the record first (create-if-absent), then publishes the work
message carrying the record's revision, so the worker's first write is a
compare-and-set with no read. Bulk submit pipelines both steps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from . import codec
from .audit import audited
from .clock import SYSTEM_CLOCK, Clock
from .config import Settings, load_settings
from .connection import Connection, connect, ensure_queue_consumers, ensure_topology
from .errors import (
    ChronosError,
    ConflictError,
    JobNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    UnknownTaskError,
    ValidationError,
)
from .events import EventPublisher, decode_events
from .ids import key_digest, new_job_id
from .jobs import JobOps, job_event, new_record
from .models import (
    Backoff,
    CancelRequest,
    DLQEntry,
    Event,
    JobPage,
    JobRecord,
    JobSpec,
    PendingWrite,
    TaskInfo,
    WorkerHeartbeat,
)
from .publisher import PubAck
from .states import PENDING, RETRIABLE_BY_HAND, TERMINAL, JobState
from .store.kv import KVStore
from .subjects import PRIORITIES, is_valid_token

log = logging.getLogger(__name__)

_UNSET: Any = object()

_MARK_CHUNK = 1024  # jobs per pending marker in a bulk submit (about 40 KB of ids)
_RECORD_SLACK = 16 * 1024  # as connection._ENVELOPE_SLACK: room around the args in a message
MAX_TASK_NAME = 256
MAX_UNIQUE_KEY = 1024  # bytes; it travels in a Nats-Msg-Id header
MAX_METADATA = 16 * 1024  # tags and annotations together, encoded
MAX_TIMEOUT = 366 * 86400.0
LATEST_RUN_AT = 253402128000.0  # 9999-12-30T00:00:00Z: dates show in any local zone up to here


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _printable(text: str) -> bool:
    """No control characters (CR, LF, NUL, ...), no lone surrogates: safe in a NATS header."""
    return not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text) and _utf8(text)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_GOOD_NAMES: set[tuple[str, str, str]] = set()  # (task, queue, priority) already found valid
_DEFAULT_BACKOFF = Backoff()


def _unmarked(fut: "asyncio.Future[PubAck]") -> None:
    """A pending marker's delete settled; a failure leaves the marker for the leader to look at."""
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("deleting a pending marker: %s", fut.exception())


def check_spec(spec: JobSpec) -> None:
    """Everything about one spec that can be checked without the server; ValidationError names
    the field. Run before any write, so a refused job leaves nothing behind."""
    if (spec.run_at is None and spec.timeout is None and spec.unique_key is None and not spec.tags
            and not spec.annotations and spec.backoff == _DEFAULT_BACKOFF and type(spec.max_attempts) is int
            and spec.max_attempts >= 1 and type(spec.args) in (list, dict)
            and (spec.task, spec.queue, spec.priority) in _GOOD_NAMES):
        return  # the bulk-submit case: a few field reads instead of the checks below
    _check_spec(spec)
    if len(_GOOD_NAMES) < 10_000:
        _GOOD_NAMES.add((spec.task, spec.queue, spec.priority))


def _check_spec(spec: JobSpec) -> None:
    if not isinstance(spec.task, str) or not spec.task.strip():
        raise ValidationError("task: must be a non-empty name")
    if len(spec.task) > MAX_TASK_NAME or not _printable(spec.task):
        raise ValidationError(f"task: must be at most {MAX_TASK_NAME} printable characters")
    if not isinstance(spec.args, (list, dict)):
        raise ValidationError("args: must be a list (positional) or an object (keyword arguments)")
    if not isinstance(spec.queue, str) or not is_valid_token(spec.queue):
        raise ValidationError(f"queue: {spec.queue!r} is not a valid name (1-64 letters, digits, '_' or '-')")
    if spec.priority not in PRIORITIES:
        raise ValidationError(f"priority: {spec.priority!r} is not one of {', '.join(PRIORITIES)}")
    if spec.run_at is not None:
        if not _is_number(spec.run_at) or not math.isfinite(spec.run_at):
            raise ValidationError("run_at: must be a finite time (epoch seconds)")
        if not 0 <= spec.run_at <= LATEST_RUN_AT:
            raise ValidationError("run_at: must be between 1970 and the end of year 9999")
    if spec.timeout is not None:
        if not _is_number(spec.timeout) or not math.isfinite(spec.timeout) or spec.timeout <= 0:
            raise ValidationError("timeout: must be a positive, finite number of seconds")
        if spec.timeout > MAX_TIMEOUT:
            raise ValidationError(f"timeout: must be at most {MAX_TIMEOUT:g} seconds (a year)")
    if not isinstance(spec.max_attempts, int) or isinstance(spec.max_attempts, bool) or spec.max_attempts < 1:
        raise ValidationError("max_attempts: must be a whole number of at least 1")
    b = spec.backoff
    if not all(_is_number(x) and math.isfinite(x) and x >= 0 for x in (b.base, b.cap)):
        raise ValidationError("backoff: base and cap must be finite and not negative")
    key = spec.unique_key
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ValidationError("unique_key: must be a non-empty string")
        if not _printable(key):
            raise ValidationError("unique_key: must be printable UTF-8 text (no CR, LF or other control characters)")
        if len(key.encode()) > MAX_UNIQUE_KEY:
            raise ValidationError(f"unique_key: must be at most {MAX_UNIQUE_KEY} bytes")
    for t in spec.tags:
        if not isinstance(t, str) or not t or not _utf8(t):
            raise ValidationError("tags: every tag must be a non-empty UTF-8 string")
    for k, v in spec.annotations.items():
        if not isinstance(k, str) or not isinstance(v, str) or not _utf8(k) or not _utf8(v):
            raise ValidationError("annotations: keys and values must be UTF-8 strings")
    if spec.tags or spec.annotations:
        size = len(codec.encode([spec.tags, spec.annotations]))
        if size > MAX_METADATA:
            raise PayloadTooLargeError(f"tags/annotations: {size} bytes is over the {MAX_METADATA} byte limit")


class Client:
    def __init__(self, conn: Connection, clock: Clock = SYSTEM_CLOCK) -> None:
        self.conn = conn
        self.settings: Settings = conn.settings
        self.names = conn.names
        self.clock = clock
        self.ops = JobOps(conn, clock)
        self.events = EventPublisher(conn.nc, conn.names)
        self._known_tasks: set[str] = set()
        self._task_queues: dict[str, str] = {}
        self._known_queues: set[str] = set(conn.settings.worker.queues)

    # --- lifecycle -------------------------------------------------------------
    @classmethod
    async def connect(
        cls, settings: Settings | None = None, *, ensure: bool = True, clock: Clock = SYSTEM_CLOCK
    ) -> "Client":
        settings = settings or load_settings()
        conn = await connect(settings, name="chronos-client")
        try:
            if ensure:
                await ensure_topology(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, clock)

    async def close(self) -> None:
        await self.events.close()
        await self.conn.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- task catalog ------------------------------------------------------------
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
        from .worker.registry import local_task

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

    async def _check_task(self, task: str) -> None:
        """Refuse a task no worker registered (a typo would wait forever). Tasks registered in this
        process (imported task handles) count as known, so a submitter may start before its workers."""
        if not self.settings.jobs.check_task_names or task in self._known_tasks:
            return
        from .worker.registry import local_task

        if local_task(task) is not None:
            return
        known = await self.tasks()
        if task not in known:
            import difflib

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

    # --- submit ------------------------------------------------------------------
    def build_spec(
        self,
        task: str,
        args: Any = None,
        *,
        queue: str | None = None,
        priority: str | None = None,
        run_at: float | None = None,
        delay: float | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        unique_key: str | None = None,
        tags: Sequence[str] = (),
        annotations: dict[str, str] | None = None,
    ) -> JobSpec:
        """Validate submit arguments into a JobSpec; every problem names its field."""
        js = self.settings.jobs
        if not isinstance(task, str) or not task.strip():
            raise ValidationError("task: must be a non-empty name")
        if args is None:
            args = []
        if isinstance(args, tuple):
            args = list(args)
        if not isinstance(args, (list, dict)):
            raise ValidationError("args: must be a list (positional) or an object (keyword arguments)")
        codec.check_json_compatible(args, "args")
        queue = js.default_queue if queue is None else queue
        if not isinstance(queue, str) or not is_valid_token(queue):
            raise ValidationError(
                f"queue: {queue!r} is not a valid name (1-64 letters, digits, '_' or '-')"
            )
        priority = js.default_priority if priority is None else priority
        if priority not in PRIORITIES:
            raise ValidationError(f"priority: {priority!r} is not one of {', '.join(PRIORITIES)}")
        max_attempts = js.default_max_attempts if max_attempts is None else max_attempts
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise ValidationError("max_attempts: must be a whole number of at least 1")
        if max_attempts >= self.settings.worker.max_deliver:
            raise ValidationError(
                f"max_attempts: must be below worker.max_deliver ({self.settings.worker.max_deliver})"
            )
        if delay is not None:
            if run_at is not None:
                raise ValidationError("delay: give either run_at or delay, not both")
            if not _is_number(delay) or not math.isfinite(delay) or delay < 0:
                raise ValidationError("delay: must be a finite number of seconds, not negative")
            run_at = self.clock.now() + delay
        if not isinstance(tags, (list, tuple)):
            raise ValidationError("tags: must be a list of strings")
        if annotations is not None and not isinstance(annotations, dict):
            raise ValidationError("annotations: must be an object of string keys and values")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ValidationError("backoff: must be a Backoff")
        spec = JobSpec(
            task=task,
            args=args,
            queue=queue,
            priority=priority,
            run_at=float(run_at) if _is_number(run_at) else run_at,
            max_attempts=max_attempts,
            timeout=float(timeout) if _is_number(timeout) else timeout,
            backoff=backoff or Backoff(),
            unique_key=unique_key,
            tags=list(tags),
            annotations=dict(annotations or {}),
        )
        check_spec(spec)
        return spec

    async def submit(self, task: str, args: Any = None, **options: Any) -> str:
        """Submit one job; returns its id (or the first job's id for a duplicate unique key).

        Without ``queue``, the job goes to the task's declared queue (``task_queue``)."""
        if options.get("queue") is None and isinstance(task, str):
            options["queue"] = await self.task_queue(task)
        spec = self.build_spec(task, args, **options)
        return (await self.submit_specs([spec]))[0]

    async def submit_specs(
        self, specs: Sequence[JobSpec], progress: Callable[[int], None] | None = None
    ) -> list[str]:
        """Submit many jobs, pipelined: record creates, then work publishes, never one round trip per job.

        Every spec is checked (``check_spec``) and every record encoded and size-checked before
        the first write, so a bad job fails the call with nothing written. Records are written
        under pending markers (``JobOps.mark_pending``): if this process dies or a publish
        fails between a record and its work message, the leader republishes it (rescuer.py).
        """
        now = self.clock.now()
        for spec in specs:
            if not isinstance(spec, JobSpec):
                raise ValidationError(f"specs: expected JobSpec, got {type(spec).__name__}")
            check_spec(spec)
        for task in {s.task for s in specs}:
            await self._check_task(task)
        records: list[JobRecord] = []
        for spec in specs:
            job_id = new_job_id(now)
            scheduled = spec.run_at is not None and spec.run_at > now
            records.append(new_record(job_id, spec, now, JobState.SCHEDULED if scheduled else JobState.AVAILABLE,
                                      scheduled_at=spec.run_at if scheduled else now))
        self.ops.auth.sign_records(records)
        encoded = [self._encode_checked(rec) for rec in records]
        if any(s.unique_key for s in specs):
            out = []
            for rec, data in zip(records, encoded):
                out.append(await self._submit_one_unique(rec) if rec.spec.unique_key else
                           (await self._submit_pipelined([rec], encoded=[data]))[0])
            return out
        return await self._submit_pipelined(records, progress, encoded=encoded)

    def _encode_checked(self, rec: JobRecord) -> bytes:
        """The record's bytes, refused when over a limit (naming what is too big)."""
        try:
            data = codec.encode(rec)
        except UnicodeEncodeError:
            raise ValidationError("args: strings must be valid UTF-8 text (no lone surrogates)") from None
        except RecursionError:
            raise ValidationError("args: nested too deeply (or refers to itself)") from None
        except (TypeError, OverflowError) as exc:
            raise ValidationError(f"args: not JSON-compatible: {exc}") from None
        limit = self.settings.jobs.max_payload_bytes
        if len(data) > limit:
            size = len(codec.encode(rec.spec.args))
            if size > limit:
                raise PayloadTooLargeError(f"args: {size} bytes is over the {limit} byte limit")
        server_max = getattr(self.conn.nc, "max_payload", 0) or 1024 * 1024
        # Room for the work message's envelope and headers, and for the attempts a record gains.
        ceiling = min(limit + _RECORD_SLACK, server_max) - _RECORD_SLACK // 2
        if len(data) > ceiling:
            raise PayloadTooLargeError(
                f"job: {len(data)} bytes in all is over the {ceiling} byte limit (args, tags and annotations "
                f"together; the server takes messages up to {server_max} bytes)")
        return data

    async def _submit_pipelined(
        self, records: list[JobRecord], progress: Callable[[int], None] | None = None,
        *, encoded: list[bytes] | None = None,
    ) -> list[str]:
        """Every record create is sent at once (up to half the publisher's window in flight); its
        PubAck callback, in the read loop, sends the job's work message, whose PubAck counts it
        done. No coroutine, future or task per job: that machinery was most of a bulk submit's
        CPU. A failed create or publish is reported after the others have settled.

        Records go out in chunks of ``_MARK_CHUNK``, each covered by a pending marker that is
        acknowledged before the chunk's first create and deleted once its last work message is
        acknowledged (the next chunk's marker is sent ahead, so this costs no round trip per chunk)."""
        store = await self.ops.store()
        publisher = self.conn.publisher
        loop = asyncio.get_running_loop()
        total = len(records)
        all_done = loop.create_future()
        errors: list[BaseException] = []
        done = 0
        # Report about 20 times per call, whatever the batch size.
        step = max(1, min(1000, total // 20))
        slow: set[asyncio.Task[None]] = set()
        chunks = [records[i:i + _MARK_CHUNK] for i in range(0, total, _MARK_CHUNK)]
        left = [len(c) for c in chunks]
        failed_chunk = [False] * len(chunks)
        markers: list[tuple[str, asyncio.Future[PubAck]] | None] = [None] * len(chunks)
        unmarks: list[asyncio.Future[PubAck]] = []

        def finished(chunk: int, exc: BaseException | None) -> None:
            nonlocal done
            if exc is not None:
                errors.append(exc)
                failed_chunk[chunk] = True  # its marker stays: the leader repairs what is missing
            done += 1
            left[chunk] -= 1
            if left[chunk] == 0 and not failed_chunk[chunk]:
                task = loop.create_task(unmark(chunk))
                slow.add(task)
                task.add_done_callback(slow.discard)
            if progress is not None and (done % step == 0 or done == total):
                progress(done)
            if done == total and not all_done.done():
                all_done.set_result(None)

        async def unmark(chunk: int) -> None:
            mark = markers[chunk]
            assert mark is not None
            try:
                unmarks.append(await self.ops.unmark(mark[0], (await mark[1]).seq))
            except Exception as exc:  # a marker left behind only costs the leader a look
                log.debug("deleting pending marker %s: %s", mark[0], exc)

        def on_work(chunk: int, ack: Any, exc: BaseException | None) -> None:
            finished(chunk, exc)

        def on_create(chunk: int, rec: JobRecord, data: bytes, ack: Any, exc: BaseException | None) -> None:
            if exc is not None:
                finished(chunk, exc)
                return
            self.events.emit(job_event(rec))
            if rec.state is JobState.AVAILABLE:
                subject, work, hdr = self.ops.work_frame(rec, ack.seq, data)
                if publisher.publish_cb(subject, work, hdr, functools.partial(on_work, chunk)):
                    return
            # Parked for later, or the window is full: the awaitable path, in a task.
            task = loop.create_task(settle_slowly(chunk, rec, ack.seq))
            slow.add(task)
            task.add_done_callback(slow.discard)

        async def settle_slowly(chunk: int, rec: JobRecord, rev: int) -> None:
            try:
                if rec.state is JobState.SCHEDULED:
                    await self._park_scheduled(rec, rev)
                else:
                    await self.ops.publish_work(rec, rev)
            except Exception as exc:
                finished(chunk, exc)
            else:
                finished(chunk, None)

        async def mark(chunk: int) -> None:
            markers[chunk] = await self.ops.mark_pending(
                [PendingWrite(r.id, r.gen, r.attempt) for r in chunks[chunk]], "submit")

        high_water = max(1, publisher.window // 2)  # leaves room for each create's work message
        if chunks:
            await mark(0)
        for c, chunk_records in enumerate(chunks):
            mark_ = markers[c]
            assert mark_ is not None
            # The marker is stored before any record it covers (a failure here ends the call
            # with this chunk unwritten; earlier chunks are covered by their own markers).
            await publisher.wait(mark_[1])
            if c + 1 < len(chunks):
                await mark(c + 1)  # ahead: acknowledged while this chunk's creates go out
            base = c * _MARK_CHUNK
            for i, rec in enumerate(chunk_records):
                if publisher.in_flight >= high_water:
                    await publisher.wait_for_room(high_water // 2)
                data = encoded[base + i] if encoded is not None else codec.encode(rec)
                if not store.create_cb(rec.id, data, functools.partial(on_create, c, rec, data)):
                    try:
                        rev = await (await store.create_nowait(rec.id, data))
                    except Exception as exc:
                        finished(c, exc)
                    else:
                        on_create(c, rec, data, PubAck(seq=rev), None)
        if total:
            await all_done
        while slow:  # the last chunks' marker deletes are sent...
            await asyncio.gather(*list(slow), return_exceptions=True)
        for fut in unmarks:  # ...not awaited: every job is out, and a marker left behind only costs
            fut.add_done_callback(_unmarked)  # the leader a deduplicated look (saves a round trip)
        if errors:
            raise errors[0]
        return [r.id for r in records]

    async def _submit_one_unique(self, rec: JobRecord) -> str:
        """Unique jobs: the work message carries Nats-Msg-Id; a duplicate returns the first job's id.
        Under a pending marker like any submit (deleted once the job's outcome here is settled)."""
        key, marked = await self.ops.mark_pending([PendingWrite(rec.id, rec.gen, rec.attempt)], "submit")
        marker_rev = (await self.conn.publisher.wait(marked)).seq
        out = await self._submit_one_unique_marked(rec)
        (await self.ops.unmark(key, marker_rev)).add_done_callback(_unmarked)
        return out

    async def _submit_one_unique_marked(self, rec: JobRecord) -> str:
        control = await self.ops.control()
        digest = key_digest(rec.spec.unique_key or "")
        rev = await (await self.ops.create_nowait(rec))
        if rec.state is JobState.SCHEDULED:
            # Scheduled unique jobs dedupe on the control key alone.
            try:
                await control.create(self.names.unique_key(digest), rec.id.encode())
            except ConflictError:
                await (await self.ops.store()).delete(rec.id)
                entry = await control.get(self.names.unique_key(digest))
                return entry.value.decode() if entry and entry.value else rec.id
            await self._park_scheduled(rec, rev)
            self.events.emit(job_event(rec))
            return rec.id
        ack = await self.ops.publish_work(rec, rev)
        if not ack.duplicate:
            await control.put(self.names.unique_key(digest), rec.id.encode())
            self.events.emit(job_event(rec))
            return rec.id
        # Someone submitted this key inside the duplicate window: drop our record, return theirs.
        await (await self.ops.store()).delete(rec.id)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            entry = await control.get(self.names.unique_key(digest))
            if entry is not None and entry.value:
                return entry.value.decode()
            await asyncio.sleep(0.01)  # the first submitter is between its publish and its index write
        raise ChronosError(f"unique key {rec.spec.unique_key!r} is taken but its job id is not recorded yet")

    async def _park_scheduled(self, rec: JobRecord, rev: int) -> None:
        """A job for later waits in the delayed store until the scheduler promotes it."""
        from .delayed import park

        await park(self.conn, rec, rev)

    # --- read ----------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord:
        return await self.ops.read(job_id)

    async def list(
        self,
        *,
        state: str | JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        tag: str | None = None,
        offset: int = 0,
        limit: int = 50,
        states: Sequence[str | JobState] | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs in the KV, newest created first, filtered and paged. (The archive holds older ones.)

        ``states``: any of several states; ``since``/``until``: created time; ``cursor``: the
        ``next`` of the previous page. A scheduler's job index answers (a page costs the same at a
        million jobs); the records shown are read from the KV. See chronos/listing.py.
        """
        from .listing import list_jobs
        from .readmodel import JobsQuery, validate_jobs_query

        wanted = [state] if state is not None else list(states or [])
        try:
            names = [JobState(s).value for s in wanted]
        except ValueError:
            bad = next(s for s in wanted if s not in {j.value for j in JobState})
            raise ValidationError(f"state: {bad!r} is not one of {', '.join(s.value for s in JobState)}") from None
        if offset < 0 or limit < 1:
            raise ValidationError("offset must be >= 0 and limit >= 1")
        q = JobsQuery(states=names, queue=queue, task=task, tag=tag, since=since, until=until, cursor=cursor,
                      offset=offset, limit=1)
        validate_jobs_query(q)
        return await list_jobs(self.conn, self.ops, q, limit)

    async def counts(self, *, fallback: bool = True, timeout: float = 5.0) -> Any:
        """Records per state and per queue (a ``readmodel.Counts``), from a scheduler's job index
        without reading records; when no index answers, from a scan (or None without ``fallback``)."""
        from .listing import job_counts

        return await job_counts(self.conn, self.ops, fallback=fallback, timeout=timeout)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait until the job reaches a terminal state (or ``timeout`` seconds pass)."""

        async def _wait() -> JobRecord:
            store = await self.ops.store()
            watcher = store.watch(job_id, include_existing=True)
            rec = await self.ops.read(job_id)
            if rec.state in TERMINAL:
                return rec
            async for entry in watcher:
                if entry.key != job_id or entry.value is None:
                    continue
                rec = codec.decode(entry.value, JobRecord)
                rec.revision = entry.revision
                if rec.state in TERMINAL:
                    return rec
            raise JobNotFoundError(f"job {job_id} disappeared")

        return await asyncio.wait_for(_wait(), timeout)

    # --- cancel / retry ----------------------------------------------------------------
    @audited("cancel")  # written to the audit stream first (chronos/audit.py)
    async def cancel(self, job_id: str, reason: str = "cancelled by operator") -> JobRecord:
        """Pending jobs are cancelled at once; a running job gets a cancel signal (hard stop after a grace)."""
        now = self.clock.now()

        def decide(rec: JobRecord) -> Any:
            if rec.state in TERMINAL:
                raise ChronosError(f"job {job_id} is already {rec.state}; nothing to cancel")
            if rec.state in PENDING:
                return JobState.CANCELLED, {"cancel_reason": reason, "error": reason}
            if rec.cancel_requested:
                return None
            return JobState.RUNNING, {"cancel_requested": True, "cancel_reason": reason}

        rec = await self.ops.move_with_retry(job_id, decide)
        # Workers watch these: a running job gets the signal; a pending one is skipped if a
        # worker already holds its message (a worker defers its running write, see executor.py).
        control = await self.ops.control()
        await control.put(self.names.cancel_key(job_id), codec.encode(CancelRequest(job_id, now, reason, rec.gen)))
        if rec.state is not JobState.RUNNING:
            self.events.emit(job_event(rec, message=reason))
        return rec

    @audited("retry")
    async def retry(self, job_id: str) -> JobRecord:
        """Run a retryable, cancelled or discarded job again now, with a fresh attempt budget."""

        def decide(rec: JobRecord) -> Any:
            if rec.state not in RETRIABLE_BY_HAND:
                raise ChronosError(
                    f"job {job_id} is {rec.state}; only retryable, cancelled or discarded jobs can be retried"
                )
            return JobState.AVAILABLE, {
                "gen": rec.gen + 1,
                "cancel_requested": False,
                "cancel_reason": None,
                "scheduled_at": self.clock.now(),
            }

        rec = await self.ops.move_and_publish(job_id, decide, "retry")
        self.events.emit(job_event(rec, message="retried by operator"))
        return rec

    @audited("run_now")
    async def run_now(self, job_id: str) -> JobRecord:
        """Promote a scheduled job now; retry a finished one."""
        rec = await self.ops.read(job_id)
        if rec.state is JobState.SCHEDULED:

            def decide(cur: JobRecord) -> Any:
                if cur.state is not JobState.SCHEDULED:
                    raise ChronosError(f"job {job_id} is {cur.state} now, no longer scheduled; nothing to run early")
                return JobState.AVAILABLE, {"scheduled_at": self.clock.now(), "gen": cur.gen + 1}

            rec = await self.ops.move_and_publish(job_id, decide, "run-now")
            self.events.emit(job_event(rec, message="run now by operator"))
            return rec
        return await self.retry(job_id)

    # --- watch ----------------------------------------------------------------------------
    async def watch(
        self,
        *,
        kinds: Sequence[str] | None = None,
        queue: str | None = None,
        job_id: str | None = None,
        history: float | None = None,
    ) -> AsyncIterator[Event]:
        """Live events, optionally starting ``history`` seconds back (from the events stream)."""
        subject = self.names.events_filter("*" if not kinds or len(kinds) > 1 else kinds[0], queue or "*")
        wanted = set(kinds) if kinds else None
        if history:
            start = time.gmtime(self.clock.now() - history)
            sub = await self.conn.js.subscribe(
                subject,
                ordered_consumer=True,
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_TIME,
                    opt_start_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", start),
                ),
            )
        else:
            sub = await self.conn.nc.subscribe(subject)
        try:
            async for msg in sub.messages:
                try:
                    events = decode_events(msg.data)
                except ChronosError:
                    continue
                if history:
                    try:
                        await msg.ack()
                    except Exception:  # ordered consumers need no ack; older servers may refuse it
                        pass
                for ev in events:
                    if wanted is not None and ev.kind not in wanted:
                        continue
                    if job_id is not None and ev.job_id != job_id:
                        continue
                    yield ev
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection gone; nothing to release
                log.debug("unsubscribe failed: %s", exc)

    # --- DLQ ---------------------------------------------------------------------------------
    # One live entry per job: a job that is retried or replayed and fails again adds a newer
    # entry, which supersedes the older ones. Listings, counts and lookups by job id see the
    # newest entry of each job only; replay, purge and dlq_forget delete a job's every entry.
    async def _dlq_scan(self, subject: str, *, headers_only: bool) -> list[tuple[int, str | None, bytes]]:
        """(sequence, job id or None, data) of every message on ``subject``, oldest first."""
        try:
            info = await self.conn.js.stream_info(self.names.dlq_stream)
        except nats.js.errors.NotFoundError:
            return []
        if info.state.messages == 0:
            return []
        sub = await self.conn.js.subscribe(subject, ordered_consumer=True, headers_only=headers_only or None)
        out: list[tuple[int, str | None, bytes]] = []
        try:
            remaining = info.state.messages
            while remaining > 0:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    break
                remaining = msg.metadata.num_pending
                job_id = (msg.headers or {}).get("Chronos-Job-Id") or None
                out.append((msg.metadata.sequence.stream, job_id, msg.data))
        finally:
            await sub.unsubscribe()
        return out

    @staticmethod
    def _dlq_live(scan: list[tuple[int, str | None, bytes]]) -> list[tuple[int, str | None, bytes]]:
        """The newest message of each job (and every message without a job id), oldest first."""
        newest: dict[str, int] = {}
        for seq, job_id, _ in scan:
            if job_id is not None:
                newest[job_id] = seq
        return [m for m in scan if m[1] is None or newest[m[1]] == m[0]]

    @staticmethod
    def _dlq_entry(seq: int, data: bytes) -> DLQEntry:
        try:
            entry = codec.decode(data, DLQEntry)
        except ChronosError as exc:
            entry = DLQEntry(reason=f"unreadable DLQ entry: {exc}", at=0.0, raw=data)
        entry.seq = seq
        return entry

    async def dlq_list(
        self, *, task: str | None = None, queue: str | None = None, limit: int = 1000, after: int = 0
    ) -> list[DLQEntry]:
        """Live DLQ entries (the newest per job), oldest first; ``after`` skips sequences up to it."""
        subject = self.names.dlq_subject(queue) if queue else self.names.dlq_wildcard()
        out: list[DLQEntry] = []
        for seq, _, data in self._dlq_live(await self._dlq_scan(subject, headers_only=False)):
            if seq <= after:
                continue
            entry = self._dlq_entry(seq, data)
            if task is None or (entry.spec is not None and entry.spec.task == task):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    async def dlq_get(self, ref: str | int) -> DLQEntry:
        """A DLQ entry by its sequence number, or the live entry of a job by its id or a unique id prefix.

        A sequence number is all digits without a leading zero (job ids start with one).
        """
        text = str(ref)
        if isinstance(ref, int) or (text.isdigit() and not text.startswith("0")):
            try:
                raw = await self.conn.js.get_msg(self.names.dlq_stream, int(ref), direct=True)
            except nats.js.errors.NotFoundError:
                raise NotFoundError(f"no DLQ entry with sequence {ref}") from None
            except nats.js.errors.APIError as exc:  # 404/408 past the end of an empty or purged stream
                if getattr(exc, "code", None) in (404, 408):
                    raise NotFoundError(f"no DLQ entry with sequence {ref}") from None
                raise
            return self._dlq_entry(int(ref), raw.data or b"")
        live = self._dlq_live(await self._dlq_scan(self.names.dlq_wildcard(), headers_only=True))
        exact = [m for m in live if m[1] == text]
        matches = exact or [m for m in live if m[1] is not None and m[1].startswith(text)]
        if not matches:
            raise NotFoundError(f"no DLQ entry for job {text}")
        if len(matches) > 1:
            shown = ", ".join(str(m[1]) for m in matches[:4]) + (f" and {len(matches) - 4} more" if len(matches) > 4 else "")
            raise ValidationError(f"job id prefix {text!r} is ambiguous: {len(matches)} DLQ entries match ({shown})")
        return await self.dlq_get(matches[0][0])

    @audited("dlq_replay")
    async def dlq_replay(self, ref: str | int) -> JobRecord:
        """Publish a DLQ entry's job again (as a fresh generation of the same job) and remove its entries."""
        entry = await self.dlq_get(ref)
        if entry.spec is None or entry.job_id is None:
            raise ChronosError(
                f"DLQ entry {entry.seq} is a malformed message ({entry.reason}); it cannot be replayed, only purged"
            )
        # The job's entries as of now: a replayed job that fails again at once adds a newer one,
        # which must stay.
        doomed = await self.dlq_sequences(entry.job_id)
        rec = await self.ops.read_or_none(entry.job_id)
        if rec is None:
            # The record was pruned: bring the job back under its id, with the signature the entry
            # kept and never a new one (workers write DLQ entries: signing here would turn a
            # forged entry into a job this console vouches for).
            rec = new_record(entry.job_id, entry.spec, self.clock.now(), JobState.AVAILABLE, gen=2,
                             auth=entry.auth)
            rev = await (await self.ops.create_nowait(rec, sign=False))
            await self.ops.publish_work(rec, rev)
        elif rec.state not in TERMINAL:
            raise ConflictError(f"job {entry.job_id} is {rec.state} already; not replaying")
        else:
            rec = await self.retry(entry.job_id)
        await self.dlq_forget(entry.job_id, sorted({entry.seq, *doomed}))
        return rec

    async def dlq_sequences(self, job_id: str) -> list[int]:
        """Sequence numbers of every DLQ entry of a job, live or superseded (a headers-only read)."""
        return [seq for seq, jid, _ in await self._dlq_scan(self.names.dlq_wildcard(), headers_only=True)
                if jid == job_id]

    @audited("dlq_delete")
    async def dlq_forget(self, job_id: str, seqs: Sequence[int] | None = None) -> int:
        """Delete a job's DLQ entries: ``seqs`` (read with dlq_sequences before the job ran again,
        so a newer failure's entry stays), or all of them. Used after a retry by hand."""
        doomed = await self.dlq_sequences(job_id) if seqs is None else list(seqs)
        for seq in doomed:
            await self._dlq_delete(seq)
        return len(doomed)

    @audited("dlq_purge")
    async def dlq_purge(self, *, task: str | None = None) -> int:
        """Delete DLQ entries for good (all, or one task's); returns how many live entries went."""
        if task is None:
            n = await self.dlq_count()
            try:
                await self.conn.js.purge_stream(self.names.dlq_stream)
            except nats.js.errors.NotFoundError:
                return 0
            return n
        scan = await self._dlq_scan(self.names.dlq_wildcard(), headers_only=False)
        live = {seq for seq, _, _ in self._dlq_live(scan)}
        doomed_jobs: set[str] = set()
        count = 0
        for seq, job_id, data in scan:
            if seq not in live:
                continue
            entry = self._dlq_entry(seq, data)
            if entry.spec is not None and entry.spec.task == task:
                count += 1
                if job_id is not None:
                    doomed_jobs.add(job_id)
                else:
                    await self._dlq_delete(seq)
        for seq, job_id, _ in scan:
            if job_id in doomed_jobs:
                await self._dlq_delete(seq)
        return count

    async def dlq_count(self) -> int:
        """Live entries (the newest per job): a headers-only read of the DLQ."""
        info = await self.conn.js.stream_info(self.names.dlq_stream)
        if info.state.messages == 0:
            return 0
        return len(self._dlq_live(await self._dlq_scan(self.names.dlq_wildcard(), headers_only=True)))

    async def _dlq_delete(self, seq: int) -> None:
        try:
            await self.conn.js.delete_msg(self.names.dlq_stream, seq)
        except nats.js.errors.NotFoundError:
            pass

    # --- leader -----------------------------------------------------------------------------
    async def leader(self, role: str = "scheduler") -> Any:
        """Who holds the scheduler lease (a ``LeaderInfo``: node, host, pid, term, expires_in), or None."""
        from .leadership import read_leader

        return await read_leader(self.conn, role=role, clock=self.clock)

    # --- workers ----------------------------------------------------------------------------
    async def workers(self) -> list[WorkerHeartbeat]:
        kv = await self.conn.kv(self.names.workers_bucket)

        out = []
        for e in await KVStore(kv, self.conn.publisher, self.names.workers_bucket).entries():
            try:
                out.append(codec.decode(e.value or b"", WorkerHeartbeat))
            except ChronosError:
                continue
        return sorted(out, key=lambda w: w.id)

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting per work subject (priority.queue)."""
        info = await self.conn.js.stream_info(self.names.jobs_stream, subjects_filter=self.names.jobs_wildcard())
        subjects = info.state.subjects or {}
        prefix = self.names.jobs_root + "."
        return {k[len(prefix):]: v for k, v in subjects.items()}

    async def ensure_queue(self, queue: str) -> None:
        if not is_valid_token(queue):
            raise ValidationError(f"queue: {queue!r} is not a valid name")
        await ensure_queue_consumers(self.conn, queue)
        self._known_queues.add(queue)

    # --- history ------------------------------------------------------------------------------
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
        from .archive import query_history

        return await query_history(self.conn, task=task, state=state, queue=queue, since=since, until=until,
                                   text=text, limit=limit, cursor=cursor, timeout=timeout)

    # --- schedules ---------------------------------------------------------------------------
    # CRUD, pause/resume (by name or glob), edit, dry runs, backfill and crontab export over the
    # schedules KV bucket; the scheduler's enqueuer fires them. The logic is in chronos/schedules.py;
    # these methods check input (a ValidationError naming the field, nothing stored) and do the I/O.
    def _schedules(self) -> Any:
        from .schedules import ScheduleStore

        store = getattr(self, "_schedule_store", None)
        if store is None:
            store = self._schedule_store = ScheduleStore(self.conn)
        return store

    async def _check_schedule_queue(self, queue: str) -> None:
        """A schedule's queue must exist, or its jobs would wait forever: listed in worker.queues,
        made by ensure_queue, or served by a worker (workers create the queue's consumers at start)."""
        if queue in self._known_queues:
            return
        for priority in PRIORITIES:
            try:
                await self.conn.js.consumer_info(self.names.jobs_stream, self.names.consumer_name(priority, queue))
            except nats.js.errors.NotFoundError:
                continue
            self._known_queues.add(queue)
            return
        raise ValidationError(
            f"queue: unknown queue {queue!r}: no worker serves it and it is not in worker.queues "
            f"(known: {', '.join(sorted(self._known_queues)) or 'none'})"
        )

    def _schedule_from(self, base: Any, changes: dict[str, Any], now: float) -> Any:
        """``base`` with ``changes`` applied and every field checked; raises ValidationError naming the field."""
        from .cron import IntervalSchedule, parse_schedule
        from .schedules import interval_anchor, validate

        cron, every, tz = changes.get("cron", base.cron), changes.get("every", base.every), changes.get("tz", base.tz)
        if not isinstance(tz, str):
            raise ValidationError(f"tz: expected an IANA zone name, got {tz!r}")
        anchor = base.anchor
        if "every" in changes and every is not None and cron is None:
            anchor = interval_anchor(parse_schedule(every=every, tz=tz).seconds, now)  # type: ignore[union-attr]
        timing = parse_schedule(cron=cron, every=every, tz=tz, anchor=anchor)
        spec = self.build_spec(
            changes.get("task", base.task), changes.get("args", base.args),
            queue=changes.get("queue", base.queue), priority=changes.get("priority", base.priority),
            timeout=changes.get("timeout", base.timeout), max_attempts=changes.get("max_attempts", base.max_attempts),
            annotations=changes.get("annotations", base.annotations),
        )
        new = msgspec.structs.replace(
            base, task=spec.task, args=spec.args, queue=spec.queue, priority=spec.priority, timeout=spec.timeout,
            max_attempts=spec.max_attempts, annotations=spec.annotations, tz=tz, anchor=anchor,
            cron=timing.expr if not isinstance(timing, IntervalSchedule) else None,
            every=timing.seconds if isinstance(timing, IntervalSchedule) else None,
            overlap=changes.get("overlap", base.overlap), misfire=changes.get("misfire", base.misfire),
            catch_up_max=changes.get("catch_up_max", base.catch_up_max), updated_at=now,
        )
        validate(new)
        return new

    @audited("schedule_add")
    async def add_schedule(
        self,
        name: str,
        task: str,
        args: Any = None,
        *,
        cron: str | None = None,
        every: float | str | None = None,
        tz: str = "UTC",
        queue: str | None = None,
        priority: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        annotations: dict[str, str] | None = None,
        overlap: str = "allow",
        misfire: str = "skip",
        catch_up_max: int = 10,
        paused: bool = False,
    ) -> Any:
        """Store a new schedule. Every problem raises ValidationError naming the field; nothing is stored then.

        ``cron`` (5 or 6 fields, or an alias, in ``tz``) or ``every`` (seconds, or "90s", "5m", "2h", "1d").
        The queue must be known (see ``_check_schedule_queue``) and the task registered.
        """
        from .models import Schedule
        from .subjects import is_valid_token as valid_name

        if not isinstance(name, str) or not valid_name(name):
            raise ValidationError(f"name: {name!r} is not a valid schedule name (1-64 letters, digits, '_' or '-')")
        now = self.clock.now()
        js = self.settings.jobs
        # The first fire comes strictly after creation: last_fire_time marks where firing starts.
        base = Schedule(name=name, task=task, created_at=now, updated_at=now, paused=bool(paused),
                        max_attempts=js.default_max_attempts, last_fire_time=now)
        sched = self._schedule_from(base, {
            "cron": cron, "every": every, "tz": tz, "task": task, "args": args,
            "queue": js.default_queue if queue is None else queue,
            "priority": js.default_priority if priority is None else priority,
            "timeout": timeout, "max_attempts": js.default_max_attempts if max_attempts is None else max_attempts,
            "annotations": dict(annotations or {}), "overlap": overlap, "misfire": misfire,
            "catch_up_max": catch_up_max,
        }, now)
        await self._check_schedule_queue(sched.queue)
        await self._check_task(sched.task)
        return await self._schedules().create(sched)

    @audited("schedule_update")
    async def update_schedule(self, name: str, /, **changes: Any) -> Any:
        """Edit a stored schedule (compare-and-set). Editable: task, args, cron, every, tz, queue,
        priority, timeout, max_attempts, annotations, overlap, misfire, catch_up_max.

        Giving ``cron`` drops ``every`` and the other way round. A timing change takes effect
        from now on: fire times already past are not made up.
        """
        from .schedules import EDITABLE

        for field in changes:
            if field not in EDITABLE:
                raise ValidationError(f"{field}: cannot be edited (editable: {', '.join(sorted(EDITABLE))})")
        if changes.get("cron") is not None:
            changes.setdefault("every", None)
        elif changes.get("every") is not None:
            changes.setdefault("cron", None)
        current = await self._schedules().get(name)
        now = self.clock.now()
        self._schedule_from(current, changes, now)  # refuse bad input before any I/O check
        if "queue" in changes:
            await self._check_schedule_queue(changes["queue"])
        if "task" in changes:
            await self._check_task(changes["task"])
        retime = any(f in changes for f in ("cron", "every", "tz"))

        def change(s: Any) -> dict[str, Any]:
            new = self._schedule_from(s, changes, self.clock.now())
            out = {f: getattr(new, f) for f in (*changes, "anchor", "updated_at", "cron", "every")}
            if retime:
                out["last_fire_time"] = max(s.last_fire_time or now, now)
            return out

        return await self._schedules().modify(name, change)

    async def get_schedule(self, name: str) -> Any:
        return await self._schedules().get(name)

    async def list_schedules(self) -> list[Any]:
        return sorted(await self._schedules().list(), key=lambda s: s.name)

    async def schedule_statuses(self, pattern: str | None = None) -> list[Any]:
        """Schedules (all, or those matching a glob) with their next fire and their last job's state."""
        from .schedules import ScheduleStatus, match_names, next_fire

        schedules = await self.list_schedules()
        if pattern is not None:
            wanted = set(match_names([s.name for s in schedules], pattern))
            schedules = [s for s in schedules if s.name in wanted]
        now = self.clock.now()
        last_jobs = await asyncio.gather(*(self.ops.read_or_none(s.last_job_id) if s.last_job_id else asyncio.sleep(0)
                                           for s in schedules))
        out = []
        for s, job in zip(schedules, last_jobs):
            st = ScheduleStatus(schedule=s, next_fire_time=next_fire(s, now), paused_now=s.is_paused(now),
                                last_job_id=s.last_job_id)
            if job is not None:
                st.last_job_fire_time, st.last_job_state = job.fire_time, str(job.state)
            out.append(st)
        return out

    @audited("schedule_remove")
    async def remove_schedule(self, name: str) -> None:
        await self._schedules().delete(name)

    @audited("schedule_pause")
    async def pause_schedule(self, name: str, until: float | None = None) -> Any:
        """Pause until ``until`` (epoch seconds), or until resumed when it is None."""
        (s,) = await self._pause([name], until)
        return s

    @audited("schedule_pause")
    async def pause_schedules(self, pattern: str, until: float | None = None) -> list[Any]:
        """Pause every schedule whose name matches the glob (``nightly-*``); ScheduleNotFoundError if none."""
        return await self._pause(await self._schedules().matching(pattern), until)

    async def _pause(self, names: list[str], until: float | None) -> list[Any]:
        now = self.clock.now()
        if until is not None and (not isinstance(until, (int, float)) or not until > now):
            raise ValidationError("until: must be a time in the future")
        return [await self._schedules().modify(
            n, lambda s: {"paused": True, "paused_until": until, "updated_at": now}) for n in names]

    @audited("schedule_resume")
    async def resume_schedule(self, name: str) -> Any:
        """Resume; fires missed while paused are not made up (the enqueuer starts from now)."""
        (s,) = await self._resume([name])
        return s

    @audited("schedule_resume")
    async def resume_schedules(self, pattern: str) -> list[Any]:
        """Resume every schedule whose name matches the glob; ScheduleNotFoundError if none."""
        return await self._resume(await self._schedules().matching(pattern))

    async def _resume(self, names: list[str]) -> list[Any]:
        now = self.clock.now()

        def change(s: Any) -> dict[str, Any]:
            if not s.paused:
                return {}
            return {"paused": False, "paused_until": None, "updated_at": now,
                    "last_fire_time": max(now, s.last_fire_time or now)}

        return [await self._schedules().modify(n, change) for n in names]

    async def next_fire_times(self, name: str, count: int = 5, *, after: float | None = None) -> list[float]:
        """Dry run: the next ``count`` fire times of a stored schedule (epoch seconds; see
        ``schedules.wall_time`` for its zone's wall time). A pause is not taken into account."""
        from .schedules import coming_fires

        s = await self._schedules().get(name)
        return coming_fires(s, self.clock.now() if after is None else after, count)

    def preview_fire_times(
        self, *, cron: str | None = None, every: float | str | None = None, tz: str = "UTC",
        count: int = 5, after: float | None = None,
    ) -> list[float]:
        """Dry run for a definition not stored yet; an interval counts from now (as add_schedule would)."""
        from .cron import IntervalSchedule, next_n, parse_schedule
        from .schedules import MAX_DRY_RUN, interval_anchor

        now = self.clock.now() if after is None else after
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_DRY_RUN:
            raise ValidationError(f"count: must be a whole number from 1 to {MAX_DRY_RUN}, got {count!r}")
        timing = parse_schedule(cron=cron, every=every, tz=tz)
        if isinstance(timing, IntervalSchedule):
            timing = IntervalSchedule(timing.seconds, interval_anchor(timing.seconds, now))
        return next_n(timing, now, count)

    @audited("schedule_backfill")
    async def backfill_schedule(
        self, name: str, since: float, until: float | None = None,
        *, progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Make the jobs for the fire times in the past window ``since <= t <= until`` (default now).

        Idempotent: the jobs have the enqueuer's derived ids and ``S:T`` message ids, so
        backfilling twice, or over fires the enqueuer made, yields one job per fire. A window
        with more than ``scheduler.max_backfill`` fire times is refused with nothing made.
        ``progress(done, total)`` is called as jobs go out.
        """
        from .schedules import BackfillReport, backfill_times, fire_many, fire_record

        now = self.clock.now()
        until = now if until is None else until
        s = await self._schedules().get(name)
        times = backfill_times(s, since, until, now, self.settings.scheduler.max_backfill,
                               retention=self.settings.scheduler.retention)
        fires = await fire_many(self.ops, s, times, now, progress=progress)
        made = sum(1 for f in fires if f.made)
        for f in fires:
            if f.made:  # as submit does, so `chronos logs` and the TUI see the new jobs
                self.events.emit(job_event(fire_record(s, f.fire_time, now), message=f"backfill of schedule {name}"))
        log.info("schedule %s: backfill made %d job(s), %d existed", name, made, len(fires) - made)
        return BackfillReport(schedule=name, since=since, until=until, made=made, existing=len(fires) - made,
                              fires=fires)

    async def export_crontab(self) -> str:
        """Every schedule as crontab entries running `chronos submit`, chronos metadata in comments."""
        from .schedules import crontab

        return crontab(await self.list_schedules(), self.clock.now(), self.names.ns)

    # --- namespace and job-id prefixes (for the CLI) ---------------------------------------------
    async def namespace_exists(self) -> bool:
        """Whether the namespace has its jobs stream (read-only: one STREAM.INFO, nothing created)."""
        try:
            await self.conn.js.stream_info(self.names.jobs_stream)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def resolve_job_id(self, prefix: str) -> str:
        """The job id that ``prefix`` is, or uniquely starts (as git and docker take id prefixes).

        An exact id wins. Otherwise the jobs bucket's keys are listed with headers only (no
        record is read or decoded) and filtered by the prefix. Ambiguous: a ValidationError
        naming a few candidates; none: JobNotFoundError.
        """
        if not isinstance(prefix, str) or not prefix or not is_valid_token(prefix):
            raise ValidationError(f"job id: {prefix!r} is not a job id (letters, digits, '-' and '_')")
        if await self.ops.read_or_none(prefix) is not None:
            return prefix
        matches = await self._job_ids_starting(prefix)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise JobNotFoundError(f"no job with id {prefix}" if len(prefix) >= 28 else f"no job id starts with {prefix!r}")
        shown = ", ".join(matches[:4]) + (f" and {len(matches) - 4} more" if len(matches) > 4 else "")
        raise ValidationError(f"job id prefix {prefix!r} is ambiguous: {len(matches)} jobs match ({shown})")

    async def _job_ids_starting(self, prefix: str) -> list[str]:
        """Live keys of the jobs bucket that start with ``prefix``: one headers-only ordered consumer."""
        bucket = self.names.jobs_bucket
        root = f"$KV.{bucket}."
        try:
            sub = await self.conn.js.subscribe(
                root + ">", stream=self.names.kv_stream(bucket), ordered_consumer=True, headers_only=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=60.0,
            )
        except nats.js.errors.NotFoundError:
            return []
        found: set[str] = set()
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return []
            async for msg in sub.messages:
                key = msg.subject[len(root):]
                headers = msg.headers or {}
                deleted = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
                if key.startswith(prefix):
                    (found.discard if deleted else found.add)(key)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                log.debug("job id listing unsubscribe: %s", exc)
        return sorted(found)


def record_to_dict(rec: JobRecord) -> dict[str, Any]:
    return msgspec.to_builtins(rec)
