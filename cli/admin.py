"""`chronos admin init|status`: create the namespace's topology, and a health check for scripts."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import msgspec
import typer

from chronos.client import Client

from . import _output as out
from ._parse import BadOption
from ._shared import JsonOpt, run_client, state, wants_json
from .logs import live_workers

app = typer.Typer(help="Set up and check a chronos namespace.", no_args_is_help=True)


class InitReport(msgspec.Struct):
    namespace: str
    server: str
    queues: list[str]


class StatusReport(msgspec.Struct):
    """JSON of `admin status`; ``healthy`` is false when any of ``problems`` is set."""

    namespace: str
    server: str
    healthy: bool
    problems: list[str]
    workers_live: int
    workers_total: int
    queues: dict[str, int]  # waiting messages per "priority.queue"
    dlq: int
    leader: Optional[str]  # None until the scheduler's lease exists
    # Durability as the server reports it (chronos/durability.py); checked under --strict.
    nats_server_version: str = ""
    sync: dict[str, str] = {}  # server name -> "always" or the fsync interval; empty when not readable
    sync_source: str = "unavailable"
    sync_announced: Optional[str] = None  # what an embedded server (chronos dev) says of itself, unverified
    replicas: dict[str, int] = {}  # stream -> replicas
    strict: bool = False


@app.command("init")
def init(
    ctx: typer.Context,
    json_: JsonOpt = False,
    signing_keys: Annotated[Optional[str], typer.Option(
        "--signing-keys", help="Also write a job-signing key pair (signing.key, signing.pub) into this directory.",
    )] = None,
) -> None:
    """Create (or update) the streams, buckets and consumers of the namespace. Safe to repeat."""
    st = state(ctx)
    if signing_keys is not None:
        from chronos.signing import write_keypair

        try:
            key_path, public = write_keypair(signing_keys)
        except FileExistsError:
            raise BadOption("--signing-keys", f"{signing_keys}/signing.key exists already; not overwriting it") from None
        except OSError as exc:
            raise BadOption("--signing-keys", f"cannot write there: {exc.strerror or exc}") from None
        typer.echo(f"wrote {key_path} (keep it on console and scheduler hosts only); in the settings:\n"
                   f"  [security]\n  signing_key_file = \"{key_path}\"   # console users, the scheduler\n"
                   f"  trusted_keys = [\"{public}\"]   # workers and the scheduler", err=True)

    async def go(client: Client) -> InitReport:
        for q in st.settings.worker.queues:
            await client.ensure_queue(q)
        return InitReport(namespace=st.settings.namespace, server=st.settings.nats.url,
                          queues=list(st.settings.worker.queues))

    report = run_client(st, go)
    if wants_json(ctx, json_):
        out.print_json(report)
    else:
        typer.echo(f"namespace {report.namespace!r} is ready on {report.server} "
                   f"(queues: {', '.join(report.queues)})")


async def leader_status(client: Client) -> Optional[str]:
    """The current scheduler leader's node id, or None when no scheduler holds the lease."""
    info = await client.leader()
    return None if info is None else info.node


