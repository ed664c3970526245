"""The dead-letter queue: list, show, replay, forget and purge entries of the DLQ stream.

One live entry per job: a job that is retried or replayed and fails again adds a newer entry,
which supersedes the older ones. Listings, counts and lookups by job id see the newest entry
of each job only; replay, purge and dlq_forget delete a job's every entry.
"""

from __future__ import annotations

import logging
from typing import Sequence

import nats.errors
import nats.js.errors

from .. import codec
from ..audit import audited
from ..clock import Clock
from ..connection import Connection
from ..errors import ChronosError, ConflictError, NotFoundError, ValidationError
from ..jobs import JobOps, new_record
from ..models import DLQEntry, JobRecord
from ..states import TERMINAL, JobState
from .jobs import Jobs

log = logging.getLogger("chronos.client")


class DLQ:
    def __init__(self, conn: Connection, clock: Clock, ops: JobOps, jobs: Jobs) -> None:
        self.conn = conn
        self.names = conn.names
        self.clock = clock
        self.ops = ops
        self.jobs = jobs  # a replay of a job whose record is kept is a retry

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
    async def dlq_replay(self, ref: str | int, *, known: tuple[DLQEntry, list[int]] | None = None) -> JobRecord:
        """Publish a DLQ entry's job again (as a fresh generation of the same job) and remove its entries.

        ``known``: the entry and its job's DLQ sequences, read already (a bulk replay reads the DLQ
        once for all entries instead of once per entry)."""
        entry = await self.dlq_get(ref) if known is None else known[0]
        if entry.spec is None or entry.job_id is None:
            raise ChronosError(
                f"DLQ entry {entry.seq} is a malformed message ({entry.reason}); it cannot be replayed, only purged"
            )
        # The job's entries as of now: a replayed job that fails again at once adds a newer one,
        # which must stay.
        doomed = await self.dlq_sequences(entry.job_id) if known is None else known[1]
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
            rec = await self.jobs.retry(entry.job_id)
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
