"""The root `chronos` app: global options, settings merged once, sub-apps composed with add_typer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import admin, bench, dev, dlq, jobs, logs, queues, schedules, serve, tui, workflows
from ._shared import ChronosGroup, set_global, setup_logging

app = typer.Typer(
    name="chronos",
    cls=ChronosGroup,
    help="chronos: a job scheduler over NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(epilog="Global options also work after the command: chronos jobs list --json --namespace prod.")
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
    """Settings come from the config file, CHRONOS_* variables and these flags, in that order.

    The flags may also follow the command; settings are merged once the command line is parsed.
    """
    setup_logging(logging.DEBUG if debug else logging.WARNING)
    for name, value in (("config", config), ("server", server), ("namespace", namespace), ("json", json_),
                        ("debug", debug)):
        set_global(ctx, name, value)


app.command("submit")(jobs.submit)
app.command("retry")(jobs.retry)
app.command("cancel")(jobs.cancel)
app.add_typer(jobs.app, name="jobs")
app.add_typer(dlq.app, name="dlq")
app.add_typer(schedules.app, name="schedules")
app.add_typer(queues.app, name="queues")
app.add_typer(workflows.app, name="workflows")
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