@app.command("leader")
def leader(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Which scheduler node leads now (exits 1 when none does)."""
    st = state(ctx)
    info = run_client(st, lambda c: c.leader(), ensure=False)  # a read: never creates streams
    if wants_json(ctx, json_):
        out.print_json(info)
    elif info is not None:
        rows = [("node", info.node), ("host", info.host), ("pid", str(info.pid)), ("term", str(info.term)),
                ("since", out.when(info.acquired_at, time.time())),
                ("expires in", "-" if info.expires_in is None else f"{info.expires_in:.1f}s (renewed every ttl/3)")]
        out.console().print(out.key_values(rows))
    if info is None:
        if not wants_json(ctx, json_):
            typer.echo("error: no scheduler leader (is `chronos serve scheduler` running?)", err=True)
        raise typer.Exit(1)


@app.command("status")
def status(
    ctx: typer.Context,
    require_leader: Annotated[
        bool, typer.Option("--require-leader/--no-require-leader", help="Fail without a scheduler leader.")
    ] = True,
    require_worker: Annotated[
        bool, typer.Option("--require-worker/--no-require-worker", help="Fail without a live worker.")
    ] = True,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also fail when the server is less durable than documented: "
                           "sync_interval not always, fewer stream replicas than nats.replicas, an old nats-server.")
    ] = False,
    monitor: Annotated[
        Optional[list[str]], typer.Option("--monitor", metavar="URL",
                                          help="A server's monitoring URL (http://host:8222) to read its fsync "
                                               "setting from when this user is not in the system account; repeat per node.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Health check: exits 1 when no scheduler leads or no worker is alive (for systemd, cron, load balancers).

    It also shows the server's durability: its fsync setting (sync_interval), the replicas of every
    stream and the nats-server version; --strict fails when they are weaker than deploy/README.md
    documents, one line per problem.
    """
    from chronos.durability import inspect, problems as durability_problems

    st = state(ctx)

    async def go(client: Client) -> StatusReport:
        beats = await client.workers()
        live = live_workers(beats, st.settings.worker.heartbeat_interval, time.time())
        depths = await client.queue_depths()
        dlq = await client.dlq_count()
        leader = await leader_status(client)
        problems = []
        if require_worker and not live:
            problems.append("no live worker")
        if require_leader and leader is None:
            problems.append("no scheduler leader")
        dur = await inspect(client, monitor or ())
        if strict:
            problems += durability_problems(dur)
        return StatusReport(namespace=st.settings.namespace, server=st.settings.nats.url, healthy=not problems,
                            problems=problems, workers_live=len(live), workers_total=len(beats), queues=depths,
                            dlq=dlq, leader=leader, nats_server_version=dur.version,
                            sync={s.server: s.sync for s in dur.servers}, sync_source=dur.sync_source,
                            sync_announced=dur.announced_sync, replicas=dur.replicas, strict=strict)

    report = run_client(st, go, ensure=False)  # a read: never creates streams
    if wants_json(ctx, json_):
        out.print_json(report)
    else:
        rows = [
            ("namespace", report.namespace),
            ("server", report.server),
            ("workers", f"{report.workers_live} live" + (f" ({report.workers_total - report.workers_live} stale)"
                                                          if report.workers_total > report.workers_live else "")),
            ("waiting", ", ".join(f"{k}={v}" for k, v in sorted(report.queues.items()) if v) or "0"),
            ("dlq", str(report.dlq)),
            ("leader", report.leader or "none"),
            ("nats-server", report.nats_server_version or "unknown"),
            ("sync_interval", _sync_text(report)),
            ("replicas", _replicas_text(report.replicas)),
            ("health", "ok" if report.healthy else "UNHEALTHY: " + "; ".join(report.problems)),
        ]
        out.console().print(out.key_values(rows))
    if not report.healthy:
        if not wants_json(ctx, json_):
            health = [p for p in report.problems if p in _HEALTH_PROBLEMS]
            if health:
                typer.echo(f"error: unhealthy: {'; '.join(health)}", err=True)
            for p in report.problems:  # durability problems (--strict): one line each
                if p not in _HEALTH_PROBLEMS:
                    typer.echo(f"error: {p}", err=True)
        raise typer.Exit(1)


_HEALTH_PROBLEMS = ("no live worker", "no scheduler leader")


def _sync_text(report: StatusReport) -> str:
    if not report.sync and report.sync_announced:
        return (f"{report.sync_announced} (as chronos's embedded server announces it; "
                "a system-account user or --monitor URL reads it)")
    if not report.sync:
        return "unknown (use a system-account user or --monitor URL)"
    values = set(report.sync.values())
    if len(values) == 1:
        (value,) = values
        where = f"{len(report.sync)} server(s)" if len(report.sync) > 1 else next(iter(report.sync))
        return f"{value} ({where}, from {report.sync_source})"
    return ", ".join(f"{k}={v}" for k, v in report.sync.items()) + f" (from {report.sync_source})"


def _replicas_text(replicas: dict[str, int]) -> str:
    if not replicas:
        return "-"
    values = set(replicas.values())
    if len(values) == 1:
        return f"{values.pop()} (all {len(replicas)} streams)"
    return ", ".join(f"{k}={v}" for k, v in replicas.items())
