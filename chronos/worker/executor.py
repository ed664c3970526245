"""Runs one delivered job: running transition, the call under a timeout, outcome, ack/nak/term.

Order of writes for crash safety: the record is written (compare-and-set) before
the message is acked, so a worker killed in between leaves a message that is
redelivered and found terminal (acked and skipped), never a lost job. A job
whose record moved under us (cancel requested, manual retry, another worker)
is re-read and the outcome applied to the fresh record.

Every run is counted. Each attempt keeps the server's delivery count of its
message (``Attempt.delivery``) and the record the number of deliveries of the
current generation it accounts for (``delivered``: runs plus hand-backs). A
delivery count above it means runs started that no write recorded (a worker
killed inside the deferred running write's window): they are added as ``lost``
attempts. A worker that finishes a run and finds its job taken over by a
redelivery writes its real outcome into its own attempt, marked as a
concurrent run, instead of dropping it.

A run whose outcome write failed (the server went away between the run and the write) is
remembered here with its real outcome, and written into the record by the next delivery
of that job on this worker, before the new attempt. The delivery count alone cannot be
trusted for it: a server killed before its consumer state reached disk delivers the
message again as delivery 1, which would otherwise take the fast path and show one run.

Mixed fleets: a job whose task this worker lacks is handed back (nak with a
short delay) before any state change and without spending an attempt, and
discarded only once no live worker on its queue has registered the task for
``worker.unknown_task_after`` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Literal, NamedTuple, Protocol

import msgspec
from nats.aio.msg import Msg

from .. import cas, codec
from ..cancellation import take_interrupt
from ..clock import Clock
from ..errors import Cancel, ChronosError, ConflictError, JobNotFoundError, MalformedMessageError, Retry
from ..events import EventPublisher
from ..jobs import JobOps, job_event
from ..models import Attempt, DLQEntry, JobMessage, JobRecord
from ..outcomes import Outcome
from ..publisher import Acks, delivery_info, is_transient, is_wrong_last_sequence
from ..states import TERMINAL, JobState, transition
from ..workflows import WF_KEY
from .advance import Advancer, NodeRefused
from .context import JobContext, reset_current, set_current
from .progress import ProgressHub
from .registry import Registry, TaskDef
from .replay import ReplayGuard
from .sync_exec import NOT_STARTED, SyncRunner

log = logging.getLogger(__name__)

MAX_ERROR = 2000
MAX_TRACEBACK = 16_000
# The control bucket keeps cancel requests a day; a message older than half that is read
# before it runs rather than trusted to have its cancel (if any) known to this worker.
FAST_PATH_MAX_AGE = 43_200.0
MAX_ATTEMPTS_KEPT = 20  # older attempts stay in the archive, not in the KV record
# How long a run whose outcome write was cut by a lost connection waits for the connection to
# write it, rather than be run again (a restart takes seconds; an outage of minutes is ridden out
# too: given up, the run is remembered only by this process). Shutdown cuts it short (stop_by).
COMMIT_RETRY_FOR = 300.0
# How long a delivery whose running write cannot get through (the stream electing a leader after
# a node died, the server restarting) is held and tried again, kept alive by in-progress acks.
# Nakked instead, it came back each second and every delivery counted as a run: 5 000 no-op
# jobs of an R3 cluster whose node was SIGKILLed went to the DLQ, "ran 7 times", never run.
START_RETRY_FOR = 60.0
MAX_UNRECORDED = 10_000  # runs whose outcome write failed, remembered until their job's next delivery here
OVERLAP_NOTE = "ran concurrently with a redelivery of this job (its worker did not ack within ack_wait)"
SUPERSEDED_NOTE = ("ran as generation {gen} before its running write, while the record moved on (now generation "
                   "{now}, {state}); its outcome was not applied")


Interrupt = Literal["timeout", "cancel", "shutdown", "superseded"]  # why the service stopped a call


@dataclass(slots=True)
class Running:
    """A job this worker holds right now."""

    msg: Msg
    job_id: str
    task: str
    weight: int
    started_mono: float
    started_at: float
    progress_mono: float
    ctx: JobContext | None = None
    call_task: asyncio.Task[Any] | None = None  # set only while the task function runs
    deadline: float = float("inf")
    cancel_deadline: float = float("inf")  # a cancel was signalled: hard stop at this monotonic time
    interrupt: Interrupt | None = None  # why the service interrupted it
    gen: int = 0
    deferred: tuple[JobRecord, int] | None = None  # running record not yet written, and the revision under it
    running_write: asyncio.Task[int | None] | None = None
    key: int = 0  # the service's handle for it
    runner: asyncio.Task[Any] | None = None  # the asyncio task that runs it (known before it starts)
    delivered: int = 0  # the server's delivery count of this message
    sync: bool = False  # runs in a thread or a process: holds one of the sync slots
    stuck: str | None = None  # set when an interrupted sync call could not be stopped (see Executor)
    ended: Attempt | None = None  # this run's attempt as ``_finish`` is about to write it
    began: Attempt | None = None  # this run's attempt as it started (how the record is searched for it)
    progress: Any = None  # its progress writer (worker/progress.py), made on its first report
    completing: bool = False  # ran; its outcome write is in flight: holds no slot, its message stays unacked
    msg_gen: int = -1  # the generation of the record its message carries
    holding: bool = False  # its running write got no answer: held, tried again, its task not called

    def interrupt_with(self, why: Interrupt) -> bool:
        """Interrupt the running call (no-op outside it). True if it was interrupted."""
        if self.call_task is None or self.interrupt is not None:
            return False
        self.interrupt = why
        self.call_task.cancel()
        return True


def type_name(error: str | None) -> str:
    """The exception type at the head of a short error line ("KeyError: 'x'" -> "KeyError")."""
    return (error or "error").split(":", 1)[0]


class _Outcome:
    """What happened to one attempt, with what ``_finish`` needs to write it."""

    __slots__ = ("kind", "result", "error", "tb", "delay", "final")

    def __init__(self, kind: Outcome, *, result: Any = None, error: str | None = None, tb: str | None = None,
                 delay: float = 0.0, final: bool = False) -> None:
        self.kind = kind
        self.result = result
        self.error = error
        self.tb = tb
        self.delay = delay
        self.final = final  # an error the task's retry_on does not cover: no further attempt


class _Write(NamedTuple):
    """``_finish``'s decision to write ``new`` over ``seen``, then ``ack`` the message."""

    seen: JobRecord
    new: JobRecord
    ack: Callable[[], Any]


class _Elsewhere(NamedTuple):
    """``_finish``'s decision not to write: the record moved elsewhere (``discard`` None), or the
    job goes to the DLQ with that reason and these attempts."""

    record: JobRecord
    rev: int
    discard: str | None
    attempts: list[Attempt] | None
    landed: bool = False  # the record already carries this run's outcome (a write whose answer was lost)


