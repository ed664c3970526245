"""Submit: arguments to a checked JobSpec, then record and work message, pipelined.

Submit writes the record first (create-if-absent), then publishes the work message carrying
the record's revision, so the worker's first write is a compare-and-set with no read. Bulk
submit pipelines both steps through PubAck callbacks (no coroutine, future or task per job).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Any, Callable, Literal, NamedTuple, Sequence

import msgspec

from .. import codec
from ..clock import Clock
from ..connection import Connection
from ..delayed import park
from ..errors import ChronosError, ConflictError, PayloadTooLargeError, ValidationError
from ..events import EventPublisher
from ..ids import key_digest, new_job_id
from ..jobs import JobOps, job_event, new_record
from ..models import Backoff, JobRecord, JobSpec, PendingWrite
from ..publisher import PubAck, is_wrong_last_sequence
from ..states import TERMINAL, JobState
from ..store.kv import KVStore
from ..subjects import PRIORITIES, is_valid_token
from .batched import submit_batched
from .catalog import TaskCatalog
from .limits import check_limit_key
from .spec import _is_number, check_spec, unique_digest, uniqueness

log = logging.getLogger("chronos.client")

_UNIQUE_ROUNDS = 8  # looks at a unique key before giving up (each lost race is someone else's success)
UNIQUE_GRACE = 2.0  # seconds a key's record may be missing (its submitter mid-write) before it is fenced
_MARK_CHUNK = 1024  # jobs per pending marker in a bulk submit (about 40 KB of ids)
_RECORD_SLACK = 16 * 1024  # as connection._ENVELOPE_SLACK: room around the args in a message


def _unmarked(fut: "asyncio.Future[PubAck]") -> None:
    """A pending marker's delete settled; a failure leaves the marker for the leader to look at."""
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("deleting a pending marker: %s", fut.exception())


class Submitted(NamedTuple):
    """What ``submit_job`` did: ``outcome`` is ``created`` (a new job), ``active`` (a job holding
    the unique-while-active key: its id, nothing written) or ``debounced`` (the scheduled job
    holding the debounce key now has this submit's args and a later run time: its id)."""

    id: str
    outcome: Literal["created", "active", "debounced"] = "created"

    @property
    def existing(self) -> bool:
        return self.outcome != "created"


def _holds(holder: JobRecord, mode: str) -> bool:
    """A unique-while-active key is held while its job is pending or running; a debounce key
    while its job is still waiting for its window (``scheduled``)."""
    if mode == "debounce":
        return holder.state is JobState.SCHEDULED
    return holder.state not in TERMINAL


