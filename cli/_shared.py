"""What every command shares: the context object, shared Options, run_async(), error handling.

Commands are thin and synchronous: they parse options, then run one coroutine
on a Client through ``run_client``. Errors end as one line on stderr and an
exit code: 1 for a ChronosError (user error), 2 for usage, 3 when the server
cannot be reached, 130 on Ctrl-C. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Coroutine, Sequence, TypeVar

import typer
from typer.core import TyperGroup

from chronos.client import Client
from chronos.config import Settings
from chronos.errors import ChronosError, NotFoundError
from chronos.models import DLQEntry, Event

T = TypeVar("T")

log = logging.getLogger("chronos.cli")


class InternalError(ChronosError):
    """Anything unexpected, reduced to one line (the traceback is shown with --debug)."""


@dataclass(frozen=True)
class AppState:
    """The Typer context object: settings merged once by the root callback, plus output flags."""

    settings: Settings
    json: bool = False
    debug: bool = False
    config_path: str | None = None


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, AppState):  # a command invoked without the root callback (not via `chronos`)
        raise InternalError("the chronos root callback did not run")
    return obj


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or state(ctx).json


# --- shared options -------------------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys; times are epoch seconds).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


# --- running coroutines -------------------------------------------------------------------------
def run_async(st: AppState, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop (Typer has no native async)."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except ChronosError:
        if st.debug:
            traceback.print_exc(file=sys.stderr)
        raise
    except (typer.Exit, typer.Abort, BrokenPipeError):
        raise
    except Exception as exc:
        if st.debug:
            traceback.print_exc(file=sys.stderr)
        raise InternalError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


def run_client(st: AppState, fn: Callable[[Client], Awaitable[T]]) -> T:
    """Connect a Client with the merged settings, run ``fn(client)``, close the client."""

    async def go() -> T:
        client = await Client.connect(st.settings)
        try:
            return await fn(client)
        finally:
            try:
                await client.close()
            except Exception as exc:  # closing after an error must not hide the error
                log.debug("client close failed: %s", exc)

    return run_async(st, go())


# --- Client gaps, built on public Client methods -----------------------------------------------------
async def event_history(
    client: Client,
    *,
    since: float,
    kinds: Sequence[str] | None = None,
    queue: str | None = None,
    job_id: str | None = None,
    idle: float = 0.5,
) -> AsyncIterator[Event]:
    """Past events from ``since`` seconds ago up to now, then stop.

    Client.watch has no "caught up" marker, so this stops at the first event newer
    than the call, or when the stream stays quiet for ``idle`` seconds.
    """
    started = time.time()
    it = client.watch(kinds=kinds, queue=queue, job_id=job_id, history=since).__aiter__()
    try:
        while True:
            try:
                ev = await asyncio.wait_for(it.__anext__(), idle)
            except (asyncio.TimeoutError, StopAsyncIteration):
                return
            if ev.at > started:
                return
            yield ev
    finally:
        await it.aclose()


async def dlq_get(client: Client, ref: str | int) -> DLQEntry:
    """Client.dlq_get, with a missing sequence number reported as NotFoundError.

    For a sequence past the end of an empty or purged DLQ the server answers a
    direct get with 408/404, which Client.dlq_get lets through as a raw API error.
    """
    try:
        return await client.dlq_get(ref)
    except ChronosError:
        raise
    except Exception as exc:
        if isinstance(ref, int) and getattr(exc, "code", None) in (404, 408):
            raise NotFoundError(f"no DLQ entry with sequence {ref}") from None
        raise


# --- the root group: one-line errors and exit codes ------------------------------------------------
class ChronosGroup(TyperGroup):
    """Runs the CLI in non-standalone mode so every failure ends as one line and a fixed exit code."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except ChronosError as exc:
            fail(str(exc), getattr(exc, "exit_code", 1))
        except typer.Abort:
            fail("aborted", 1)
        except typer.TyperException as exc:  # click's usage errors
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(2)  # the help text has been printed already
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


# --- logging ------------------------------------------------------------------------------------------
class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the record (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: int | str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StderrHandler):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("nats").setLevel(logging.CRITICAL if level != logging.DEBUG else logging.DEBUG)