class Host(Protocol):
    """What the executor needs from whoever holds its jobs (the WorkerService: slots, peers,
    cancels, its task group). ``Alone`` is the stand-in for an executor used by itself."""

    def is_running_here(self, job_id: str, *, besides: Running) -> bool:
        """Another delivery of ``job_id`` than ``besides`` (the one asking) runs on this worker right now."""

    def held_unrun(self, job_id: str, gen: int, *, besides: Running) -> set[int]:
        """Deliveries of (job, gen) held here, other than ``besides``, whose task was not called
        and whose running write got no answer (``Running.holding``)."""

    def released(self, run: Running) -> None:
        """A job whose ``execute`` returned True is finished with (its slot is free)."""

    def completing(self, run: Running) -> None:
        """The job has run and its outcome write is in flight (``released`` follows its commit):
        its slot may serve the next job while the message stays held, unacked, until then."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task the host owns (its task group)."""

    def adjust_weight(self, run: Running, weight: int) -> None:
        """The job's task is known: it holds ``weight`` slots."""

    def pending_cancel(self, job_id: str, gen: int) -> str | None:
        """The reason of a cancel of (job, gen) that arrived before its delivery, taken once."""

    def classify(self, run: Running, is_sync: bool) -> None:
        """The job's task is known: sync (holds a thread or process) or not."""

    async def task_absent_for(self, task: str, queue: str) -> float:
        """Seconds no live worker serving ``queue`` has had ``task``; 0 if one has it now."""


