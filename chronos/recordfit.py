"""Keep a job record (and a DLQ entry) under the server's message limit as a job's runs add to it.

Submit refuses a record within 8 KiB of the server's ``max_payload`` (clientapi/submit.py), but
runs add to it: a result of up to ``jobs.max_result_bytes``, and per attempt an error (2,000
characters) and a traceback (16,000), up to 20 attempts, counted in characters that UTF-8 may
make four bytes each. A write over ``max_payload`` fails before it is sent, and the job was then
run again and again with its record saying nothing true about why (red team: 21 runs of a
``max_attempts=2`` job). So a write that would not fit first gives up, in this order, what a
reader needs least, and stops as soon as it fits:

1. the tracebacks of earlier attempts (the archive's events keep them);
2. the latest traceback past its last ``_TB_KEEP`` bytes, and every error past ``_ERROR_KEEP``;
3. the attempts before the last ``_ATTEMPTS_KEEP`` (``attempt`` still counts every run);
4. the result, replaced by a note (``result_truncated``);
5. the latest traceback, and every error cut to ``_ERROR_MIN``.

The spec (args) is never touched: it is signed, and what a job was asked to do is its identity.
Only records over the limit pay anything (a length comparison for the others).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .models import Attempt, DLQEntry, JobRecord

# Room left for what goes around a record in a message: the KV subject and its headers, the
# work message's envelope (``JobMessage``: the record and its revision).
ENVELOPE_MARGIN = 1024
_TB_KEEP = 2000
_ERROR_KEEP = 500
_ERROR_MIN = 200
_ATTEMPTS_KEEP = 3


def _cut(text: str | None, n: int, *, tail: bool = False) -> str | None:
    """``text`` cut to its first (or last) ``n`` bytes of UTF-8, marked with "…"; a character cut
    in two is dropped."""
    if text is None:
        return None
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= n:
        return text
    if tail:
        return "…" + data[-n:].decode("utf-8", "ignore")
    return data[:n].decode("utf-8", "ignore") + "…"


def _shrink_attempts(attempts: list[Attempt], *, tb_keep: int | None, error_keep: int) -> list[Attempt]:
    out = []
    last = len(attempts) - 1
    for i, a in enumerate(attempts):
        tb = _cut(a.traceback, tb_keep, tail=True) if (i == last and tb_keep is not None) else None
        out.append(msgspec.structs.replace(a, traceback=tb, error=_cut(a.error, error_keep)))
    return out


def fit_record(rec: JobRecord, limit: int, encode: Callable[[JobRecord], bytes]) -> tuple[JobRecord, bytes]:
    """``rec`` and its bytes, shrunk (steps in the module docstring) until the bytes are at most
    ``limit``; when even step 5 does not fit, the smallest form (its write then fails as before)."""
    data = encode(rec)
    if len(data) <= limit:
        return rec, data
    attempts = list(rec.attempts)
    steps: list[Callable[[JobRecord], JobRecord]] = [
        lambda r: msgspec.structs.replace(
            r, attempts=[msgspec.structs.replace(a, traceback=None) for a in r.attempts[:-1]] + r.attempts[-1:]),
        lambda r: msgspec.structs.replace(
            r, attempts=_shrink_attempts(r.attempts, tb_keep=_TB_KEEP, error_keep=_ERROR_KEEP),
            error=_cut(r.error, _ERROR_KEEP)),
        lambda r: msgspec.structs.replace(r, attempts=r.attempts[-_ATTEMPTS_KEEP:]),
        lambda r: msgspec.structs.replace(
            r, result=None if r.result is None else
            f"<result dropped: the job's record would be over the server's {limit + ENVELOPE_MARGIN} byte "
            "message limit>", result_truncated=r.result is not None or r.result_truncated),
        lambda r: msgspec.structs.replace(
            r, attempts=_shrink_attempts(r.attempts, tb_keep=None, error_keep=_ERROR_MIN),
            error=_cut(r.error, _ERROR_MIN)),
    ]
    new = msgspec.structs.replace(rec, attempts=attempts)
    for step in steps:
        new = step(new)
        data = encode(new)
        if len(data) <= limit:
            break
    return new, data


def fit_dlq_entry(entry: DLQEntry, limit: int, encode: Callable[[DLQEntry], bytes]) -> bytes:
    """A DLQ entry's bytes at most ``limit`` when cutting its traceback and reason can make it so
    (the spec stays whole: a replay needs it)."""
    data = encode(entry)
    for tb_keep, reason_keep in ((_TB_KEEP, 2000), (None, _ERROR_MIN)):
        if len(data) <= limit:
            break
        entry = msgspec.structs.replace(entry, traceback=None if tb_keep is None else _cut(entry.traceback, tb_keep, tail=True),
                                        reason=_cut(entry.reason, reason_keep) or "")
        data = encode(entry)
    return data
