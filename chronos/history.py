"""History, the client side: ask every scheduler node's archive and merge the answers.

::

    Client.history() --request <ns>.api.history--> every node's Archiver (no queue group)
          <-- one HistoryReply per node; merged here, newest record per job

The nodes' archives (``chronos/archive.py``, filled by ``chronos/scheduler/archiver.py``)
can differ, so one node's answer is not the history.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from . import codec
from .archive import HistoryQuery, HistoryReply, NoArchiveError, finish_key, validate_query
from .connection import Connection
from .errors import ChronosError
from .models import JobRecord

log = logging.getLogger(__name__)


async def query_history(
    conn: Connection,
    *,
    task: str | None = None,
    state: str | None = None,
    queue: str | None = None,
    since: float | None = None,
    until: float | None = None,
    text: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    timeout: float = 5.0,
    gather: float = 0.25,
) -> list[JobRecord]:
    """Ask every scheduler node's archive on ``<ns>.api.history`` and merge the answers; newest finished first.

    Nodes' archives differ (a node added later, a follower that lagged while the leader
    pruned), so one node's answer is not the history. After the first reply, the others get
    as long again as it took (at least 30 ms, at most ``gather`` seconds): the nodes run the same
    query on similar files, so their answers come close together, and a query does not pay a
    fixed wait. Without any reply, ``timeout``. Per job the newest record wins.
    """
    q = HistoryQuery(task=task, state=str(state) if state is not None else None, queue=queue, since=since,
                     until=until, text=text, limit=limit, cursor=cursor)
    validate_query(q)
    subject = conn.names.history_api()
    nc = conn.nc
    inbox = nc.new_inbox()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        if msg.data:  # an empty message with headers is a "no responders" status
            replies.put_nowait(msg.data)
        elif msg.headers and msg.headers.get("Status") == "503":
            replies.put_nowait(b"")

    sub = await nc.subscribe(inbox, cb=on_reply)
    answers: list[HistoryReply] = []
    try:
        loop = asyncio.get_running_loop()
        await nc.publish(subject, codec.encode(q), reply=inbox)
        sent = loop.time()
        deadline = sent + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                data = await asyncio.wait_for(replies.get(), left)
            except TimeoutError:
                break
            if not data:
                break  # no responders
            answers.append(codec.decode(data, HistoryReply))
            if len(answers) == 1:
                first = loop.time() - sent
                deadline = loop.time() + min(gather, max(0.03, first))
    finally:
        await sub.unsubscribe()
    if not answers:
        raise NoArchiveError(
            f"history needs the scheduler archive, and no scheduler archive answered on {subject} within "
            f"{timeout:g}s: is a scheduler (chronos serve scheduler) running for namespace {conn.names.ns!r}?")
    failed = [a for a in answers if a.error]
    if len(failed) == len(answers):
        a = failed[0]
        raise ChronosError(f"history query failed on {a.node or 'a scheduler'}: {a.error}")
    newest: dict[str, JobRecord] = {}
    for a in answers:
        if a.error:
            log.warning("history: %s could not answer: %s", a.node or "a scheduler", a.error)
            continue
        if a.truncated:
            log.warning("history reply from %s was cut to %d rows to fit the server's max payload; "
                        "narrow the query for more", a.node, len(a.records))
        for rec in a.records:
            have = newest.get(rec.id)
            if have is None or (rec.updated_at, len(rec.attempts)) > (have.updated_at, len(have.attempts)):
                newest[rec.id] = rec
    merged = sorted(newest.values(), key=finish_key, reverse=True)
    return merged[:limit]
