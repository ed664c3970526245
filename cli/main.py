"""The root `chronos` app: global options, settings merged once, sub-apps composed with add_typer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from chronos.config import config_path_from_env, load_settings

from . import admin, bench, dev, dlq, jobs, logs, schedules, serve, tui
from ._shared import AppState, ChronosGroup, setup_logging

app = typer.Typer(
    name="chronos",
    cls=ChronosGroup,
    help="chronos: a job scheduler over NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="TOML config file (default: $CHRONOS_CONFIG).", dir_okay=False),
    ] = None,
    server: Annotated[Optional[str], typer.Option("--server", "-s", help="NATS URL(s), comma-separated.")] = None,
    namespace: Annotated[Optional[str], typer.Option("--namespace", "-n", help="chronos namespace.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON output for every command.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Debug logging and tracebacks on errors.")] = False,
) -> None:
    """Settings come from the config file, CHRONOS_* variables and these flags, in that order."""
    setup_logging(logging.DEBUG if debug else logging.WARNING)
    path = str(config) if config is not None else config_path_from_env()
    overrides: dict[str, Any] = {}
    if server:
        overrides["nats"] = {"url": server}
    if namespace:
        overrides["namespace"] = namespace
    settings = load_settings(path, overrides=overrides)
    ctx.obj = AppState(settings=settings, json=json_, debug=debug, config_path=path)


app.command("submit")(jobs.submit)
app.command("retry")(jobs.retry)
app.command("cancel")(jobs.cancel)
app.add_typer(jobs.app, name="jobs")
app.add_typer(dlq.app, name="dlq")
app.add_typer(schedules.app, name="schedules")
app.command("logs")(logs.logs)
app.command("history")(logs.history)
app.command("workers")(logs.workers)
app.add_typer(admin.app, name="admin")
app.add_typer(serve.app, name="serve")
app.command("dev")(dev.dev)
app.command("tui")(tui.tui)
app.add_typer(bench.app, name="bench")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