class Alone:
    """The host of an executor used by itself: no peers, no slots, its own set of tasks."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def is_running_here(self, job_id: str, *, besides: Running) -> bool:
        return False

    def held_unrun(self, job_id: str, gen: int, *, besides: Running) -> set[int]:
        return set()

    def released(self, run: Running) -> None:
        pass

    def completing(self, run: Running) -> None:
        pass

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # owned until done: the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    def adjust_weight(self, run: Running, weight: int) -> None:
        run.weight = weight

    def pending_cancel(self, job_id: str, gen: int) -> str | None:
        return None

    def classify(self, run: Running, is_sync: bool) -> None:
        run.sync = is_sync

    async def task_absent_for(self, task: str, queue: str) -> float:
        """Nothing is known of peers: infinite, so an unknown task is discarded at once."""
        return math.inf


class Executor:
    def __init__(
        self,
        *,
        ops: JobOps,
        registry: Registry,
        events: EventPublisher,
        clock: Clock,
        worker_id: str,
        default_timeout: float,
        max_result_bytes: int,
        sync: SyncRunner,
        unknown_task_after: float = 300.0,
        host: Host | None = None,
        limiter: Any = None,
    ) -> None:
        self.host: Host = host if host is not None else Alone()
        # Fleet-wide rate and concurrency limits (worker/limiter.py); None: no gate at all.
        self.limiter = limiter
        self.ops = ops
        self.registry = registry
        self.events = events
        self.clock = clock
        self.worker_id = worker_id
        self.default_timeout = default_timeout
        self.max_result_bytes = max_result_bytes
        self.sync = sync
        self.unknown_task_after = unknown_task_after
        self.handed_back = 0  # deliveries handed back because this worker lacks their task
        self.overlaps = 0  # runs found to have overlapped a redelivery of the same job
        self.running_writes_lost = 0  # running writes cut by a lost connection (the outcome write covers them)
        self.commit_retries = 0
        self.start_retries = 0  # running writes held and tried again (START_RETRY_FOR)
        # Monotonic time by which outcome writes stop waiting for a lost connection: the
        # worker's shutdown sets it (its grace), so a drain is not held by a server that is gone.
        self.stop_by = math.inf  # completed writes cut by a lost connection, written again (not rerun)
        # Set by the service for a while after its loop was blocked: deliveries may have sat in the
        # socket past ack_wait, so none takes the unchecked fast path.
        self.suspect = False
        self.processed = 0
        self.failed = 0
        self.acks = Acks(ops.publisher)
        self.replay = ReplayGuard(ops.conn)  # acked messages a re-created consumer delivers again
        self.progress = ProgressHub(ops, events, clock)  # current_job().progress(): record and event
        # Workflows: a node's terminal event (emitted after its write is committed) advances its workflow.
        self.advancer = Advancer(ops, events, self.host.spawn)
        # job id -> (gen, the attempt): runs here whose outcome write failed (see the module doc)
        self.unrecorded: dict[str, tuple[int, Attempt]] = {}
        # (job id, gen) -> deliveries handed back here unrun, their running write unanswered: the
        # job's next delivery here counts them as hand-backs, not as runs (``_running``).
        self.unrun: dict[tuple[str, int], set[int]] = {}
        # job id -> waiters (or None): outcome writes in flight. A delivery of such a job waits for
        # the write to settle: the server may redeliver before the write's failure is known.
        self._writing: dict[str, list[asyncio.Future[None]] | None] = {}

    # --- entry -------------------------------------------------------------------------
    async def execute(self, run: Running) -> bool:
        """Never raises (but CancelledError): a task failure is an outcome, not a crash of the worker.

        True when the job's last write is still in flight: a PubAck callback finishes it and
        calls ``released(run)``. False when the job is done with here and now.
        """
        msg = run.msg
        try:
            try:
                job = codec.decode(msg.data, JobMessage)
            except (MalformedMessageError, ChronosError) as exc:
                await self._malformed(msg, str(exc))
                return False
            return await self._run_job(run, job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must survive anything; leave the message for redelivery
            if is_transient(exc):  # the server away or not answering: expected in an outage, no traceback
                log.warning("job message %s: the server did not answer (%s); it will be redelivered",
                            msg.subject, type(exc).__name__)
            else:
                log.exception("internal error handling job message %s; it will be redelivered", msg.subject)
            self._remember_unrecorded(run)
            if run.holding:
                self._remember_unrun(run)
            await self.acks.nak(msg, 1.0)
            return False

    # --- the job -------------------------------------------------------------------------
    async def _run_job(self, run: Running, job: JobMessage) -> bool:
        msg = run.msg
        delivered, stored_at = delivery_info(msg)
        run.delivered = delivered
        run.job_id, run.task = job.record.id, job.record.spec.task
        run.msg_gen = job.record.gen
        taskdef = self.registry.get(job.record.spec.task)
        if taskdef is None:  # before any state change: another worker may have it
            await self._hand_back(msg, job.record, job.rev, delivered)
            return False
        self.host.classify(run, not taskdef.is_async)
        limiter = self.limiter
        if limiter is not None and limiter.applies(taskdef, job.record.spec.queue):
            # Over a limit: handed back without an attempt, before any state change (limiter.py).
            if not await limiter.gate(self, run, job, taskdef, delivered):
                return False
        settled = False
        if self._writing and job.record.id in self._writing:
            await self._write_settled(job.record.id)  # then decide on the stored record, not the carried one
            settled = True
        if (not settled and delivered == 1 and job.record.state is JobState.AVAILABLE and not self.suspect
                and self.clock.now() - stored_at < FAST_PATH_MAX_AGE
                and not (self.unrecorded and job.record.id in self.unrecorded)
                and await self.replay.fresh(msg, stored_at)):  # not a re-created consumer's replay (replay.py)
            # First delivery of a fresh message: the carried record is current unless someone
            # cancelled it meanwhile (workers learn that from the control watch). Defer the
            # running write: a short job gets one compare-and-set, available -> completed.
            record, rev = self._running(job.record, delivered), job.rev
            run.deferred = (record, rev)
        else:
            started = await self._start_riding(run, job.record, job.rev, delivered)
            if started is None:
                return False
            record, rev = started
        run.began = record.attempts[-1] if record.attempts else None  # _running appended this run's
        refusal = self.ops.auth.check(record)  # signing.py: only specs a trusted key signed run
        if refusal is not None:
            await self._discard(msg, record, rev, refusal, None)
            return False
        runs = _runs_in_gen(record)
        if runs > record.spec.max_attempts:
            # This delivery would be run number ``runs``: it is not run, and its attempt (opened by
            # the running write) is taken back, so the record counts only the runs there were.
            await self._discard(
                msg, record, rev,
                f"attempts exhausted: ran {runs - 1} times, max_attempts {record.spec.max_attempts} "
                "(a run's worker stopped answering: lost, or its event loop blocked)", None,
                unrun=(self.worker_id, delivered),
            )
            return False
        self.host.adjust_weight(run, taskdef.weight)
        if run.deferred is None:  # a deferred running state is announced when it is written
            self.events.emit(job_event(record))
        run.gen = record.gen
        reason = self.host.pending_cancel(record.id, record.gen)
        if reason is not None:  # cancelled between delivery and start: never call the task
            outcome = _Outcome(Outcome.CANCELLED, error=reason)
        else:
            try:
                outcome = await self._call(run, record, taskdef, rev)
            except NodeRefused as exc:  # a workflow node whose turn has not come (advance.py): never called
                run.deferred = None
                await self._discard(msg, record, rev, str(exc), None)
                return False
        return await self._finish(run, record, rev, outcome, runs)

    async def _start_riding(self, run: Running, record: JobRecord, rev: int,
                            delivered: int) -> tuple[JobRecord, int] | None:
        """``_start``, held through a server that does not answer (503 while a stream elects its
        leader, a timeout, a reconnect) for up to ``START_RETRY_FOR``: nothing has run, and a
        delivery handed back would count as a run (``_runs_in_gen``). Raises past it."""
        deadline = self.clock.monotonic() + START_RETRY_FOR
        pause = 0.1
        again = False
        tried: list[float] = []  # start times of the running writes sent: one may have landed
        while True:
            try:
                attempt = self._start(run, record, rev, delivered, tried=tried)
                if again and math.isfinite(self.stop_by):  # draining: a server that does not answer is not waited out
                    started = await asyncio.wait_for(attempt, max(0.0, self.stop_by - self.clock.monotonic()))
                else:
                    started = await attempt
                run.holding = False
                return started
            except Exception as exc:
                until = min(deadline, self.stop_by)
                if not is_transient(exc) or self.clock.monotonic() >= until:
                    raise
                if not again:
                    log.warning("job %s: the server did not answer its running write (%s); held and tried again",
                                record.id, type(exc).__name__)
                self.start_retries += 1
                run.holding = again = True
                await self._connected(until)
                # A drain that began meanwhile cuts the pause short (the service then cancels this run).
                await self.clock.sleep(max(0.0, min(pause, self.stop_by - self.clock.monotonic())))
                pause = min(2.0, pause * 2)

    async def _start(self, run: Running, record: JobRecord, rev: int, delivered: int,
                     *, tried: list[float] | None = None) -> tuple[JobRecord, int] | None:
        """Move the record to running. None when the message is stale (then it was acked or left alone).

        The first try uses the record carried in the message (no read); a conflict means it
        moved (a retry, a cancel, a lost worker), so read it and decide again. ``tried``: the
        start times of this delivery's running writes so far (added to here); after a try whose
        answer was lost, its write may have landed: found in the record, it is taken as made.
        """
        msg = run.msg
        carried, msg_gen = record, record.gen
        again = bool(tried)

        def decide(rec: JobRecord, _rev: int) -> JobRecord | cas.Stop[str | tuple[JobRecord, int]]:
            if again and _started_here(rec, self.worker_id, delivered, tried):
                return cas.Stop((rec, _rev))  # the lost try had landed: this run is the one it recorded
            if again and rec.state is JobState.RUNNING:
                # Held, never run: a run recorded meanwhile (this message delivered again, here or
                # elsewhere, maybe counted from 1 by a restarted server) is not taken over. Not
                # acked: that delivery acks it; a dead worker's is found by a later delivery.
                return cas.Stop("superseded")
            if rec.gen != msg_gen or rec.state in TERMINAL or rec.state is JobState.SCHEDULED:
                # A newer message exists for this job, or it is finished: this delivery is stale.
                return cas.Stop("stale")
            fresh = rec is not carried
            if fresh and rec.state is JobState.RUNNING and rec.worker == self.worker_id \
                    and self.host.is_running_here(rec.id, besides=run):
                return cas.Stop("here")  # redelivered while it still runs here; the running attempt acks it
            mine = self.unrecorded.get(rec.id) if self.unrecorded else None
            if fresh and rec.delivered_gen == rec.gen and rec.delivered >= delivered \
                    and not (mine is not None and mine[0] == rec.gen and rec.worker == self.worker_id):
                # A later delivery of this message is already recorded (this one sat in a buffer
                # past ack_wait, e.g. behind a blocked loop): it runs there. Not acked: that would
                # ack the other worker's delivery. Unless that delivery was our own run whose outcome
                # write failed, and the server counts deliveries from 1 again (its consumer state lost).
                log.warning("job %s: delivery %d is superseded by delivery %d (worker %s); not running it",
                            rec.id, delivered, rec.delivered, rec.worker)
                return cas.Stop("superseded")
            new = self._running(rec, delivered, run)
            if tried is not None:
                tried.append(new.attempts[-1].started_at)
            return new

        async def write(new: JobRecord, rev: int) -> tuple[JobRecord, int] | str:
            return new, await (await self.ops.write_nowait(new, rev))

        try:
            started = await cas.update(lambda: self.ops.read_versioned(carried.id), decide, write,
                                       seen=None if again else (record, rev), what=f"job {record.id}")
        except JobNotFoundError:
            log.info("job message for %s has no record (pruned or withdrawn); dropping it", record.id)
            await self.acks.ack(msg)
            return None
        if started == "stale":
            self.unrecorded.pop(record.id, None)  # finished (its write landed after all) or superseded
            await self.acks.ack(msg)
            return None
        if isinstance(started, str):
            return None
        if self.unrecorded:
            self.unrecorded.pop(record.id, None)  # written by _running into this record
        if self.unrun:
            self.unrun.pop((record.id, msg_gen), None)  # counted by _running as hand-backs
        return started

    def _running(self, record: JobRecord, delivered: int, run: Running | None = None) -> JobRecord:
        """The record moved to running for delivery ``delivered``, with every earlier run counted,
        and the deliveries this worker knows never ran (``_unrun_here``) counted as hand-backs."""
        now = self.clock.now()
        attempts = list(record.attempts)
        gave_back = 0
        found = self.unrecorded.get(record.id) if self.unrecorded else None
        prior = found[1] if found is not None and found[0] == record.gen else None
        if record.state is JobState.RUNNING and attempts and attempts[-1].ended_at is None:
            last = attempts[-1]
            if prior is not None and last.worker == self.worker_id and last.delivery == prior.delivery:
                # Our own run whose running write landed but whose outcome write did not.
                attempts[-1] = msgspec.structs.replace(prior, number=last.number)
                prior = None
            elif self.unrun and last.worker == self.worker_id and last.delivery > 1 \
                    and record.delivered_gen == record.gen \
                    and last.delivery in self.unrun.get((record.id, record.gen), ()):
                # Our own delivery whose running write landed unanswered, then handed back unrun.
                attempts.pop()
                gave_back = 1
            else:
                attempts[-1] = _end_attempt(
                    last, now, Outcome.LOST,
                    "its worker did not ack within ack_wait (lost, or its event loop was blocked); redelivered")
        same_gen = record.delivered_gen == record.gen
        attempt_no = record.attempt - gave_back
        accounted = record.delivered if same_gen else 0
        if prior is not None and not any(a.worker == prior.worker and a.started_at == prior.started_at
                                         for a in attempts):
            attempt_no += 1
            attempts.append(msgspec.structs.replace(prior, number=attempt_no))
            accounted = max(accounted, prior.delivery)
        handed = (record.handed_back if same_gen else 0) + gave_back
        unrun: set[int] = set()
        if delivered > accounted + 1 and run is not None:
            unrun = {d for d in self._unrun_here(record.id, record.gen, run) if accounted < d < delivered}
            handed += len(unrun)
        attempt_no = add_unrecorded(attempts, attempt_no, accounted, delivered, now, skip=unrun)
        attempt_no += 1
        attempts.append(Attempt(number=attempt_no, started_at=now, worker=self.worker_id, delivery=delivered))
        return transition(record, JobState.RUNNING, now, attempt=attempt_no,
                          attempts=attempts[-MAX_ATTEMPTS_KEPT:], worker=self.worker_id,
                          delivered=delivered, delivered_gen=record.gen, handed_back=handed)

    def _unrun_here(self, job_id: str, gen: int, run: Running) -> set[int]:
        """Deliveries of (job, gen) this worker knows did not run: handed back after their running
        write got no answer, or held here now for that. Such a write cannot land once this one
        has (a compare-and-set on the same record), so the held ones will not run either."""
        known = self.unrun.get((job_id, gen)) if self.unrun else None
        held = self.host.held_unrun(job_id, gen, besides=run)
        # Not a remembered delivery 1: a restarted server that lost its consumer state counts from
        # 1 again, and its new delivery 1 may have run elsewhere on the fast path, unrecorded.
        return (held | (known - {1})) if known else held

    def _remember_unrun(self, run: Running) -> None:
        """This delivery is handed back unrun (its running write never answered)."""
        self.unrun.setdefault((run.job_id, run.msg_gen), set()).add(run.delivered)
        while len(self.unrun) > MAX_UNRECORDED:
            self.unrun.pop(next(iter(self.unrun)))

    async def _hand_back(self, msg: Msg, record: JobRecord, rev: int, delivered: int) -> None:
        """This worker lacks the task: leave the job to one that has it, or discard it past the bound.

        Recorded (a compare-and-set, no state change, no attempt) so the run count stays exact;
        not on the hot path: only a mixed fleet's foreign jobs come here."""
        task, queue = record.spec.task, record.spec.queue
        absent = await self.host.task_absent_for(task, queue)
        if absent >= self.unknown_task_after:
            bound = self.unknown_task_after
            reason = (f"unknown task {task!r}: no live worker on queue {queue!r} has registered it "
                      f"for {absent:.0f}s (bound worker.unknown_task_after = {bound:g}s)"
                      if math.isfinite(absent) else f"unknown task {task!r}: no worker registers it")
            await self._discard(msg, record, rev, reason, None)
            return
        carried, msg_gen = record, record.gen

        def decide(rec: JobRecord, _rev: int) -> JobRecord | cas.Stop[int | None]:
            if rec.gen != msg_gen or rec.state in TERMINAL or rec.state is JobState.SCHEDULED:
                return cas.Stop(None)  # stale delivery
            same_gen = rec.delivered_gen == rec.gen
            accounted = rec.delivered if same_gen else 0
            handed = (rec.handed_back if same_gen else 0) + 1
            if rec is not carried and accounted >= delivered:
                return cas.Stop(handed)  # already accounted for (a later delivery is recorded): nothing to write
            now = self.clock.now()
            attempts = list(rec.attempts)
            attempt_no = add_unrecorded(attempts, rec.attempt, accounted, delivered, now)
            return msgspec.structs.replace(rec, delivered=delivered, delivered_gen=rec.gen,
                                           handed_back=handed, updated_at=now, attempt=attempt_no,
                                           attempts=attempts[-MAX_ATTEMPTS_KEPT:])

        async def write(new: JobRecord, rev: int) -> int | None:
            await (await self.ops.write_nowait(new, rev))
            return new.handed_back

        try:
            handed = await cas.update(lambda: self.ops.read_versioned(carried.id), decide, write,
                                      seen=(record, rev), what=f"job {record.id}")
        except JobNotFoundError:
            await self.acks.ack(msg)
            return
        except ConflictError:  # kept changing: hand it back unrecorded; a later delivery counts it
            handed = record.handed_back + 1
        if handed is None:
            await self.acks.ack(msg)  # stale delivery
            return
        self.handed_back += 1
        if absent > 0:
            # Nobody has it right now: come back about when the bound runs out (never past 30 s,
            # so a worker that starts meanwhile gets it soon). Fewer deliveries than max_deliver.
            delay = min(30.0, max(1.0, self.unknown_task_after - absent), 2.0 ** handed)
        else:
            # A live worker has it: a short delay, growing slowly (x1.5: ten hand-backs wait ~20 s
            # in all, where doubling waited ~100 s and made a job that kept landing on an idle
            # foreign worker late), so a busy peer is still not outrun by this idle worker's pulls
            # before JetStream's max_deliver ends it (50 deliveries: over 20 minutes).
            delay = min(30.0, 0.2 * 1.5 ** (handed - 1))
        log.info("job %s: task %r is not served here; handed back for %.1fs (%s)", record.id, task, delay,
                 "a live worker has it" if absent <= 0 else f"no live worker has it for {absent:.0f}s")
        await self.acks.nak(msg, delay)

    def persist_running(self, run: Running) -> Coroutine[Any, Any, int | None]:
        """The job outlived the deferral: write ``running`` now. None if the record moved
        (cancelled before it started, or another delivery runs it): then the call is interrupted.

        The deferred record is taken now, not when the task first runs: the job may finish
        (and clear ``run.deferred``) before then."""
        assert run.deferred is not None
        return self._persist_running(run, run.deferred)

    async def _persist_running(self, run: Running, deferred: tuple[JobRecord, int]) -> int | None:
        record, rev = deferred
        try:
            new_rev = await (await self.ops.write_nowait(record, rev))
            conflict = False
        except ConflictError:
            conflict = True
        except Exception as exc:
            # Not landed, or its PubAck lost (a server gone, restarting, out of storage): the
            # outcome write settles which, as it reads the record when this returns None. This
            # runs in the worker's task group: raised, it ended the group, and the worker.
            self.running_writes_lost += 1
            log.warning("job %s: its running write failed (%s); its outcome write records the run",
                        record.id, type(exc).__name__)
            return None
        if conflict:
            try:
                current = await self.ops.read_or_none(record.id)
            except Exception as exc:
                self.running_writes_lost += 1
                log.warning("job %s: its running write lost a compare-and-set and the record could not be read "
                            "(%s); its outcome write decides", record.id, type(exc).__name__)
                return None
            if current is None or current.state in TERMINAL or current.gen != record.gen:
                if run.ctx is not None:
                    run.ctx.cancel_reason = (current.error if current else None) or "cancelled before it started"
                run.interrupt_with("cancel")
            elif current.state is JobState.RUNNING and current.worker != self.worker_id:
                # A later delivery of this job runs on another worker (this one sat past ack_wait):
                # stop this run; _finish records it as a concurrent run.
                log.warning("job %s: delivery %d overlaps delivery %d on %s; stopping it here",
                            record.id, run.delivered, current.delivered, current.worker)
                run.interrupt_with("superseded")
            return None
        self.events.emit(job_event(record))
        return new_rev

    async def _call(self, run: Running, record: JobRecord, taskdef: TaskDef, rev: int = 0) -> _Outcome:
        spec = record.spec
        ctx = JobContext(record.id, spec.task, record.attempt, spec.max_attempts, self.worker_id)
        run.ctx = ctx
        ctx._progress = self.progress.hook(run, record, rev)
        timeout = spec.timeout or self.default_timeout
        args, kwargs = (spec.args, {}) if isinstance(spec.args, list) else ((), spec.args)
        token = set_current(ctx)
        run.call_task = run.runner or asyncio.current_task()
        try:
            if spec.annotations and WF_KEY in spec.annotations:  # a workflow node: may it run? its parents' results
                args, kwargs = await self.advancer.call_args(record, args, kwargs)
            # Awaited in this task, not a task of its own: one task per job on the hot path.
            if taskdef.is_async:
                run.deadline = self.clock.monotonic() + timeout  # the service's sweeper interrupts past it
                result = await taskdef.fn(*args, **kwargs)
            else:
                # The sync runner sets the deadline when the thread (or process) starts.
                result = await self.sync.call(run, taskdef.fn, args, kwargs, timeout)
        except asyncio.CancelledError:
            why = run.interrupt
            if why is None:
                raise
            take_interrupt()
            return _interrupted(why, run, timeout, ctx)
        except NodeRefused:
            raise
        except Retry as r:
            return _Outcome(Outcome.RETRY, error=r.reason, delay=r.delay)
        except Cancel as c:
            return _Outcome(Outcome.CANCELLED, error=c.reason)
        except Exception as exc:
            final = bool(taskdef.retry_on) and not isinstance(exc, taskdef.retry_on)
            return _Outcome(Outcome.ERROR, error=_short(exc), tb=_tb(exc), final=final)
        finally:
            run.call_task = None  # from here on the job cannot be interrupted
            reset_current(token)
        return _Outcome(Outcome.COMPLETED, result=result)

    async def _finish(self, run: Running, record: JobRecord, rev: int, outcome: _Outcome, runs: int,
                      *, commit_in_callback: bool = True) -> bool:
        """Write the attempt's outcome (compare-and-set), then ack/nak/term and announce it.

        A completed job's write is committed from its PubAck callback (``_committed``): no task
        wake-up per job; the message stays held until the ack is sent, while its slot serves the
        next job (``Host.completing``). Returns True then.
        """
        now = self.clock.now()
        duration = now - run.started_at
        run.deferred = None  # no late running write from here on
        job_id = record.id
        if job_id not in self._writing:
            self._writing[job_id] = None
        in_callback = False
        try:
            try:
                if run.running_write is not None or run.progress is not None:  # else no coroutine on the hot path
                    record, rev = await self._outcome_base(run, record, rev)
                in_callback = await self._finish_write(run, record, rev, outcome, runs, commit_in_callback, now,
                                                       duration)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await self._rewrite(run, job_id, outcome, runs, exc, now, duration)
            return in_callback
        finally:
            if not in_callback:  # else _committed or _commit_failed settles it
                self._settle(job_id)

    async def _outcome_base(self, run: Running, record: JobRecord, rev: int) -> tuple[JobRecord, int]:
        """The record and revision to write the outcome on: after the running write and the last
        progress report, if any."""
        if run.running_write is not None:
            new_rev = await run.running_write
            run.running_write = None  # a retry of this write after a conflict must not reuse it
            if new_rev is None:
                record = await self.ops.read(record.id)
                rev = record.revision
            else:
                rev = new_rev
        if run.progress is not None:  # its last report is written first; the outcome goes on top
            record, rev = await self.progress.close(run, record, rev)
        return record, rev

    async def _rewrite(self, run: Running, job_id: str, outcome: _Outcome, runs: int, exc: BaseException,
                       now: float, duration: float) -> None:
        """Write an outcome whose write failed: on the fresh record after a lost compare-and-set;
        after a lost connection (the server killed or restarting), once it is back. The outcome
        is known, so the job is not run again for want of a write: the message stays held (kept
        alive by the progress loop) meanwhile. A write that landed but whose PubAck was lost is
        found in the record and only acked. Raises past ``COMMIT_RETRY_FOR`` (then the caller
        remembers the run and the job runs again)."""
        deadline = self.clock.monotonic() + COMMIT_RETRY_FOR
        retry = False
        while True:
            if is_transient(exc):
                if self.clock.monotonic() >= min(deadline, self.stop_by):
                    raise exc
                if retry:  # up but not answering (JetStream still starting, say): no spin
                    await self.clock.sleep(0.25)
                self.commit_retries += 1
                await self._connected(min(deadline, self.stop_by))
            elif not is_wrong_last_sequence(exc):
                raise exc
            retry = True
            try:
                attempt = self._write_again(run, job_id, outcome, runs, now, duration)
                if math.isfinite(self.stop_by):  # draining: a server that does not answer is not waited out
                    await asyncio.wait_for(attempt, max(0.0, self.stop_by - self.clock.monotonic()))
                else:
                    await attempt
                return
            except Exception as again:
                if not is_transient(again):
                    raise
                exc = again

    async def _write_again(self, run: Running, job_id: str, outcome: _Outcome, runs: int, now: float,
                           duration: float) -> None:
        # A write that landed is found by _finish_write's decision, on this read or on the re-read
        # after its compare-and-set loses to it: a server's direct get may answer before the stream
        # has stored a write it read earlier (seen after a SIGCONT).
        fresh = await self.ops.read(job_id)
        await self._finish_write(run, fresh, fresh.revision, outcome, runs, False, now, duration)

    async def _ack_landed(self, run: Running, record: JobRecord, duration: float) -> None:
        """This run's outcome is in the record (its write's PubAck was lost): settle the message
        as that write would have."""
        state = record.state
        if state is JobState.COMPLETED:
            await self.acks.ack(run.msg)
            self.processed += 1
        elif state is JobState.RETRYABLE:
            await self.acks.nak(run.msg, max(0.0, (record.scheduled_at or 0.0) - self.clock.now()))
            self.failed += 1
        elif state is JobState.AVAILABLE:
            await self.acks.nak(run.msg)
        else:
            await self.acks.term(run.msg)
            self.failed += 1
        self.events.emit(job_event(record, error=record.error if state is not JobState.COMPLETED else None,
                                   duration=duration))

    def _settle(self, job_id: str) -> None:
        """The outcome write of ``job_id`` is done with (written, or failed and remembered)."""
        waiters = self._writing.pop(job_id, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def _write_settled(self, job_id: str) -> None:
        waiters = self._writing.get(job_id)
        if waiters is None:
            self._writing[job_id] = waiters = []
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        await fut

    async def _finish_write(self, run: Running, record: JobRecord, rev: int, outcome: _Outcome, runs: int,
                            commit_in_callback: bool, now: float, duration: float) -> bool:
        msg = run.msg
        job_id = record.id

        mine = run.began

        def decide(rec: JobRecord, rev: int) -> _Write | cas.Stop[_Elsewhere]:
            if _landed(rec, run, outcome):  # only on a write again (_rewrite): the first one had landed
                return cas.Stop(_Elsewhere(rec, rev, None, None, landed=True))
            if rec.state is JobState.AVAILABLE and rec.gen == run.gen and not rec.cancel_requested \
                    and not (rec.delivered_gen == rec.gen and rec.delivered >= run.delivered) \
                    and not _recorded(rec, mine):
                # The run took the fast path (its running write deferred) and the record's revision
                # moved without anyone starting or ending the job: the carried revision was stale.
                # Nothing else ran this delivery, so the run is written as usual, started as it did.
                rec = self._running(rec, run.delivered)
                if mine is not None:
                    rec.attempts[-1] = msgspec.structs.replace(rec.attempts[-1], started_at=mine.started_at)
            last = rec.attempts[-1] if rec.attempts else None
            if rec.state is not JobState.RUNNING or rec.worker != self.worker_id \
                    or (last is not None and last.delivery not in (0, run.delivered)):
                # Someone else moved it (cancelled, retried by hand, taken over by a redelivery).
                return cas.Stop(_Elsewhere(rec, rev, None, None))
            attempts = list(rec.attempts)
            if attempts:
                attempts[-1] = run.ended = _end_attempt(attempts[-1], now, outcome.kind, outcome.error, outcome.tb)
            ack: Callable[[], Any]
            kind = outcome.kind
            if kind is Outcome.COMPLETED:
                value, truncated = codec.cap_result(outcome.result, self.max_result_bytes)
                new = transition(rec, JobState.COMPLETED, now, attempts=attempts, result=value,
                                 result_truncated=truncated, error=None)
                ack = functools.partial(self.acks.ack, msg)
            elif kind is Outcome.CANCELLED or rec.cancel_requested:
                reason = outcome.error if kind is Outcome.CANCELLED else (rec.cancel_reason or "cancelled")
                new = transition(rec, JobState.CANCELLED, now, attempts=attempts, error=reason)
                ack = functools.partial(self.acks.term, msg)
            elif kind is Outcome.SHUTDOWN:
                new = transition(rec, JobState.AVAILABLE, now, attempts=attempts, worker=None)
                ack = functools.partial(self.acks.nak, msg)
            elif outcome.final or runs >= rec.spec.max_attempts:
                reason = (f"not retried ({type_name(outcome.error)} is not in the task's retry_on): {outcome.error}"
                          if outcome.final else
                          f"attempts exhausted ({runs}/{rec.spec.max_attempts}): {outcome.error}")
                return cas.Stop(_Elsewhere(rec, rev, reason, attempts))
            else:
                delay = outcome.delay if kind is Outcome.RETRY else rec.spec.backoff.delay(runs)
                new = transition(rec, JobState.RETRYABLE, now, attempts=attempts, error=outcome.error,
                                 scheduled_at=now + delay)
                ack = functools.partial(self.acks.nak, msg, delay)
            return _Write(rec, new, ack)

        async def write(w: _Write, rev: int) -> bool | _Elsewhere:
            new = w.new
            if commit_in_callback and new.state is JobState.COMPLETED:
                on_ack = functools.partial(self._committed, run, w.seen, new, outcome, runs, duration)
                if self.ops.write_cb(new, rev, on_ack):
                    self.host.completing(run)  # its slot serves the next job while the commit settles
                    return True
            await (await self.ops.write_nowait(new, rev))
            await w.ack()
            if new.state is JobState.COMPLETED:
                self.processed += 1
            elif new.state is not JobState.AVAILABLE:
                self.failed += 1
            self.events.emit(job_event(new, error=new.error if new.state is not JobState.COMPLETED else None,
                                       duration=duration))
            return False

        try:
            done = await cas.update(lambda: self.ops.read_versioned(job_id), decide, write,
                                    seen=(record, rev), what=f"job {job_id}")
        except ConflictError:
            log.warning("job %s: record kept changing; leaving the message for redelivery", job_id)
            return False
        if isinstance(done, bool):
            return done
        if done.landed:
            await self._ack_landed(run, done.record, duration)
            return False
        if done.discard is None:
            return await self._moved_elsewhere(run, done.record, done.rev, outcome, now, mine)
        await self._discard(msg, done.record, done.rev, done.discard, outcome.tb, attempts=done.attempts,
                            duration=duration)
        self.failed += 1
        return False

    def _committed(self, run: Running, record: JobRecord, new: JobRecord, outcome: _Outcome, runs: int,
                   duration: float, ack: object, exc: BaseException | None) -> None:
        """The completed write's PubAck (or failure), in the read loop: ack, count, announce, release.
        A conflict (the record moved) or a failure continues in a task, as ``_finish`` would."""
        if exc is not None:
            self.host.spawn(self._commit_failed(run, record, outcome, runs, exc))
            return
        try:
            self.acks.ack_nowait(run.msg)
            self.processed += 1
            self.events.emit(job_event(new, duration=duration))
        finally:
            self._settle(new.id)
            self.host.released(run)

    async def _commit_failed(self, run: Running, record: JobRecord, outcome: _Outcome, runs: int,
                             exc: BaseException) -> None:
        """The completed write's commit failed: written again (``_rewrite``); given up, the run
        is remembered and the job runs again."""
        ended = run.ended.ended_at if run.ended is not None else None
        now = ended if ended is not None else self.clock.now()
        try:
            await self._rewrite(run, record.id, outcome, runs, exc, now, now - run.started_at)
        except asyncio.CancelledError:
            raise
        except Exception as exc2:
            if is_transient(exc2):  # the server away past the retry window, or through a shutdown
                log.warning("job %s: its outcome could not be written (the server is away: %s); it will be rerun",
                            record.id, type(exc2).__name__)
            else:
                log.exception("job %s: writing its outcome failed; it will be rerun", record.id)
            self._remember_unrecorded(run)
            await self.acks.nak(run.msg, 1.0)
        finally:
            # Settled and released together, with no await between: a delivery waiting for this
            # write (``_write_settled``) must not find this run still held, or it stands down as
            # "runs here" and waits for a redelivery (ack_wait, or this nak's delay).
            self._settle(record.id)
            self.host.released(run)

    async def _connected(self, deadline: float) -> None:
        """Return once the connection is up (at once if it is), or at ``deadline``, or at the
        shutdown's ``stop_by`` (read each time: a drain may begin while this waits)."""
        nc = self.ops.publisher.nc
        while not nc.is_connected and self.clock.monotonic() < min(deadline, self.stop_by):
            await self.clock.sleep(0.05)

    def _remember_unrecorded(self, run: Running) -> None:
        """This run's outcome write failed: keep its attempt for the job's next delivery here."""
        a = run.ended
        if a is None or not run.job_id:
            return  # it never got as far as an outcome: the delivery count shows it, or it never ran
        note = "its outcome write failed (the server was unreachable); the job was run again"
        error = f"{a.error}; {note}" if a.error else note
        self.unrecorded[run.job_id] = (run.gen, msgspec.structs.replace(a, error=error[:MAX_ERROR]))
        while len(self.unrecorded) > MAX_UNRECORDED:
            self.unrecorded.pop(next(iter(self.unrecorded)))

    async def _moved_elsewhere(self, run: Running, record: JobRecord, rev: int, outcome: _Outcome,
                               now: float, mine: Attempt | None = None) -> bool:
        """The record moved during this run. If a redelivery of the same message took it over, this
        run overlapped it: write this run's real outcome into its own attempt (found by delivery
        count), marked as concurrent, so the record shows both runs. The state is not ours to set.

        A run the record does not show at all (its running write was deferred, and meanwhile the
        record went to a new generation, or another copy of the message ran and finished it) is
        added as an attempt of its own, outcome and all, marked ``SUPERSEDED_NOTE``: every run
        started is in the record, even one whose outcome could not be applied."""
        msg = run.msg
        other_delivery = record.state is JobState.RUNNING and record.gen == run.gen and record.worker != self.worker_id

        def unseen(rec: JobRecord) -> JobRecord | cas.Stop[None]:
            if mine is None or _recorded(rec, mine):
                return cas.Stop(None)  # a cancel or a manual retry of a recorded run: its outcome is dropped
            note = SUPERSEDED_NOTE.format(gen=run.gen, now=rec.gen, state=rec.state) + (
                f"; {outcome.error}" if outcome.error else "")
            number = max([rec.attempt, *(a.number for a in rec.attempts)]) + 1
            attempts = [*rec.attempts, Attempt(number=number, started_at=mine.started_at, worker=self.worker_id,
                                               ended_at=now, outcome=outcome.kind, error=note[:MAX_ERROR],
                                               traceback=outcome.tb, delivery=run.delivered)]
            # Counted as an attempt (the next run is numbered after it); only a job whose record
            # never showed this run comes here, so no marker of the rescuer's names its attempt count.
            return msgspec.structs.replace(rec, attempt=number, attempts=attempts[-MAX_ATTEMPTS_KEPT:])

        def decide(rec: JobRecord, _rev: int) -> JobRecord | cas.Stop[None]:
            if rec.gen != run.gen or rec.delivered_gen != rec.gen or rec.delivered <= run.delivered:
                return unseen(rec)
            attempts = list(rec.attempts)
            for i in range(len(attempts) - 1, -1, -1):
                a = attempts[i]
                if a.delivery == run.delivered and a.worker in ("", self.worker_id):
                    note = OVERLAP_NOTE + (f"; {outcome.error}" if outcome.error else "")
                    attempts[i] = Attempt(number=a.number, started_at=run.started_at, worker=self.worker_id,
                                          ended_at=now, outcome=outcome.kind, error=note[:MAX_ERROR],
                                          traceback=outcome.tb, delivery=run.delivered)
                    return msgspec.structs.replace(rec, attempts=attempts)
            return unseen(rec)

        async def write(new: JobRecord, rev: int) -> JobRecord | None:
            await (await self.ops.write_nowait(new, rev))
            return new

        try:
            wrote = await cas.update(lambda: self.ops.read_versioned(record.id), decide, write,
                                     seen=(record, rev), what=f"job {record.id}")
        except ConflictError:
            log.warning("job %s: record kept changing; this run's outcome was not recorded", record.id)
            wrote = None
        if wrote is not None:
            record = wrote
            # The note's fixed start: its first 20 characters ran into the "{gen}" placeholder,
            # so every superseded run was logged (and counted) as an overlap (red-team finding).
            if wrote.attempts and (wrote.attempts[-1].error or "").startswith(SUPERSEDED_NOTE.split("{", 1)[0]):
                log.warning("job %s: delivery %d of generation %d (%s here) ran before its running write while "
                            "the record moved on (generation %d, %s); recorded as an attempt of its own",
                            record.id, run.delivered, run.gen, outcome.kind, record.gen, record.state)
            else:
                self.overlaps += 1
                log.warning("job %s: delivery %d (%s here) overlapped delivery %d on %s; recorded as a concurrent run",
                            record.id, run.delivered, outcome.kind, record.delivered, record.worker)
        if other_delivery:
            return False  # not acked: that would ack the other worker's delivery, which still runs
        log.info("job %s is %s, changed elsewhere during this attempt; dropping the attempt's outcome",
                 record.id, record.state)
        await self.acks.ack(msg)
        return False

    # --- DLQ paths ------------------------------------------------------------------------------
    async def _discard(self, msg: Msg, record: JobRecord, rev: int, reason: str, tb: str | None,
                       attempts: list[Attempt] | None = None, duration: float | None = None,
                       unrun: tuple[str, int] | None = None) -> None:
        """DLQ entry, record ``discarded``, term; announced as an event (the archive keeps it).
        ``unrun``: (worker, delivery) of an attempt opened for a delivery that was not run, taken
        out of the record (no terminal record keeps an attempt that never ends)."""
        now = self.clock.now()
        entry = DLQEntry(reason=reason, at=now, job_id=record.id, spec=record.spec, traceback=tb, auth=record.auth,
                         attempts=record.attempt - (unrun is not None), subject=msg.subject)
        await self.ops.publish_dlq(entry, record.spec.queue)

        def decide(rec: JobRecord, _rev: int) -> JobRecord | cas.Stop[None]:
            if rec.state in TERMINAL:
                return cas.Stop(None)
            kept = list(attempts if attempts is not None else rec.attempts)
            number = rec.attempt
            if unrun is not None and kept and kept[-1].ended_at is None \
                    and (kept[-1].worker, kept[-1].delivery) == unrun:
                kept.pop()
                number -= 1
            return transition(rec, JobState.DISCARDED, now, error=reason, attempts=kept, attempt=number)

        async def write(new: JobRecord, rev: int) -> JobRecord | None:
            await (await self.ops.write_nowait(new, rev))
            return new

        try:
            new = await cas.update(lambda: self.ops.read_versioned(record.id), decide, write,
                                   seen=(record, rev), what=f"job {record.id}")
        except ConflictError:
            new = None  # kept changing: whoever moved it decides; the DLQ entry is written
        if new is not None:
            self.events.emit(job_event(new, error=reason, duration=duration))
        await self.acks.term(msg)
        log.warning("job %s (%s) moved to the DLQ: %s", record.id, record.spec.task, reason)

    async def _malformed(self, msg: Msg, reason: str) -> None:
        entry = DLQEntry(reason=f"malformed job message: {reason}", at=self.clock.now(), subject=msg.subject,
                         raw=msg.data)
        queue = msg.subject.rsplit(".", 1)[-1]
        await self.ops.publish_dlq(entry, queue)
        await self.acks.term(msg)
        self.failed += 1
        log.warning("malformed message on %s moved to the DLQ: %s", msg.subject, reason)


def _end_attempt(a: Attempt, now: float, outcome: Outcome, error: str | None, tb: str | None = None) -> Attempt:
    return Attempt(number=a.number, started_at=a.started_at, worker=a.worker, ended_at=now, outcome=outcome,
                   error=error, traceback=tb[-MAX_TRACEBACK:] if tb else None, delivery=a.delivery)


def add_unrecorded(attempts: list[Attempt], attempt_no: int, accounted: int, delivered: int,
                    now: float, skip: set[int] | frozenset[int] = frozenset()) -> int:
    """Append a ``lost`` attempt for each delivery after ``accounted`` and before ``delivered`` that
    no write recorded (runs started on a worker lost before its deferred running write), but those
    in ``skip`` (known not to have run); the last attempt number (``attempt_no`` is the record's)."""
    for d in range(accounted + 1, delivered):
        if d in skip:
            continue
        attempt_no += 1
        attempts.append(Attempt(number=attempt_no, started_at=now, worker="", ended_at=now, outcome=Outcome.LOST,
                                error=f"delivery {d} was never recorded: its worker was lost in the job's "
                                      "first moments (the task may have started)", delivery=d))
    return attempt_no


def _landed(rec: JobRecord, run: Running, outcome: _Outcome) -> bool:
    """Whether ``rec`` carries this run's outcome write (its PubAck was lost, not the write): its
    last attempt is this run's (worker, delivery, start, as ``_recorded``), ended with this
    outcome. Not an earlier generation's attempt on top of a manual retry, nor a rescuer's end
    of it (``lost``)."""
    last = rec.attempts[-1] if rec.attempts else None
    mine = run.began
    return (rec.state is not JobState.RUNNING and rec.gen == run.gen and last is not None and mine is not None
            and last.worker == mine.worker and last.delivery == mine.delivery
            and last.started_at == mine.started_at and last.ended_at is not None and last.outcome == outcome.kind)


def _recorded(rec: JobRecord, mine: Attempt | None) -> bool:
    """Whether ``rec`` shows the run whose attempt started as ``mine`` (same worker, delivery, start)."""
    if mine is None:
        return False
    return any(a.worker == mine.worker and a.delivery == mine.delivery and a.started_at == mine.started_at
               for a in rec.attempts)


def _started_here(rec: JobRecord, worker_id: str, delivered: int, tried: list[float]) -> bool:
    """Whether ``rec`` shows one of this delivery's running writes (started at one of ``tried``)
    landed, its attempt still open."""
    last = rec.attempts[-1] if rec.attempts else None
    return (rec.state is JobState.RUNNING and last is not None and last.ended_at is None
            and last.worker == worker_id and last.delivery == delivered and last.started_at in tried)


def _runs_in_gen(record: JobRecord) -> int:
    """Runs started for the record's current work message (deliveries less hand-backs)."""
    if record.delivered_gen != record.gen:
        return record.delivered
    return record.delivered - record.handed_back


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR]


