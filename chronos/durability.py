"""What the server promises about durability: fsync mode, stream replicas, nats-server version.

Read by ``chronos admin status`` and checked against what deploy/README.md documents
(``sync_interval: always``, every stream at ``nats.replicas`` copies, nats-server >= 2.11).

Where each fact comes from, as a client can reach it:
  * version: the INFO handshake of the connection (``nc.connected_server_version``);
  * replicas: ``$JS.API.STREAM.INFO`` of the namespace's streams and KV buckets;
  * fsync mode: no client API carries it (not the INFO handshake, not ``$JS.API.INFO``). The
    server's varz does: through ``$SYS.REQ.SERVER.PING.VARZ`` (a system-account user; every node
    of a cluster answers) or the monitoring port (``http: ...:8222``, ``/varz``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from typing import Any

import msgspec
from nats.js.errors import NotFoundError

from .publisher import known_sync
from .transport import server_version

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 11, 0)  # per-message TTLs (leases, heartbeats); chronos is tested on 2.15.1
DOCUMENTED_SYNC = "always"


class ServerSync(msgspec.Struct):
    server: str
    version: str
    sync: str  # "always", or the interval between fsyncs ("2m0s" style, from varz)


class DurabilityReport(msgspec.Struct):
    version: str  # of the server this connection reached
    sync_source: str  # "system account", "monitoring", or "unavailable"
    servers: list[ServerSync]
    replicas: dict[str, int]  # stream -> configured replicas
    want_replicas: int
    # The fsync mode an embedded server chronos started says it has (its server_name), when no
    # source above answered: shown, but --strict still wants it read from the server's varz.
    announced_sync: str | None = None


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("-")[0].split(".")[:3]:
        try:
            out.append(int(part))
        except ValueError:
            out.append(0)
    return tuple(out)


def _interval_text(ns: int) -> str:
    seconds = ns / 1e9
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _sync_of(varz: dict[str, Any]) -> str:
    cfg = (varz.get("jetstream") or {}).get("config") or {}
    if cfg.get("sync_always"):
        return "always"
    ns = cfg.get("sync_interval")
    return _interval_text(int(ns)) if ns else "2m"  # the server's default when it reports none


async def _varz_from_system_account(nc: Any, timeout: float) -> list[dict[str, Any]]:
    """Every server's varz through the system account's ping; empty when this user may not ask."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        if msg.headers and msg.headers.get("Status") == "503":
            got.set()  # no responders: this user cannot reach the system account
            return
        try:
            replies.append(json.loads(msg.data))
        except ValueError:
            return
        got.set()

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish("$SYS.REQ.SERVER.PING.VARZ", b"{}", reply=inbox)
        await nc.flush()
        try:
            await asyncio.wait_for(got.wait(), timeout)
        except TimeoutError:
            return []
        if replies:
            await asyncio.sleep(min(0.3, timeout))  # the other nodes of a cluster answer too
    finally:
        await sub.unsubscribe()
    return [r for r in replies if isinstance(r.get("data"), dict)]


def _varz_from_monitor(url: str, timeout: float) -> dict[str, Any]:
    base = url.rstrip("/")
    with urllib.request.urlopen(f"{base}/varz", timeout=timeout) as resp:  # noqa: S310 (an operator's URL)
        return json.load(resp)


async def inspect(client: Any, monitor_urls: list[str] | tuple[str, ...] = (), timeout: float = 1.0) -> DurabilityReport:
    """The durability facts of the server ``client`` is connected to (see the module docstring)."""
    conn = client.conn
    nc = conn.nc
    version = server_version(nc)  # the INFO handshake's, through nats-py's public API
    servers: list[ServerSync] = []
    source = "unavailable"
    for reply in await _varz_from_system_account(nc, timeout):
        data, about = reply["data"], reply.get("server") or {}
        servers.append(ServerSync(server=str(about.get("name") or data.get("server_name", "?")),
                                  version=str(about.get("ver") or data.get("version", "")), sync=_sync_of(data)))
        source = "system account"
    if not servers:
        for url in monitor_urls:
            try:
                data = await asyncio.to_thread(_varz_from_monitor, url, timeout)
            except (OSError, ValueError) as exc:
                log.info("monitoring endpoint %s: %s", url, exc)
                continue
            servers.append(ServerSync(server=str(data.get("server_name", url)), version=str(data.get("version", "")),
                                      sync=_sync_of(data)))
            source = "monitoring"
    names = conn.names
    streams = [names.jobs_stream, names.delayed_stream, names.dlq_stream, names.events_stream,
               getattr(names, "audit_stream", None)]
    streams += [names.kv_stream(b) for b in (names.jobs_bucket, names.schedules_bucket, names.control_bucket,
                                             names.lease_bucket, names.workers_bucket, names.tasks_bucket,
                                             names.queues_bucket, names.unique_bucket,
                                             names.limits_bucket)]
    replicas: dict[str, int] = {}
    for name in filter(None, streams):
        try:
            info = await conn.js.stream_info(name)
        except NotFoundError:
            continue  # a stream this deployment does not use (yet)
        replicas[name] = int(info.config.num_replicas or 1)
    return DurabilityReport(version=version, sync_source=source, servers=sorted(servers, key=lambda s: s.server),
                            replicas=dict(sorted(replicas.items())), want_replicas=conn.settings.nats.replicas,
                            announced_sync=None if servers else known_sync(nc))


def problems(report: DurabilityReport) -> list[str]:
    """One line per way the server is weaker than documented (deploy/README.md, "Durability")."""
    out: list[str] = []
    if not report.servers:
        out.append("sync_interval: cannot be read from this connection; connect as a system-account user "
                   "or pass --monitor http://<server>:8222 to confirm `sync_interval: always`")
    for s in report.servers:
        if s.sync != DOCUMENTED_SYNC:
            out.append(f"sync_interval: server {s.server} fsyncs every {s.sync}, not always: acknowledged jobs "
                       "can be lost in a power loss (deploy/nats/*.conf)")
    versions = {report.version} | {s.version for s in report.servers}
    for v in sorted(x for x in versions if x):
        if _version_tuple(v) < MIN_SERVER_VERSION:
            out.append(f"nats-server {v}: older than {'.'.join(map(str, MIN_SERVER_VERSION))}, the oldest chronos supports")
    if not report.version:
        out.append("nats-server version: unknown (no INFO from the server)")
    for name, r in report.replicas.items():
        if r < report.want_replicas:
            out.append(f"stream {name}: {r} replica(s), fewer than nats.replicas = {report.want_replicas}")
    if not report.replicas:
        out.append("streams: none found for this namespace (run `chronos admin init`)")
    return out
