"""Client side of listings and counts: ask a scheduler's job index, read the page from the KV.

A request goes to ``<ns>.api.history`` (op ``jobs`` or ``counts``). One caught-up scheduler
node answers through its index's queue group (readmodel.py); a node still catching up answers
"not ready" from its plain subscription. The page's records are then read from the KV (the
truth) and checked against the filter again, so a listing never shows a record the index only
remembers. With no index answering, the KV is scanned here: correct, but its cost grows with the
bucket (a warning says so when the bucket is big).

A ``--where`` listing (chronos/where.py) may come back short: each request scans for at most its
time budget and answers what it found with a cursor (``partial``); ``list_jobs`` asks again
until the page is full or its own budget is spent, and then returns the short page with the
cursor, never a timeout. ``match_ids`` walks every match for a bulk action, a page at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, TypeVar

import msgspec
import nats.errors

from . import codec
from .connection import Connection
from .errors import ChronosError
from .jobs import JobOps
from .models import JobPage, JobRecord
from .readmodel import (
    MAX_PAGE,
    NOT_READY,
    Counts,
    CountsQuery,
    CountsReply,
    JobsQuery,
    MAX_BUDGET,
    JobsReply,
    counts_from_records,
    record_matches,
    scan_page,
    summarize,
)

log = logging.getLogger(__name__)

R = TypeVar("R", JobsReply, CountsReply)
_NOT_READY_GRACE = 0.1  # after a "not ready", how long a caught-up node gets to answer
_MIN_BUDGET = 0.02  # a --where request past the listing's budget still gets this long to scan


async def ask_index(conn: Connection, query: Any, typ: type[R], timeout: float = 5.0) -> R | None:
    """The index's answer, or None when no caught-up index answers (then the caller scans)."""
    nc = conn.nc
    inbox = nc.new_inbox()
    replies: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def on_reply(msg: Any) -> None:
        if msg.data:
            replies.put_nowait(msg.data)
        elif msg.headers and msg.headers.get("Status") == "503":
            replies.put_nowait(None)  # no responders at all

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(conn.names.history_api(), codec.encode(query), reply=inbox)
        deadline = time.monotonic() + timeout
        not_ready = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if not not_ready:
                    log.warning("no scheduler job index answered within %gs; scanning the KV", timeout)
                return None
            try:
                data = await asyncio.wait_for(replies.get(), left)
            except TimeoutError:
                continue
            if data is None:
                return None
            try:
                reply = codec.decode(data, typ)
            except ChronosError:
                continue
            if reply.error == NOT_READY:
                if not not_ready:
                    not_ready = True
                    deadline = min(deadline, time.monotonic() + _NOT_READY_GRACE)
                continue
            if reply.error:
                raise ChronosError(f"job index on {reply.node or 'a scheduler'}: {reply.error}")
            return reply
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error as exc:
            log.debug("listing inbox unsubscribe: %s", exc)


async def list_jobs(conn: Connection, ops: JobOps, q: JobsQuery, limit: int, budget: float = 2.0) -> JobPage:
    """Up to ``limit`` jobs (pages of at most MAX_PAGE are asked one after another).

    ``budget``: seconds a ``--where`` listing may spend filling its page; past it the page comes
    back short, with the cursor where the search stopped."""
    jobs: list[JobRecord] = []
    total, exact, nxt = 0, True, q.cursor
    first = True
    deadline = time.monotonic() + budget
    while True:
        page_q = msgspec.structs.replace(q, cursor=nxt, offset=q.offset if first else 0,
                                         limit=min(MAX_PAGE, limit - len(jobs)))
        if q.where:
            page_q.budget = max(_MIN_BUDGET, min(q.budget, deadline - time.monotonic()))
        reply = await ask_index(conn, page_q, JobsReply)
        if reply is None:
            return await _scan(ops, q, limit)
        if first:
            total, exact = reply.total, reply.exact
        first = False
        found = await asyncio.gather(*(ops.read_or_none(i) for i in reply.ids))
        # The KV's copy decides: a job that moved since the index saw it and no longer matches is left out.
        jobs += [r for r in found if r is not None and record_matches(r, q)]
        nxt = reply.next
        if nxt is None or len(jobs) >= limit:
            break
        if q.where and time.monotonic() >= deadline:
            break  # a short page and the cursor: the caller may ask on
    if q.where:  # the index cannot count a JSON path without a scan: at least what was seen
        total, exact = q.offset + len(jobs) + (1 if nxt is not None else 0), exact and nxt is None
    return JobPage(jobs=jobs[:limit], total=total, offset=q.offset, limit=limit, next=nxt, exact=exact)


