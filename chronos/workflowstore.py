"""The workflows bucket and the one advance step, shared by worker, scheduler and client.

Keys (bucket ``<ns>_workflows``)::

    d.<wf>            WorkflowDef: nodes and edges, written once at submit
    n.<wf>.<i>        NodeSpec: node i's signed job spec, written once at submit
    w.<wf>            WorkflowRecord: state, failed nodes; compare-and-set only
    f.<wf>.<i>.<s>    fan-in of node i, shard s: which parents have ended, and whether one failed
    f.<wf>.end.<s>    the same over the workflow's sinks: its end

Node i's job id is ``<wf>.<i>``. ``advance(wf, i, state, error)`` runs once a node's job has ended
(the worker that committed it calls it;
the leader's repair loop calls what a killed worker left undone): it records a failure, sets
node i's bit in each child's fan-in by compare-and-set (setting a bit twice is a no-op, so a
repeated advance is harmless) and starts each child whose fan-in it found complete:
create-if-absent on the child's deterministic id, so a child is created once whoever gets
there. A sink then sets its bit in the end set; whoever finds that complete finishes the
workflow. Nothing waits on a timer to decide who is last.

Fan-in without a hot key: a combining tree of records of at most FANOUT members each (blocks
of 16 positions); only a write that finds a record full goes up a level, and a worker sets all
the bits it has for one record in one write.
The job records stay the truth: the leader's repair works from them alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, AsyncIterator, Awaitable, Callable

import msgspec
from nats.js import api

from . import cas, codec
from .errors import ChronosError, ConflictError, JobNotFoundError, NotFoundError
from .jobs import JobOps, job_event
from .models import CancelRequest, Event, JobRecord, PendingWrite
from .publisher import encode_headers, is_wrong_last_sequence
from .states import PENDING, TERMINAL, JobState, WorkflowState, workflow_transition
from .store.kv import KVStore
from .workflows import (
    WORKFLOW_REASON, Bits, NodeSpec, WorkflowDef, WorkflowRecord, FANOUT, children_of, fanin_step, node_job_id,
    split_job_id,
)

log = logging.getLogger(__name__)

BATCH = 1000  # keys per batched direct get
CAS_ATTEMPTS = 200
CHILDREN_AT_ONCE = 128
# The repair starts a missing root only this long after submit: later, a missing root job is one
# the pruner removed (a workflow outliving the jobs' retention), not one a dead submitter left out.
ROOT_REPAIR_WINDOW = 600.0
MARKER_TTL = 60  # seconds a pruned record's delete marker lives, should the purge after it not happen
# a fan-in shard takes many writers at once; each conflict is a re-read, never a wait
END = "end"


class WorkflowNotFoundError(NotFoundError):
    pass


def _header(raw: bytes, name: bytes) -> str | None:
    """One header's value from a NATS/1.0 header block (three finds, no full parse)."""
    i = raw.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    i += len(name) + 3
    j = raw.find(b"\r\n", i)
    return raw[i:j if j >= 0 else len(raw)].strip().decode()


def _status(raw: bytes) -> tuple[str, str]:
    """The status on a header block's first line (``NATS/1.0 204 EOB``): (code, description), or empty."""
    code, _, desc = raw[9:raw.find(b"\r\n")].strip().partition(b" ")
    return code.decode(), desc.decode()


def _dec(data: bytes | None, typ: Any) -> Any:
    if data is None:
        raise ChronosError("a workflow record without a value")
    return msgspec.msgpack.decode(data, type=typ)


class Shape:
    """What a definition implies, computed once per workflow: children and each parent's position."""

    __slots__ = ("defn", "children", "pos", "sink_pos")

    def __init__(self, defn: WorkflowDef) -> None:
        self.defn = defn
        self.children = children_of(defn)
        self.sink_pos = {i: k for k, i in enumerate(j for j, kids in enumerate(self.children) if not kids)}
        self.pos: dict[int, dict[int, int]] = {}
        for c, node in enumerate(defn.nodes):
            if len(node.parents) > 1:
                self.pos[c] = {p: k for k, p in enumerate(node.parents)}


def node_failed(state: JobState, error: str | None) -> bool:
    """Did the node fail on its own (not skipped or stopped by its workflow)?"""
    if state is JobState.DISCARDED:
        return True
    return state is JobState.CANCELLED and not (error or "").startswith(WORKFLOW_REASON)