def _interrupted(why: Interrupt, run: Running, timeout: float, ctx: JobContext) -> _Outcome:
    """The outcome of a call the service interrupted, saying what became of a sync call's thread."""
    note = f"; {run.stuck}" if run.stuck and run.stuck != "finished" else ""
    if run.stuck == NOT_STARTED:
        if why == "shutdown":
            return _Outcome(Outcome.SHUTDOWN, error=f"worker shut down before the job started ({NOT_STARTED})")
        return _Outcome(Outcome.CANCELLED, error=f"{ctx.cancel_reason or 'cancelled'}; {NOT_STARTED}")
    if why == "timeout":
        return _Outcome(Outcome.TIMEOUT, error=f"timed out after {timeout:g}s{note}")
    if why == "shutdown":
        return _Outcome(Outcome.SHUTDOWN, error=f"worker shut down before the job finished{note}")
    if why == "superseded":
        return _Outcome(Outcome.SUPERSEDED, error=f"stopped: a redelivery of this job runs on another worker{note}")
    return _Outcome(Outcome.CANCELLED, error=f"{ctx.cancel_reason or 'cancelled by operator'}{note}")


def _tb(exc: BaseException) -> str:
    child_tb = getattr(exc, "__chronos_tb__", None)  # raised in a task's process
    if child_tb:
        return child_tb[-MAX_TRACEBACK:]
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-MAX_TRACEBACK:]
