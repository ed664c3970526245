"""What every command shares: the context object, global and shared Options, run_async(), errors.

Commands are thin and synchronous: they parse options, then run one coroutine
on a Client through ``run_client``. Errors end as one line on stderr and an
exit code that names the kind of mistake (``EXIT_CODES``; the README has the
table). ``--debug`` adds the traceback.

Global options (``--config``, ``--server``, ``--namespace``, ``--json``,
``--debug``) are accepted before the command and after it, on every command:
``ChronosGroup`` adds them to each sub-command, and settings are merged on the
first ``state(ctx)``, once every option has been parsed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Coroutine, Optional, Sequence, TypeVar

import nats.errors
import typer
from typer.core import TyperGroup

from chronos.client import Client
from chronos.config import Settings, config_path_from_env, load_settings
from chronos.connection import TopologyMissingError
from chronos.errors import (
    ChronosError,
    ConfigError,
    ConflictError,
    ConnectionFailedError,
    IllegalTransitionError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from chronos.models import Event

T = TypeVar("T")

log = logging.getLogger("chronos.cli")


# --- exit codes: one per kind of mistake (the README's table) --------------------------------------
EXIT_FAILED = 1  # the command ran and what it did failed (a job that did not complete under --wait, ...)
EXIT_USAGE = 2  # bad usage or bad input: unknown option, a value that does not parse, a refused value
EXIT_UNREACHABLE = 3  # the NATS server cannot be reached or does not answer
EXIT_NOT_FOUND = 4  # no such job, schedule, DLQ entry, or a namespace without chronos streams
EXIT_CONFLICT = 5  # the state forbids it: already finished, still running, a name that is taken
EXIT_PERMISSION = 6  # the NATS user may not do this
EXIT_CONFIG = 7  # the configuration is wrong: config file, setting, CHRONOS_* variable
EXIT_INTERRUPTED = 130


class InternalError(ChronosError):
    """Anything unexpected, reduced to one line (the traceback is shown with --debug)."""


class StateConflict(ConflictError):
    """The job's or schedule's state does not allow what was asked."""


class PermissionDenied(PermissionDeniedError):
    exit_code = EXIT_PERMISSION


class ServerUnreachable(ConnectionFailedError):
    """Connected, but the server did not answer (or JetStream is not there)."""


class NamespaceMissing(NotFoundError):
    pass


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an error, by its kind (checked most specific first)."""
    text = str(exc).lower()
    if isinstance(exc, PermissionDeniedError) or "authorization violation" in text or "permissions violation" in text:
        return EXIT_PERMISSION
    if isinstance(exc, TopologyMissingError):
        return EXIT_NOT_FOUND
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, ConnectionFailedError):
        return EXIT_UNREACHABLE
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (ConflictError, IllegalTransitionError)):
        return EXIT_CONFLICT
    if isinstance(exc, ValidationError):
        return EXIT_USAGE
    code = getattr(exc, "exit_code", EXIT_FAILED)
    return code if isinstance(code, int) else EXIT_FAILED


# --- global options and the context object ----------------------------------------------------------
@dataclass(frozen=True)
class AppState:
    """Settings merged once from the global options, plus output flags."""

    settings: Settings
    json: bool = False
    debug: bool = False
    config_path: str | None = None


@dataclass
class GlobalOptions:
    """The global options as parsed so far: before the command (root callback) and after it."""

    config: str | None = None
    server: str | None = None
    namespace: str | None = None
    json: bool = False
    debug: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_GLOBALS = "chronos.globals"


def global_options(ctx: typer.Context) -> GlobalOptions:
    meta = ctx.meta  # one dict shared by a context and all its children
    g = meta.get(_GLOBALS)
    if g is None:
        g = meta[_GLOBALS] = GlobalOptions()
    return g


def set_global(ctx: typer.Context, name: str, value: Any) -> None:
    """Record a global option given anywhere on the command line (a value after the command wins)."""
    if value is None or value is False:
        return
    g = global_options(ctx)
    setattr(g, name, str(value) if name == "config" else value)
    if name == "debug":
        setup_logging(logging.DEBUG)


def state(ctx: typer.Context) -> AppState:
    """Settings merged on first use, after every option (before or after the command) is parsed."""
    root = ctx.find_root()
    if isinstance(root.obj, AppState):
        return root.obj
    g = global_options(ctx)
    path = g.config if g.config is not None else config_path_from_env()
    overrides: dict[str, Any] = {}
    if g.server:
        overrides["nats"] = {"url": g.server}
    if g.namespace:
        overrides["namespace"] = g.namespace
    settings = load_settings(path, overrides=overrides)
    root.obj = AppState(settings=settings, json=g.json, debug=g.debug, config_path=path)
    return root.obj


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or state(ctx).json


def _global_template(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", dir_okay=False, hidden=True, expose_value=False, help="TOML config file.",
        callback=lambda ctx, v: set_global(ctx, "config", v))] = None,
    server: Annotated[Optional[str], typer.Option(
        "--server", "-s", hidden=True, expose_value=False, help="NATS URL(s), comma-separated.",
        callback=lambda ctx, v: set_global(ctx, "server", v))] = None,
    namespace: Annotated[Optional[str], typer.Option(
        "--namespace", "-n", hidden=True, expose_value=False, help="chronos namespace.",
        callback=lambda ctx, v: set_global(ctx, "namespace", v))] = None,
    json_: Annotated[bool, typer.Option(
        "--json", hidden=True, expose_value=False, help="JSON output.",
        callback=lambda ctx, v: set_global(ctx, "json", v))] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", hidden=True, expose_value=False, help="Debug logging and tracebacks on errors.",
        callback=lambda ctx, v: set_global(ctx, "debug", v))] = False,
) -> None:
    """Only its parameters are used: Typer builds them, add_global_options copies them."""