def node_state(job: JobRecord | None) -> str:
    """A node's state for people: pending, running, completed, failed, cancelled (skipped shows its reason)."""
    if job is None or job.state in PENDING:
        return "pending"
    if job.state is JobState.RUNNING:
        return "running"
    if job.state is JobState.COMPLETED:
        return "completed"
    if job.state is JobState.DISCARDED:
        return "failed"
    return "cancelled"


class WorkflowStore:
    def __init__(self, ops: JobOps, emit: Callable[[Event], None] | None = None) -> None:
        self.ops = ops
        self.conn = ops.conn
        self.names = ops.names
        self.clock = ops.clock
        self.emit = emit
        self._kv: KVStore | None = None
        self._shapes: OrderedDict[str, Shape] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Shape]] = {}
        self._children = asyncio.Semaphore(CHILDREN_AT_ONCE)
        self.marker_ttl = MARKER_TTL  # seconds a pruned key's delete marker lives

    async def kv(self) -> KVStore:
        if self._kv is None:
            kv = await self.conn.kv(self.names.workflows_bucket)
            self._kv = KVStore(kv, self.ops.publisher, self.names.workflows_bucket)
        return self._kv

    # --- reads -------------------------------------------------------------------------------------
    async def record(self, wf: str) -> WorkflowRecord:
        e = await (await self.kv()).get(f"w.{wf}")
        if e is None:
            raise WorkflowNotFoundError(f"no workflow with id {wf}")
        rec = _dec(e.value, WorkflowRecord)
        rec.revision = e.revision
        return rec

    async def records(self) -> list[WorkflowRecord]:
        out = []
        for e in await (await self.kv()).entries("w.*"):
            rec = _dec(e.value, WorkflowRecord)
            rec.revision = e.revision
            out.append(rec)
        return out

    async def watch_records(self) -> AsyncIterator[tuple[str, WorkflowRecord | None, bool]]:
        """Every workflow record, then each change as it is written: ``(id, record or None when
        deleted, caught up)``; caught up is True from the message that leaves nothing pending (or
        at once, with a None id, when the bucket holds no record). One ordered consumer on ``w.*``:
        it costs what is written, never a re-read of what is not."""
        kv = await self.kv()
        js = self.ops.publisher.nc.jetstream(timeout=10.0)
        prefix = kv.subject("w.")
        sub = await js.subscribe(prefix + "*", stream=self.names.kv_stream(self.names.workflows_bucket),
                                 ordered_consumer=True, deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                                 inactive_threshold=300.0)
        me = asyncio.current_task()
        try:
            # nats-py can swallow a cancel that lands inside its requests (3.11's wait_for): check
            # after each, or the loop below waits for messages forever (a stuck leader step-down).
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            info = await sub.consumer_info()
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            caught_up = info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq)
            if caught_up:
                yield "", None, True
            async for msg in sub.messages:
                meta = msg.metadata
                caught_up = caught_up or meta.num_pending == 0
                wf = msg.subject[len(prefix):]
                hdrs = msg.headers or {}
                if hdrs.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in hdrs or not msg.data:
                    yield wf, None, caught_up
                    continue
                try:
                    rec = _dec(msg.data, WorkflowRecord)
                except (ChronosError, msgspec.DecodeError) as exc:
                    log.warning("workflow record %s unreadable: %s", wf, exc)
                    continue
                rec.revision = meta.sequence.stream
                yield wf, rec, caught_up
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is closed already
                log.debug("workflow watch unsubscribe: %s", exc)

    async def on_node_writes(self, cb: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``cb(workflow id)`` on each write of a node job from now on (headers only: one
        ordered consumer on the jobs bucket's two-token keys, ``<wf>.<i>``; other jobs' ids are one
        token). Returns the unsubscribe."""
        prefix = self.names.kv_subject(self.names.jobs_bucket, "")
        js = self.ops.publisher.nc.jetstream(timeout=10.0)

        async def on_msg(msg: Any) -> None:
            node = split_job_id(msg.subject[len(prefix):])
            if node is not None:
                cb(node[0])

        sub = await js.subscribe(prefix + "*.*", stream=self.names.kv_stream(self.names.jobs_bucket), cb=on_msg,
                                 ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW, headers_only=True,
                                 inactive_threshold=300.0)
        me = asyncio.current_task()

        async def close() -> None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is closed already
                log.debug("node write watch unsubscribe: %s", exc)

        if me is not None and me.cancelling():  # a cancel nats-py swallowed (see watch_records)
            await close()
            raise asyncio.CancelledError
        return close

    async def purge(self, wf: str, revision: int) -> bool:
        """Remove a finished workflow: its record (compare-and-set on ``revision``: a workflow
        retried meanwhile is kept), then its definition, node specs and fan-in records (see
        ``purge_keys``). False if it had moved."""
        if not await self.delete_record(wf, revision):
            return False
        await self.purge_keys(wf)
        return True

    async def delete_record(self, wf: str, revision: int) -> bool:
        """The workflow record's delete, guarded by ``revision``; False if it had moved."""
        names = self.names
        bucket = names.workflows_bucket
        headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(revision),
                   "Nats-TTL": f"{self.marker_ttl}s"}  # the marker expires by itself: nothing is left of the key
        try:
            await self.ops.publisher.request(names.kv_subject(bucket, f"w.{wf}"), b"", headers)
        except Exception as exc:
            if is_wrong_last_sequence(exc):
                return False
            raise
        return True

    async def purge_keys(self, wf: str) -> int:
        """A removed workflow's other keys, each replaced by a delete marker that expires by itself
        (``Nats-TTL``; the bucket keeps one message per key), so nothing of it is left after
        ``marker_ttl`` and no role needs the stream purge right, with which one request erased
        every workflow, running ones included. Idempotent; how many keys it wrote.

        The node specs are named from the definition (deleted last, so a retry after a failure
        still finds it), the fan-in records by one filtered listing; the deletes are pipelined."""
        names = self.names
        bucket = names.workflows_bucket
        kv = await self.kv()
        e = await kv.get(f"d.{wf}")
        if e is not None:
            keys = [f"n.{wf}.{i}" for i in range(len(_dec(e.value, WorkflowDef).nodes))]
        else:  # the definition went first (a rewritten bucket): list what is left
            keys = [x.key for x in await kv.entries(f"n.{wf}.>")]
        keys += [x.key for x in await kv.entries(f"f.{wf}.>")]
        pub = self.ops.publisher
        hdr = encode_headers({"KV-Operation": "DEL", "Nats-TTL": f"{self.marker_ttl}s"})
        futs = [await pub.publish(names.kv_subject(bucket, key), b"", hdr=hdr) for key in keys]
        await asyncio.gather(*futs)
        await pub.wait(await pub.publish(names.kv_subject(bucket, f"d.{wf}"), b"", hdr=hdr))
        self._shapes.pop(wf, None)
        return len(keys) + 1

    async def shape(self, wf: str) -> Shape:
        """The definition, read once per process (a group's children all ask at once: one read)."""
        s = self._shapes.get(wf)
        if s is not None:
            self._shapes.move_to_end(wf)
            return s
        loading = self._loading.get(wf)
        if loading is None:
            loading = self._loading[wf] = asyncio.ensure_future(self._load_shape(wf))
            loading.add_done_callback(lambda _f: self._loading.pop(wf, None))
        return await asyncio.shield(loading)

    async def _load_shape(self, wf: str) -> Shape:
        e = await (await self.kv()).get(f"d.{wf}")
        if e is None:
            raise WorkflowNotFoundError(f"no workflow with id {wf}")
        s = Shape(_dec(e.value, WorkflowDef))
        self._shapes[wf] = s
        while len(self._shapes) > 64:
            self._shapes.popitem(last=False)
        return s

    async def node_spec(self, wf: str, i: int) -> NodeSpec:
        e = await (await self.kv()).get(f"n.{wf}.{i}")
        if e is None:
            raise WorkflowNotFoundError(f"workflow {wf} has no node {i}")
        return _dec(e.value, NodeSpec)  # type: ignore[no-any-return]

    async def jobs(self, wf: str, nodes: list[int] | None = None, total: int | None = None) -> dict[int, JobRecord]:
        """Node jobs by index (absent ones left out), read with batched direct gets: one request per
        ``BATCH`` keys, the server streams the answers (a chord's 10,000 parents in a few requests)."""
        if nodes is None:
            if total is None:
                total = (await self.record(wf)).nodes
            nodes = list(range(total))
        if len(nodes) <= 8:
            recs = await asyncio.gather(*(self.ops.read_or_none(node_job_id(wf, i)) for i in nodes))
            return {i: r for i, r in zip(nodes, recs) if r is not None}
        chunks = [nodes[k:k + BATCH] for k in range(0, len(nodes), BATCH)]
        parts = await asyncio.gather(*(self._batch_get(wf, c) for c in chunks))
        out: dict[int, JobRecord] = {}
        for part in parts:
            out.update(part)
        return out

    async def _batch_get(self, wf: str, nodes: list[int]) -> dict[int, JobRecord]:
        """One batched direct get. The answers are taken in the connection's read loop where the
        transport offers it (``deliver_raw``): nats-py's own path (a ``Msg``, its header parser,
        a queue and a wake-up per message) was most of a 10,000-parent callback's wait."""
        nc = self.ops.publisher.nc
        bucket = self.names.jobs_bucket
        prefix = f"$KV.{bucket}."
        out: dict[int, JobRecord] = {}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def take(data: bytes, hdrs: dict[str, str]) -> None:
            if done.done():
                return
            try:
                status = hdrs.get("Status")
                if status:  # 204 end of batch; 404 none of them exists
                    if status not in ("204", "404"):
                        raise ChronosError(f"batch read of workflow {wf}: {status} {hdrs.get('Description', '')}")
                    done.set_result(None)
                    return
                if hdrs.get("KV-Operation") in ("DEL", "PURGE") or not data:
                    return
                rec = codec.decode(data, JobRecord)
                rec.revision = int(hdrs.get("Nats-Sequence", 0))
                out[int(hdrs.get("Nats-Subject", "").rsplit(".", 1)[1])] = rec
            except Exception as exc:
                done.set_exception(exc)

        def raw(_subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> bool:
            h = headers or b"NATS/1.0\r\n"
            hdrs: dict[str, str] = {}
            code, desc = _status(h)
            if code:
                hdrs["Status"], hdrs["Description"] = code, desc
            else:
                for name in ("KV-Operation", "Nats-Sequence", "Nats-Subject"):
                    v = _header(h, name.encode())
                    if v is not None:
                        hdrs[name] = v
            take(data, hdrs)
            return True

        async def slow(msg: Any) -> None:  # the stock transport, or what the fast one leaves to nats-py
            take(msg.data, msg.headers or {})

        transport = self.conn.transport
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=slow)
        fast = transport.deliver_raw(sub, raw)
        try:
            req = codec.to_json({"multi_last": [prefix + node_job_id(wf, i) for i in nodes], "batch": len(nodes)})
            await nc.publish(f"$JS.API.DIRECT.GET.{self.names.kv_stream(bucket)}", req, reply=inbox)
            await asyncio.wait_for(asyncio.shield(done), 10.0)
        finally:
            if fast:
                transport.undeliver(sub)
            await sub.unsubscribe()
            if not done.done():
                done.cancel()
        return out

    async def update_record(self, wf: str, decide: Callable[[WorkflowRecord], WorkflowRecord | None]
                            ) -> WorkflowRecord:
        kv = await self.kv()

        async def read() -> tuple[WorkflowRecord, int]:
            r = await self.record(wf)
            return r, r.revision

        def decision(rec: WorkflowRecord, _rev: int) -> WorkflowRecord | cas.Stop[WorkflowRecord]:
            new = decide(rec)
            return cas.Stop(rec) if new is None else new

        async def write(new: WorkflowRecord, rev: int) -> WorkflowRecord:
            new.revision = await kv.update(f"w.{wf}", codec.encode(new), rev)
            return new

        return await cas.update(read, decision, write, attempts=CAS_ATTEMPTS, what=f"workflow {wf}")

    # --- fan-in bitmaps ------------------------------------------------------------------------------
    async def _set_bits(self, key: str, size: int, bits: dict[int, bool]) -> Bits:
        """Set bits (bit -> failed) by compare-and-set, in one write; the record after it."""
        kv = await self.kv()

        async def read() -> tuple[Bits | None, int]:
            e = await kv.get(key)
            return (None, 0) if e is None else (_dec(e.value, Bits), e.revision)

        def decide(cur: Bits | None, _rev: int) -> Bits | cas.Stop[Bits]:
            cur = cur or Bits(size)
            new = cur
            for bit, failed in bits.items():
                if not new.has(bit) or (failed and not new.failed):
                    new = new.with_bit(bit, failed)
            return cas.Stop(cur) if new is cur else new  # all set already: a repeat changes nothing

        async def write(new: Bits, rev: int) -> Bits:
            data = codec.encode(new)
            if rev == 0:
                await kv.create(key, data)
            else:
                await kv.update(key, data, rev)
            return new

        return await cas.update(read, decide, write, attempts=CAS_ATTEMPTS, what=f"fan-in {key}")

    async def mark(self, wf: str, target: str | int, members: dict[int, bool], total: int) -> tuple[bool, bool]:
        """These members (position -> failed) of ``total`` have ended. (complete, any failed) as seen
        by these writes; idempotent.

        A combining tree of small records (``fanin_step``): one write per record touched, and a
        record's parent gets a bit only from the write that found the record full (a repeated
        write that finds it full goes on up too: setting a bit again changes nothing, so a writer
        killed half-way is made good by the next advance of any member)."""
        base = f"f.{wf}.{target}"
        level = 0
        current = members
        while True:
            groups: dict[int, tuple[int, dict[int, bool]]] = {}
            for pos, failed in current.items():
                node, bit, size = fanin_step(pos, total, level)
                groups.setdefault(node, (size, {}))[1][bit] = failed
            written = await asyncio.gather(*(self._set_bits(f"{base}.{level}.{node}", size, bits)
                                             for node, (size, bits) in groups.items()))
            full = {node: b.failed for node, b in zip(groups, written) if b.full()}
            if not full:
                return False, any(b.failed for b in written)
            total = -(-total // FANOUT)  # records at this level: the members of the next
            if total == 1:
                return True, full[0]
            current = full
            level += 1

    # --- advancing ------------------------------------------------------------------------------------
    async def advance(self, wf: str, i: int, state: JobState, error: str | None) -> None:
        """Node i's job ended in ``state``: move the workflow on (see the module doc). Idempotent."""
        await self.advance_many(wf, [(i, state, error)])

    async def advance_many(self, wf: str, ended: list[tuple[int, JobState, str | None]]) -> None:
        """``advance`` for several nodes of one workflow at once: the fan-in records they share are
        written once each (a worker finishing a run of a group's children sets 16 bits per write)."""
        todo = list(ended)
        while todo:  # skipped nodes are advanced in turn (a loop, not recursion: chains are long)
            todo = await self._advance_batch(wf, todo)

    async def _advance_batch(self, wf: str, ended: list[tuple[int, JobState, str | None]]
                             ) -> list[tuple[int, JobState, str | None]]:
        shape = await self.shape(wf)
        nodes = shape.defn.nodes
        for i, state, error in ended:
            if node_failed(state, error):
                await self._record_failure(wf, i, error)
        # A node that failed may have been rerun by anyone (`chronos retry <job>` included): its
        # completion takes it off the failed list, and the workflow runs again once none is left.
        # Checked on a record read this batch makes anyway (a child's start, the end), so a chain
        # step costs no extra read; otherwise (a fan-in not yet complete) by one read at the end.
        done = [i for i, state, _ in ended if state is JobState.COMPLETED]
        checked = not done

        async def check(rec: WorkflowRecord) -> WorkflowRecord:
            nonlocal checked
            checked = True
            if any(i in rec.failed for i in done):
                return await self._resume(wf, done)
            return rec
        marks: dict[int, dict[int, bool]] = {}  # child -> parent position -> failed
        sinks: dict[int, bool] = {}
        for i, state, _error in ended:
            ok = state is JobState.COMPLETED
            for c in shape.children[i]:
                marks.setdefault(c, {})[shape.pos[c][i] if c in shape.pos else 0] = not ok
            if not shape.children[i]:
                sinks[shape.sink_pos[i]] = False

        async def child(c: int, members: dict[int, bool]) -> tuple[int, str | None]:
            async with self._children:  # a node with 10,000 children starts them a window at a time
                k = len(nodes[c].parents)
                if k == 1:
                    complete, any_failed = True, members[0]
                else:
                    complete, any_failed = await self.mark(wf, c, members, k)
                return c, (await self.start_node(wf, c, any_failed, check)) if complete else None

        more: list[tuple[int, JobState, str | None]] = [(c, JobState.CANCELLED, reason)
                for c, reason in await asyncio.gather(*(child(c, m) for c, m in marks.items())) if reason is not None]
        if sinks:
            complete, _ = await self.mark(wf, END, sinks, len(shape.sink_pos))
            if complete:
                rec = await check(await self.record(wf))
                if rec.state is WorkflowState.RUNNING:
                    # after a retry by hand the end set may be complete before every rerun node
                    # is done: confirm from the jobs then
                    await (self.finalize_if_done(wf) if rec.resumed else self.finalize(wf))
        if not checked:
            await check(await self.record(wf))
        return more

    async def _record_failure(self, wf: str, i: int, error: str | None) -> None:
        now = self.clock.now()

        def decide(rec: WorkflowRecord) -> WorkflowRecord | None:
            fail_fast = rec.policy == "fail_fast" and rec.state is WorkflowState.RUNNING
            if i in rec.failed and not fail_fast:
                return None
            failed = rec.failed if i in rec.failed else [*rec.failed, i]
            if fail_fast:
                return workflow_transition(rec, WorkflowState.FAILED, now, failed=failed,
                                           reason=f"fail_fast: node {i} failed: {(error or '')[:200]}")
            return msgspec.structs.replace(rec, failed=failed, updated_at=now)

        await self.update_record(wf, decide)

    async def _resume(self, wf: str, done: list[int]) -> WorkflowRecord:
        """Nodes of ``done`` completed after failing: off the failed list; a failed workflow with
        no failed node left is running again (its end is then confirmed from the jobs, and the
        leader reruns the nodes it stopped whose parents have completed)."""
        now = self.clock.now()

        def decide(rec: WorkflowRecord) -> WorkflowRecord | None:
            failed = [f for f in rec.failed if f not in done]
            if failed == rec.failed:
                return None
            if rec.state is WorkflowState.FAILED and not failed:
                log.info("workflow %s: its failed nodes completed after a retry; running again", wf)
                return workflow_transition(rec, WorkflowState.RUNNING, now, failed=failed, reason=None, settled=False,
                                           resumed=rec.resumed + 1, resumed_at=now)
            return msgspec.structs.replace(rec, failed=failed, updated_at=now)

        return await self.update_record(wf, decide)

    async def _parents_decision(self, wf: str, c: int) -> tuple[bool, bool]:
        """(all parents ended, any parent did not complete), from their job records."""
        parents = (await self.shape(wf)).defn.nodes[c].parents
        jobs = await self.jobs(wf, parents)
        ended = all(p in jobs and jobs[p].state in TERMINAL for p in parents)
        return ended, any(p in jobs and jobs[p].state in TERMINAL and jobs[p].state is not JobState.COMPLETED
                          for p in parents)

    async def start_node(self, wf: str, c: int, any_failed: bool,
                         check: Callable[[WorkflowRecord], Awaitable[WorkflowRecord]] | None = None) -> str | None:
        """Every parent of node c has ended: create its job (create-if-absent), to run or as skipped.

        Returns the skip reason when this call created it skipped (its dependents are advanced
        next), else None. A node that exists already is left alone, unless it was skipped by the
        workflow and its parents have now all completed (a failed parent was retried): then it is
        retried through the job retry path (compare-and-set), so it runs once."""
        shape = await self.shape(wf)
        node = shape.defn.nodes[c]
        if any_failed and not node.run_on_failure and node.parents:
            # the fan-in's failed flag is sticky: a parent retried since may have completed
            _, any_failed = await self._parents_decision(wf, c)
        rec = await self.record(wf)
        if check is not None:  # the advance that got here may resume the workflow first
            rec = await check(rec)
        reason: str | None = None
        if rec.state is WorkflowState.CANCELLED or (rec.state is WorkflowState.FAILED and rec.policy == "fail_fast"):
            reason = f"{WORKFLOW_REASON} workflow {rec.state}" + (f" ({rec.reason})" if rec.reason else "")
        elif any_failed and not node.run_on_failure:
            reason = f"{WORKFLOW_REASON} skipped: a node it depends on did not complete"
        ns = await self.node_spec(wf, c)
        job_id = node_job_id(wf, c)
        now = self.clock.now()
        if reason is None:
            job = JobRecord(id=job_id, spec=ns.spec, state=JobState.AVAILABLE, created_at=now, updated_at=now,
                            scheduled_at=now, auth=ns.auth)
        else:
            job = JobRecord(id=job_id, spec=ns.spec, state=JobState.CANCELLED, created_at=now, updated_at=now,
                            finished_at=now, error=reason, cancel_reason=reason, auth=ns.auth)
        created = await self._create(job)
        if created:
            if self.emit is not None:
                self.emit(job_event(job, message=f"workflow {wf} node {c}"))
            return reason
        if reason is None:
            await self._maybe_rerun(wf, c)
        return None

    async def _create(self, job: JobRecord) -> bool:
        """Create-if-absent; a job to run gets its work message under a pending marker (the
        leader's rescuer republishes it if this process dies in between). False if it existed."""
        if job.state is not JobState.AVAILABLE:
            try:
                await (await self.ops.create_nowait(job, sign=False))
            except ConflictError:
                return False
            return True
        key, marked = await self.ops.mark_pending([PendingWrite(job.id, job.gen, job.attempt)], "workflow")
        marker_rev = (await self.ops.publisher.wait(marked)).seq
        try:
            rev = await (await self.ops.create_nowait(job, sign=False))
        except ConflictError:
            await self.ops.unmark(key, marker_rev)
            return False
        await self.ops.publish_work(job, rev)
        await self.ops.unmark(key, marker_rev)  # sent, not awaited: a marker left behind costs a look
        return True

    async def _maybe_rerun(self, wf: str, c: int) -> None:
        job = await self.ops.read_or_none(node_job_id(wf, c))
        if job is None or job.state is not JobState.CANCELLED or not (job.error or "").startswith(WORKFLOW_REASON):
            return
        rec = await self.record(wf)
        if rec.state is not WorkflowState.RUNNING:
            return
        node = (await self.shape(wf)).defn.nodes[c]
        ended, any_failed = await self._parents_decision(wf, c)
        if not ended or (any_failed and not node.run_on_failure):
            return
        await self.rerun_job(job.id, "workflow resumed")

    async def rerun_job(self, job_id: str, why: str) -> JobRecord | None:
        """The job retry path: a cancelled or discarded node runs again (gen + 1, compare-and-set)."""
        now = self.clock.now()

        def decide(rec: JobRecord) -> tuple[JobState, dict[str, Any]] | None:
            if rec.state not in (JobState.CANCELLED, JobState.DISCARDED, JobState.RETRYABLE):
                return None
            return JobState.AVAILABLE, {"gen": rec.gen + 1, "cancel_requested": False, "cancel_reason": None,
                                        "error": None, "scheduled_at": now}

        try:
            rec = await self.ops.move_and_publish(job_id, decide, "retry")
        except JobNotFoundError:
            return None
        if rec.state is JobState.AVAILABLE and self.emit is not None:
            self.emit(job_event(rec, message=why))
        return rec

    async def finalize(self, wf: str) -> WorkflowRecord:
        """Every node has been advanced: the workflow is completed, or failed if a node failed."""
        now = self.clock.now()

        def decide(rec: WorkflowRecord) -> WorkflowRecord | None:
            if rec.state is not WorkflowState.RUNNING:
                return None
            to = WorkflowState.FAILED if rec.failed else WorkflowState.COMPLETED
            reason = f"node {rec.failed[0]} failed" if rec.failed else None
            return workflow_transition(rec, to, now, reason=reason, settled=True)

        rec = await self.update_record(wf, decide)
        log.info("workflow %s %s", wf, rec.state)
        return rec

    # --- cancelling ---------------------------------------------------------------------------------------
    async def cancel_job(self, job_id: str, reason: str) -> JobRecord | None:
        """The job cancel path: a pending job is cancelled at once, a running one gets a cancel request
        (workers watch the control bucket). None if it is already terminal or absent."""
        now = self.clock.now()

        def decide(rec: JobRecord) -> tuple[JobState, dict[str, Any]] | None:
            if rec.state in TERMINAL:
                return None
            if rec.state in PENDING:
                return JobState.CANCELLED, {"cancel_reason": reason, "error": reason}
            if rec.cancel_requested:
                return None
            return JobState.RUNNING, {"cancel_requested": True, "cancel_reason": reason}

        try:
            rec = await self.ops.move_with_retry(job_id, decide)
        except JobNotFoundError:
            return None
        if rec.state is JobState.RUNNING:
            control = await self.ops.control()
            await control.put(self.names.cancel_key(job_id), codec.encode(CancelRequest(job_id, now, reason, rec.gen)))
        elif rec.state is JobState.CANCELLED and self.emit is not None:
            self.emit(job_event(rec, message=reason))
        return rec

    async def stop_live_nodes(self, wf: str, reason: str) -> int:
        """Cancel every node job of ``wf`` that has not ended; how many were still live."""
        rec = await self.record(wf)
        jobs = await self.jobs(wf, None, rec.nodes)
        live = [j for j in jobs.values() if j.state not in TERMINAL]
        for j in live:
            try:
                await self.cancel_job(j.id, reason)
            except ConflictError:
                log.warning("workflow %s: job %s kept changing; cancelling it again next round", wf, j.id)
        return len(live)

    # --- the leader's repair -----------------------------------------------------------------------------
    async def finalize_if_done(self, wf: str) -> WorkflowRecord | None:
        """Finish the workflow if every node's job has ended, deciding from the jobs alone."""
        rec = await self.record(wf)
        if rec.state is not WorkflowState.RUNNING:
            return None
        jobs = await self.jobs(wf, None, rec.nodes)
        if len(jobs) < rec.nodes or any(j.state not in TERMINAL for j in jobs.values()):
            return None
        failed = sorted(i for i, j in jobs.items() if node_failed(j.state, j.error))
        if not failed and any(j.state is JobState.CANCELLED and (j.error or "").startswith(WORKFLOW_REASON)
                              for j in jobs.values()):
            # resumed after a failure: nodes the workflow stopped are still to run again (repair)
            return None
        now = self.clock.now()

        def decide(cur: WorkflowRecord) -> WorkflowRecord | None:
            if cur.state is not WorkflowState.RUNNING:
                return None
            to = WorkflowState.FAILED if failed else WorkflowState.COMPLETED
            return workflow_transition(cur, to, now, failed=failed, settled=True,
                                       reason=f"node {failed[0]} failed" if failed else None)

        return await self.update_record(wf, decide)

    # --- the leader's repair -----------------------------------------------------------------------------
    async def repair(self, wf: str, min_age: float = 1.0) -> int:
        """Finish what a process killed mid-advance left undone, from the node jobs alone; how
        many nodes it touched. A node whose job is absent while every parent's job ended more
        than ``min_age`` ago is started (a root whose submit died, a child whose starter died);
        a failure not yet in the record is recorded; once every job has ended, the workflow is."""
        rec = await self.record(wf)
        shape = await self.shape(wf)
        nodes = shape.defn.nodes
        jobs = await self.jobs(wf, None, rec.nodes)
        now = self.clock.now()

        def settled_for(j: JobRecord | None) -> bool:
            return j is not None and j.state in TERMINAL and now - (j.finished_at or j.updated_at) >= min_age

        touched = 0
        for i, node in enumerate(nodes):  # parents come first (compile order)
            job = jobs.get(i)
            if job is None:
                if all(settled_for(jobs.get(p)) for p in node.parents) and \
                        (node.parents or min_age <= now - rec.created_at <= ROOT_REPAIR_WINDOW):
                    any_failed = any(jobs[p].state is not JobState.COMPLETED for p in node.parents)
                    skipped = await self.start_node(wf, i, any_failed)
                    if skipped is not None:
                        await self.advance(wf, i, JobState.CANCELLED, skipped)
                    touched += 1
            elif settled_for(job) and node_failed(job.state, job.error) and i not in rec.failed:
                await self.advance(wf, i, job.state, job.error)
                touched += 1
            elif (rec.resumed_at is not None and job.state is JobState.CANCELLED
                  and (job.error or "").startswith(WORKFLOW_REASON) and (job.finished_at or 0.0) <= rec.resumed_at
                  and all(p in jobs and jobs[p].state is JobState.COMPLETED and settled_for(jobs[p])
                          for p in node.parents)):
                # stopped by the workflow before it was resumed (fail-fast, cancel), and ready: run it
                # again (a rerun after a plain `chronos retry` of the failed node; a stop after
                # the resume is newer than resumed_at and stays)
                await self.rerun_job(job.id, "workflow resumed")
                touched += 1
        if touched:
            log.info("workflow %s: repaired %d node(s) left behind", wf, touched)
        elif len(jobs) == rec.nodes and all(settled_for(j) for j in jobs.values()):
            await self.finalize_if_done(wf)
        return touched

    async def settle(self, wf: str, grace: float = 2.0) -> None:
        """A failed-fast or cancelled workflow: signal what still runs; settled once nothing does."""
        rec = await self.record(wf)
        reason = f"{WORKFLOW_REASON} workflow {rec.state}" + (f" ({rec.reason})" if rec.reason else "")
        live = await self.stop_live_nodes(wf, reason)
        if live == 0 and self.clock.now() - rec.updated_at >= grace:
            def decide(cur: WorkflowRecord) -> WorkflowRecord | None:
                if cur.settled or cur.state is WorkflowState.RUNNING:
                    return None
                return msgspec.structs.replace(cur, settled=True)

            await self.update_record(wf, decide)