async def match_ids(conn: Connection, ops: JobOps, q: JobsQuery, page: int = MAX_PAGE) -> AsyncIterator[list[str]]:
    """Every job id the filter matches, newest first, a page at a time, resuming by cursor (the
    index's view: whoever acts on an id re-checks the KV's record). Without an index: one KV scan."""
    nxt = q.cursor
    while True:
        reply = await ask_index(conn, msgspec.structs.replace(q, cursor=nxt, offset=0, limit=page,
                                                              budget=max(q.budget, 0.5)), JobsReply)
        if reply is None:
            if nxt is not None:
                raise ChronosError("the job index stopped answering part way; run the command again")
            records = [r for r in await _all_records(ops) if record_matches(r, q)]
            records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
            for start in range(0, len(records), page):
                yield [r.id for r in records[start:start + page]]
            return
        if reply.ids:
            yield reply.ids
        nxt = reply.next
        if nxt is None:
            return


async def count_matches(conn: Connection, ops: JobOps, q: JobsQuery, budget: float = 60.0) -> tuple[int, bool]:
    """How many jobs the filter matches (the index's view) and whether the count is complete
    (False when ``budget`` seconds ran out first). A --where count resumes by cursor."""
    if not q.where:
        reply = await ask_index(conn, msgspec.structs.replace(q, limit=1, offset=0, cursor=None), JobsReply)
        if reply is not None:
            if reply.exact:
                return reply.total, True
            n = 0  # over the count cap: walk the ids
            async for ids in match_ids(conn, ops, q):
                n += len(ids)
            return n, True
    else:
        deadline = time.monotonic() + budget
        n, nxt = 0, None
        while True:
            reply = await ask_index(conn, msgspec.structs.replace(q, count_only=True, cursor=nxt, offset=0,
                                                                  limit=1, budget=MAX_BUDGET), JobsReply)
            if reply is None:
                break
            n += reply.total
            nxt = reply.next
            if nxt is None:
                return n, True
            if time.monotonic() >= deadline:
                return n, False
    records = await _all_records(ops)
    return sum(1 for r in records if record_matches(r, q)), True


async def _scan(ops: JobOps, q: JobsQuery, limit: int) -> JobPage:
    records = await _all_records(ops)
    page, nxt, total = scan_page(records, msgspec.structs.replace(q, limit=limit))
    return JobPage(jobs=page, total=total, offset=q.offset, limit=limit, next=nxt)


async def _all_records(ops: JobOps) -> list[JobRecord]:
    out = []
    for e in await (await ops.store()).entries():
        try:
            rec = codec.decode(e.value or b"", JobRecord)
        except ChronosError:
            continue
        rec.revision = e.revision
        out.append(rec)
    if len(out) > 100_000:
        log.warning("listed %d records by scanning the KV: start a scheduler (its job index answers in "
                    "milliseconds)", len(out))
    return out


async def job_counts(conn: Connection, ops: JobOps, window: float = 3600.0, *, fallback: bool = True,
                     timeout: float = 5.0) -> Counts | None:
    reply = await ask_index(conn, CountsQuery(window=window), CountsReply, timeout=timeout)
    if reply is None:
        if not fallback:
            return None
        return counts_from_records(await _all_records(ops), time.time(), window)
    return summarize(reply)