def _global_params(taken: set[str]) -> list[Any]:
    """The global options for one sub-command, minus names it already uses (``-c`` is --concurrency there)."""
    template = typer.Typer()
    template.command()(_global_template)
    made = []
    for param in typer.main.get_command(template).params:
        names = [n for n in param.opts if n not in taken]
        if not any(n.startswith("--") for n in names):
            continue
        p = copy.copy(param)
        p.opts = names
        made.append(p)
    return made


def add_global_options(cmd: Any) -> None:
    """Give ``cmd`` and every command below it the global options (those it has not got already)."""
    taken = {name for p in cmd.params for name in (*p.opts, *p.secondary_opts)}
    cmd.params.extend(_global_params(taken))
    for sub in getattr(cmd, "commands", {}).values():
        add_global_options(sub)


# --- shared options -------------------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys; times are epoch seconds).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


# --- running coroutines -------------------------------------------------------------------------
# After Ctrl-C, the longest a command may take to wind down before it is ended anyway.
FORCE_EXIT_AFTER = 5.0


def _force_exit() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more to say
            pass
    os._exit(EXIT_INTERRUPTED)


async def _ends_after_ctrl_c(coro: Coroutine[Any, Any, T]) -> T:
    """Ctrl-C cancels ``coro``; asyncio.run then waits for every task, and one that swallows its
    cancel (nats-py's wait_for on Python 3.11 can) kept `logs --follow` alive after Ctrl-C on a
    loaded host. So from the cancel on, the process ends within FORCE_EXIT_AFTER seconds."""
    try:
        return await coro
    except asyncio.CancelledError:
        timer = threading.Timer(FORCE_EXIT_AFTER, _force_exit)
        timer.daemon = True
        timer.start()
        raise


def run_async(st: AppState, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop (Typer has no native async)."""
    try:
        return asyncio.run(_ends_after_ctrl_c(coro))
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
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


def run_client(st: AppState, fn: Callable[[Client], Awaitable[T]], *, ensure: bool = True) -> T:
    """Connect a Client with the merged settings, run ``fn(client)``, close the client.

    ``ensure=False`` is for every command but the few that may create a namespace: it never
    creates a stream, and a namespace without chronos streams is one line (NamespaceMissing).
    """

    async def go() -> T:
        # The refusal ends the command as its error line; the connection's log line would repeat it.
        quiet = _DropRepeatedRefusal() if not st.debug else None
        if quiet is not None:
            logging.getLogger("chronos.connection").addFilter(quiet)
        try:
            return await run(quiet)
        finally:
            if quiet is not None:
                logging.getLogger("chronos.connection").removeFilter(quiet)

    async def run(_: Any) -> T:
        try:
            client = await Client.connect(st.settings, ensure=ensure)
        except ConnectionFailedError as exc:
            if "authorization violation" in str(exc).lower():
                raise PermissionDenied(f"NATS at {st.settings.nats.url} refused these credentials "
                                       "(authorization violation)") from None
            raise
        try:
            if not ensure and not await client.namespace_exists():
                raise NamespaceMissing(f"namespace {st.settings.namespace} has no chronos streams "
                                       "(run chronos admin init)")
            try:
                return await fn(client)
            except ChronosError:
                raise
            except Exception as exc:
                raise _explained(client, exc) from exc
        finally:
            try:
                await client.close()
            except Exception as exc:  # closing after an error must not hide the error
                log.debug("client close failed: %s", exc)

    return run_async(st, go())


class _DropRepeatedRefusal(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("permission denied")


def _explained(client: Client, exc: Exception) -> Exception:
    """A raw NATS error as the kind of mistake it is: a permission refused, or no answer."""
    last = getattr(client.conn.nc, "last_error", None)
    if last is not None and "permissions violation" in str(last).lower():
        return PermissionDenied(f"permission denied: {str(last).removeprefix('nats: ')}")
    if isinstance(exc, nats.errors.NoRespondersError):
        return ServerUnreachable(f"no JetStream at {client.settings.nats.url} (is the server run with -js?)")
    if isinstance(exc, (nats.errors.TimeoutError, asyncio.TimeoutError)):
        return ServerUnreachable(f"no answer from NATS at {client.settings.nats.url} in time")
    return exc


async def resolve_job(client: Client, ref: str) -> str:
    """A full job id, or a unique prefix of one, as the full id."""
    return await client.resolve_job_id(ref)


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


# --- the root group: one-line errors and exit codes ------------------------------------------------
class ChronosGroup(TyperGroup):
    """Runs the CLI in non-standalone mode so every failure ends as one line and the exit code of its kind.

    Every sub-command also gets the global options, so they work after the command too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for cmd in self.commands.values():
            add_global_options(cmd)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except ChronosError as exc:
            fail(str(exc), exit_code_for(exc))
        except typer.Abort:
            fail("aborted", EXIT_FAILED)
        except typer.TyperException as exc:  # click's usage errors
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(2)  # the help text has been printed already
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
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
