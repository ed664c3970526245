"""`chronos serve worker` and `chronos serve scheduler`: long-running services for systemd.

The only CLI module that starts services; it builds them and hands them to
``chronos.runtime.run_service`` (signals, one task group, grace period, drain).
"""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from chronos import runtime
from chronos.config import systemd_env
from chronos.errors import ChronosError
from chronos.sdnotify import Notifier
from chronos.subjects import is_valid_token

from ._parse import BadOption, parse_csv
from ._shared import run_async, setup_logging, state

log = logging.getLogger("chronos.serve")

app = typer.Typer(help="Run chronos services in the foreground (for systemd).", no_args_is_help=True)

MetricsPortOpt = Annotated[
    Optional[int],
    typer.Option("--metrics-port", min=0, max=65535,
                 help="Serve Prometheus metrics on this port (0: off; default metrics.port from config)."),
]

# How long the runtime waits, past the worker's own shutdown_grace, for it to hand back jobs and drain.
DRAIN_MARGIN = 5.0


@app.command("worker")
def worker(
    ctx: typer.Context,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-c", min=1, help="Slots (default from config).")] = None,
    queues: Annotated[Optional[str], typer.Option("--queues", "-q", help="Comma-separated queues (default from config).")] = None,
    tasks: Annotated[
        Optional[list[str]], typer.Option("--tasks", "-t", help="Task module (serves its every @chronos.task) or module:attr; repeatable. The current directory is importable.")
    ] = None,
    builtins: Annotated[bool, typer.Option("--builtins/--no-builtins", help="Offer the shell and http tasks.")] = True,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are empty.")] = False,
    worker_id: Annotated[Optional[str], typer.Option("--id", help="Worker id (default host-pid-random).")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal forces it)."""
    st = state(ctx)
    settings = st.settings
    setup_logging("DEBUG" if st.debug else settings.log_level)
    queue_list = parse_csv(queues) if queues is not None else None
    if queue_list is not None:
        if not queue_list:
            raise BadOption("--queues", "give at least one queue")
        for q in queue_list:
            if not is_valid_token(q):
                raise BadOption("--queues", f"{q!r} is not a valid queue name (letters, digits, '_' or '-')")
    specs = list(tasks or ()) or list(settings.worker.tasks)
    registry = runtime.worker_registry(settings, specs, builtins=builtins)
    if not specs and not builtins:
        raise ChronosError("no tasks to run: pass --tasks MODULE (or module:attr), or set worker.tasks in the config")
    if queue_list is None:
        # The configured queues, plus every queue a served task submits to by default.
        declared = [d.queue for d in registry.defs() if d.queue]
        queue_list = list(dict.fromkeys([*settings.worker.queues, *declared]))
    log.info("serving %d tasks on queues %s: %s", len(registry), ",".join(queue_list), ", ".join(registry.names()))
    _warn_unsigned(settings)
    if not specs:
        log.warning("no --tasks given: this worker serves only the built-in tasks (%s)", ", ".join(registry.names()))
    main = runtime.with_metrics(
        runtime.WorkerMain(settings, registry, queues=queue_list, concurrency=concurrency, burst=burst,
                           worker_id=worker_id, tune_gc=True),
        settings, metrics_port)
    grace = settings.worker.shutdown_grace + DRAIN_MARGIN

    notifier = Notifier.from_env(systemd_env())

    async def go() -> runtime.Outcome:
        return await runtime.run_service(main, grace=grace, notifier=notifier)

    outcome = run_async(st, go())
    if outcome is runtime.Outcome.FORCED:
        raise typer.Exit(130)


@app.command("scheduler")
def scheduler(
    ctx: typer.Context,
    node_id: Annotated[Optional[str], typer.Option("--id", help="Node id in the lease (default host-pid).")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run a scheduler node until SIGTERM/SIGINT: contends for the lease; the leader fires schedules,
    promotes delayed jobs and rescues lost ones. Run two or more for failover."""
    st = state(ctx)
    settings = st.settings
    setup_logging("DEBUG" if st.debug else settings.log_level)
    _warn_unsigned(settings)
    main = runtime.with_metrics(runtime.SchedulerMain(settings, tune_gc=True, node_id=node_id), settings, metrics_port)

    notifier = Notifier.from_env(systemd_env())

    async def go() -> runtime.Outcome:
        return await runtime.run_service(main, grace=DRAIN_MARGIN, notifier=notifier)

    outcome = run_async(st, go())
    if outcome is runtime.Outcome.FORCED:
        raise typer.Exit(130)


def _warn_unsigned(settings: object) -> None:
    """Say loudly when a service that runs or republishes jobs checks no signatures outside a dev box.

    With per-role credentials but no [security] keys, a stolen worker credential can forge a job
    record that this service would run (docs/security.md, "Job authenticity")."""
    from urllib.parse import urlsplit

    from chronos.signing import from_settings

    if from_settings(settings).verifier is not None:
        return
    nats = settings.nats  # type: ignore[attr-defined]
    host = urlsplit(nats.url.split(",")[0]).hostname or ""
    roles = bool(nats.user or nats.creds_file or nats.nkey_seed_file or nats.token)
    if roles or host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("job signatures are not checked (no [security] trusted_keys): whoever can write the jobs "
                    "bucket can get code run here; create keys with `chronos admin init --signing-keys DIR` "
                    "(docs/security.md)")