class Submitter:
    def __init__(self, conn: Connection, clock: Clock, ops: JobOps, events: EventPublisher,
                 catalog: TaskCatalog) -> None:
        self._unique: KVStore | None = None
        self.conn = conn
        self.settings = conn.settings
        self.names = conn.names
        self.clock = clock
        self.ops = ops
        self.events = events
        self.catalog = catalog

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
        unique: str | None = None,
        debounce: float | None = None,
        debounce_max: float | None = None,
    ) -> JobSpec:
        """Validate submit arguments into a JobSpec; every problem names its field.

        ``unique="while_active"`` or ``debounce=<seconds>`` (docs/unique-jobs.md) take ``unique_key``
        as their key, or a digest of the task and args without one; ``unique_key`` alone keeps its
        older meaning (a duplicate inside the jobs stream's duplicate window returns the first job)."""
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
        uniq = uniqueness(task, args, unique=unique, unique_key=unique_key, debounce=debounce,
                          debounce_max=debounce_max)
        if uniq is not None:
            unique_key = None  # the key is the Uniqueness's own
            if uniq.mode == "debounce":
                if run_at is not None:
                    raise ValidationError("debounce: decides when the job runs; give no run_at or delay with it")
                run_at = self.clock.now() + uniq.debounce  # type: ignore[operator]
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
            unique=uniq,
        )
        check_spec(spec)
        check_limit_key(task, args)  # a task registered here with a per-key limit: its key is in the args
        return spec

    async def submit(self, task: str, args: Any = None, **options: Any) -> str:
        """Submit one job; returns its id (or the first job's id for a duplicate unique key).

        Without ``queue``, the job goes to the task's declared queue (``task_queue``)."""
        if options.get("queue") is None and isinstance(task, str):
            options["queue"] = await self.catalog.task_queue(task)
        spec = self.build_spec(task, args, **options)
        return (await self.submit_specs([spec]))[0]

    async def submit_job(self, task: str, args: Any = None, **options: Any) -> "Submitted":
        """``submit``, telling whether a job was made: ``Submitted(id, outcome)`` with outcome
        ``created``, ``active`` (a unique-while-active job holds the key: its id) or ``debounced``
        (a scheduled debounced job took these args and a later run time: its id)."""
        if options.get("queue") is None and isinstance(task, str):
            options["queue"] = await self.catalog.task_queue(task)
        spec = self.build_spec(task, args, **options)
        if spec.unique is None:
            return Submitted((await self.submit_specs([spec]))[0], "created")
        check_spec(spec)
        await self.catalog.check_task(spec.task)
        return await self._submit_one_active(self._new_records([spec], self.clock.now())[0])

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
            await self.catalog.check_task(task)
        records = self._new_records(specs, now)
        encoded = [self._encode_checked(rec) for rec in records]
        if any(s.unique_key or s.unique for s in specs):
            out = []
            for rec, data in zip(records, encoded):
                if rec.spec.unique is not None:
                    out.append((await self._submit_one_active(rec)).id)
                else:
                    out.append(await self._submit_one_unique(rec) if rec.spec.unique_key else
                               (await self._submit_pipelined([rec], encoded=[data]))[0])
            return out
        return await self._submit_pipelined(records, progress, encoded=encoded)

    def _new_records(self, specs: Sequence[JobSpec], now: float) -> list[JobRecord]:
        """Fresh records (available, or scheduled for a later run_at), signed when signing is configured."""
        records: list[JobRecord] = []
        for spec in specs:
            job_id = new_job_id(now)
            scheduled = spec.run_at is not None and spec.run_at > now
            records.append(new_record(job_id, spec, now, JobState.SCHEDULED if scheduled else JobState.AVAILABLE,
                                      scheduled_at=spec.run_at if scheduled else now))
        self.ops.auth.sign_records(records)
        return records

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
        *, encoded: list[bytes] | None = None, batched: bool = True,
    ) -> list[str]:
        """Every record create is sent at once (up to half the publisher's window in flight); its
        PubAck callback, in the read loop, sends the job's work message, whose PubAck counts it
        done. No coroutine, future or task per job: that machinery was most of a bulk submit's
        CPU. A failed create or publish is reported after the others have settled.

        Records go out in chunks of ``_MARK_CHUNK``, each covered by a pending marker that is
        acknowledged before the chunk's first create and deleted once its last work message is
        acknowledged (the next chunk's marker is sent ahead, so this costs no round trip per chunk)."""
        if batched and len(records) > 1:  # many jobs: atomic batches, about two fsyncs per chunk (batched.py)
            return await submit_batched(self, records, progress, encoded)
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

        def on_work(chunk: int, ack: PubAck, exc: BaseException | None) -> None:
            finished(chunk, exc)

        def on_create(chunk: int, rec: JobRecord, data: bytes, ack: PubAck, exc: BaseException | None) -> None:
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

    # --- unique while active, debounce (docs/unique-jobs.md) ------------------------------------
    async def _unique_store(self) -> KVStore:
        if self._unique is None:
            kv = await self.conn.kv(self.names.unique_bucket)
            self._unique = KVStore(kv, self.conn.publisher, self.names.unique_bucket)
        return self._unique

    async def _submit_one_active(self, rec: JobRecord) -> "Submitted":
        """Take the key, then write the job; or return the job that holds it (a debounce moves it).

        The key (``active.<digest>`` in the unique bucket) names its holder's job id. It is taken
        by compare-and-set only: created when absent, or updated on the revision read when its
        holder is no longer active (terminal, or for a debounce no longer scheduled), so two
        submits racing for it make one job and no release step exists to be missed. The key is
        taken before the record is written; a holder whose record is missing after ``UNIQUE_GRACE``
        is fenced (``_holder``), so a submitter killed in between never blocks the key for long.
        """
        u = rec.spec.unique
        assert u is not None
        self._encode_checked(rec)  # refused before the key is taken, not after
        bucket = await self._unique_store()
        key = self.names.active_key(unique_digest(rec.spec))
        for _ in range(_UNIQUE_ROUNDS):
            entry = await bucket.get(key)
            if entry is not None:
                holder = await self._holder(entry.value)
                if holder is not None and _holds(holder, u.mode):
                    if u.mode == "while_active":
                        return Submitted(holder.id, "active")
                    moved = await self._debounce(holder, rec)
                    if moved is not None:
                        return moved
                    continue  # it stopped being scheduled meanwhile: the key is free now
            now = self.clock.now()
            value = f"{rec.id} {now!r}".encode()
            # The pending marker goes with the key's compare-and-set: one round trip for both.
            marker, marked = await self.ops.mark_pending([PendingWrite(rec.id, rec.gen, rec.attempt)], "submit")
            take = await (bucket.create_nowait(key, value) if entry is None
                          else bucket.update_nowait(key, value, entry.revision))
            marker_rev = (await self.conn.publisher.wait(marked)).seq
            try:
                await take
            except ConflictError:  # another submit took it first: look again
                (await self.ops.unmark(marker, marker_rev)).add_done_callback(_unmarked)
                continue
            try:
                await self._write_new(rec)
            except ConflictError:
                # Fenced: another submit found the key's record missing past the grace and took
                # the key over. This id is spent (its key in the jobs bucket is a delete marker).
                (await self.ops.unmark(marker, marker_rev)).add_done_callback(_unmarked)
                rec = self._new_records([rec.spec], self.clock.now())[0]
                continue
            # (A failure after the record leaves the marker: the leader's rescuer finishes the job.)
            (await self.ops.unmark(marker, marker_rev)).add_done_callback(_unmarked)
            return Submitted(rec.id, "created")
        raise ConflictError(f"unique key {u.key!r} kept changing; try again")

    async def _write_new(self, rec: JobRecord) -> None:
        """The record (create-if-absent: ConflictError when fenced), then its work message or parked copy."""
        rev = await (await self.ops.create_nowait(rec))
        if rec.state is JobState.SCHEDULED:
            await self._park_scheduled(rec, rev)
        else:
            await self.ops.publish_work(rec, rev)
        self.events.emit(job_event(rec))

    async def _holder(self, value: bytes) -> JobRecord | None:
        """The record a key names; None when that job can never exist (it was pruned, or its
        submitter died before writing it: fenced here)."""
        job_id, _, at = value.decode(errors="replace").partition(" ")
        rec = await self.ops.read_or_none(job_id) if job_id else None
        if rec is not None or not job_id:
            return rec
        try:
            taken_at = float(at)
        except ValueError:
            taken_at = 0.0
        # Its submitter may be between the key and the record (about a round trip): wait, up to the
        # grace after the key was taken (the writer's clock: skew only changes how long this waits).
        deadline = time.monotonic() + max(0.0, min(UNIQUE_GRACE, taken_at + UNIQUE_GRACE - self.clock.now()))
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            rec = await self.ops.read_or_none(job_id)
            if rec is not None:
                return rec
        # Fence the id: a delete marker written only if the record was never written. Its submitter's
        # create-if-absent then fails, so it cannot make a job that does not hold the key.
        store = await self.ops.store()
        fut = await self.conn.publisher.publish(store.subject(job_id), b"",
                                                {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": "0"})
        try:
            await self.conn.publisher.wait(fut)
        except Exception as exc:
            if not is_wrong_last_sequence(exc):
                raise
            return await self.ops.read_or_none(job_id)  # written after all (or deleted: None)
        log.warning("unique key: job %s was never written (its submitter died); the key is free", job_id)
        return None

    async def _debounce(self, holder: JobRecord, rec: JobRecord) -> "Submitted | None":
        """A scheduled debounced job takes this submit's spec and runs ``debounce`` from now (but no
        later than ``max_wait`` after its first submit): a new generation, parked before the record's
        compare-and-set, so whatever happens in between the old parked copy is stale by its gen and
        the new one finds either this record or the old one (then it is stale too). None when the
        holder moved meanwhile (the caller looks at the key again)."""
        u = rec.spec.unique
        assert u is not None and u.debounce is not None
        now = self.clock.now()
        run_at = now + u.debounce
        if u.max_wait is not None:
            run_at = max(now, min(run_at, holder.created_at + u.max_wait))
        spec = msgspec.structs.replace(rec.spec, run_at=run_at)
        new = msgspec.structs.replace(holder, spec=spec, gen=holder.gen + 1, scheduled_at=run_at,
                                      updated_at=now, auth=None, revision=0)
        self.ops.auth.sign_records([new])  # the spec changed: a new signature over it
        self._encode_checked(new)
        await self._park_scheduled(new, holder.revision)
        try:
            new = await self.ops.write(new, holder.revision)
        except ConflictError:
            return None
        self.events.emit(job_event(new, message=f"debounced: runs at {run_at:.3f} with the last submit's args"))
        return Submitted(holder.id, "debounced")

    async def _park_scheduled(self, rec: JobRecord, rev: int) -> None:
        """A job for later waits in the delayed store until the scheduler promotes it."""
        await park(self.conn, rec, rev)
