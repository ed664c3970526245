"""The audit trail: every operator action (retry, cancel, run-now, DLQ replay and purge, schedule
changes), written before it happens to an append-only stream.

An entry goes to ``<ns>.audit.<nats user>``, and the server lets each user publish only to its
own subject (chronos/permissions.py), so the role of an entry is vouched for by the server; the
``user`` inside is the operator's login on the machine that acted, as that machine says. The
stream refuses message deletes and purges; only its ``max_age`` (``streams.audit_max_age``)
removes entries. If the entry cannot be written the action does not happen.

What it does not catch: a holder of a console credential who skips chronos and writes to NATS
directly (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import getpass
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from . import codec
from .connection import Connection, role_of
from .errors import ChronosError, PermissionDeniedError
from .subjects import user_token

log = logging.getLogger(__name__)


class AuditEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    at: float
    action: str  # "retry", "cancel", "run_now", "dlq_replay", "dlq_purge", "schedule_add", ...
    target: str = ""  # a job id, a schedule name, a DLQ sequence, a task filter
    user: str = ""  # the operator's login, as the acting machine reports it
    detail: dict[str, Any] | None = None
    # Filled in on reading, from the subject (the server enforces it), never from the payload.
    role: str = ""
    seq: int = 0


_decoder = msgspec.msgpack.Decoder(AuditEntry)


class AuditError(ChronosError):
    """The audit entry could not be written, so the action was not done."""


def login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (a bare container)
        return "unknown"


async def record(conn: Connection, action: str, target: str = "", **detail: Any) -> None:
    """Write one entry and wait for the stream to store it; raises AuditError (action refused)."""
    entry = AuditEntry(at=time.time(), action=action, target=str(target), user=login(),
                       detail={k: v for k, v in detail.items() if v is not None} or None)
    subject = conn.names.audit_subject(conn.settings.nats.user)
    try:
        await conn.js.publish(subject, codec.encode(entry), timeout=5.0)
    except PermissionDeniedError as exc:  # from connection.Denials: this user may not act at all
        raise PermissionDeniedError(f"{exc}: {action} not done (operator actions are audited)") from None
    except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
        raise AuditError(f"cannot write the audit entry for {action} {target} ({exc or type(exc).__name__}); "
                         "not done. Is the audit stream there (`chronos admin init`)?") from None


async def read(conn: Connection, *, limit: int = 100, since: float | None = None) -> list[AuditEntry]:
    """The newest ``limit`` entries (at or after ``since``), oldest first."""
    names = conn.names
    try:
        info = await conn.js.stream_info(names.audit_stream)
    except nats.js.errors.NotFoundError:
        raise ChronosError(f"no audit stream {names.audit_stream}: run `chronos admin init`") from None
    last = info.state.last_seq
    if info.state.messages == 0:
        return []
    first = max(info.state.first_seq, last - limit + 1) if since is None else info.state.first_seq
    cfg = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first)
    sub = await conn.js.subscribe(names.audit_wildcard(), stream=names.audit_stream, ordered_consumer=True,
                                  config=cfg)
    out: list[AuditEntry] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break
            try:
                entry = _decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                entry = AuditEntry(at=0.0, action="unreadable", detail={"error": str(exc)})
            entry.role = msg.subject.rsplit(".", 1)[-1]
            entry.seq = msg.metadata.sequence.stream
            if since is None or entry.at >= since:
                out.append(entry)
            if msg.metadata.num_pending == 0 or entry.seq >= last:
                break
    finally:
        await sub.unsubscribe()
    return out[-limit:]


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
# Set while an audited action runs, so the actions it is made of (run-now -> retry) are not
# written again.
_ACTING: contextvars.ContextVar[bool] = contextvars.ContextVar("chronos_audit_acting", default=False)


def _short(value: Any) -> Any:
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def audited(action: str) -> Callable[[F], F]:
    """Decorate a Client method: write the audit entry (target: the first argument; detail: the
    keyword arguments), then act. A failed write raises AuditError and nothing is done."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def inner(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _ACTING.get():
                return await fn(self, *args, **kwargs)
            target = str(_short(args[0])) if args else ""
            # Callables (a progress callback) say nothing about what was asked.
            detail = {k: _short(v) for k, v in kwargs.items() if not callable(v)}
            if len(args) > 1:
                detail["args"] = [_short(a) for a in args[1:]]
            await record(self.conn, action, target, **detail)
            token = _ACTING.set(True)
            try:
                return await fn(self, *args, **kwargs)
            finally:
                _ACTING.reset(token)

        return inner  # type: ignore[return-value]

    return wrap


def role_label(entry: AuditEntry) -> str:
    """``chronos-console`` -> ``console`` for display."""
    return entry.role[len("chronos-"):] if entry.role.startswith("chronos-") else entry.role


__all__ = ["AuditEntry", "AuditError", "audited", "record", "read", "login", "role_label", "role_of", "user_token"]
