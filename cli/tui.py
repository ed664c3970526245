"""`chronos tui [--readonly] [--serve --port P]`: the operations console, in a terminal or a browser."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer

from chronos.errors import ChronosError

from ._shared import AppState, state


def tui(
    ctx: typer.Context,
    readonly: Annotated[bool, typer.Option("--readonly", help="Look, don't touch: hide and refuse every action.")] = False,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the console to browsers (textual-serve).")] = False,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port for --serve.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address for --serve to listen on.")] = "localhost",
) -> None:
    """Open the operations console (keys: ? for help, : for views, ctrl+p for every command)."""
    st = state(ctx)
    if serve:
        _serve(st, readonly=readonly, host=host, port=port)
        return
    from chronos.tui.app import make_app

    make_app(st.settings, None, readonly=readonly).run()


def child_command(st: AppState, *, readonly: bool) -> str:
    """The command textual-serve starts for each browser session: this console, with the same settings."""
    args = [sys.executable, "-m", "chronos.cli.main"]
    if st.config_path:
        args += ["--config", st.config_path]
    args += ["--server", st.settings.nats.url, "--namespace", st.settings.namespace, "tui"]
    if readonly:
        args.append("--readonly")
    return shlex.join(args)


def _serve(st: AppState, *, readonly: bool, host: str, port: int) -> None:
    try:
        from textual_serve.server import Server
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ChronosError(f"--serve needs textual-serve: {exc}") from None
    title = f"chronos {st.settings.namespace}" + (" (read-only)" if readonly else "")
    typer.echo(f"serving the chronos console on http://{host}:{port} (ctrl+c to stop)", err=True)
    Server(child_command(st, readonly=readonly), host=host, port=port, title=title).serve()
