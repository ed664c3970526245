"""Connect to NATS, create the topology idempotently, and hand out KV handles.

``Connection`` bundles what every service and the Client share: the NATS client,
its JetStream context, the pipelined Publisher and the namespace's Names.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from typing import Any, Awaitable, Callable

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.kv import KeyValue

from .config import Settings
from .errors import ConfigError, ConnectionFailedError, PermissionDeniedError
from .publisher import Publisher
from .subjects import Names, inbox_prefix
from .transport import Transport, select_transport

log = logging.getLogger(__name__)


class TopologyMissingError(ConfigError):
    """A stream, bucket or consumer is missing and these credentials may not create it."""


class TopologyUnavailableError(ConnectionFailedError):
    """The cluster could not place a stream, bucket or consumer within the patience below."""


# A cluster that is starting or rolling a node answers "no suitable peers for placement, peer
# offline" (10005), 503 or nothing at all for a while, though a node's health check may already
# say ok (seen in the R3 fault test). Creating the topology waits that out, logging why, instead
# of failing the service with a traceback.
_PLACEMENT_PATIENCE = 30.0
_NO_PEERS = 10005

# Room for the envelope around a job's payload (id, spec fields, headers).
_ENVELOPE_SLACK = 16 * 1024

# Consumers on streams that non-admin roles read expire this long after their last interest; the
# server refuses a longer inactive_threshold (the longest chronos asks for is a 300 s KV watch).
# A stolen credential can then hold consumers only while its connection lives (security.md).
_EPHEMERAL_IDLE = 300.0
# nats-py lower-cases the server's -ERR line, subject included; Denials keeps the real spelling.
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.IGNORECASE)


def role_of(settings: Settings) -> str:
    """The role a connection acts as, for messages: ``chronos-worker`` -> ``worker``."""
    user = settings.nats.user
    if not user:
        return "creds" if (settings.nats.creds_file or settings.nats.nkey_seed_file) else "anonymous"
    return user[len("chronos-"):] if user.startswith("chronos-") else user


class Denials:
    """Turns the server's "Permissions Violation" into one clear error, at once.

    nats-py only hands the ``-ERR`` to the error callback; a refused request would then wait
    for its full timeout (10 s for the JetStream API) and end as "nats: timeout". This logs
    one line naming the subject and the role, and fails every request in flight to that
    subject with PermissionDeniedError (requests go through ``nc.request``, wrapped below).
    """

    def __init__(self, role: str) -> None:
        self.role = role
        self.seen: list[str] = []  # every refused subject, oldest first (bounded)
        self._waiting: dict[str, list[list[Any]]] = {}  # by lower-cased subject
        self._spelling: dict[str, str] = {}  # lower-cased -> as used, for recent requests and subscriptions

    def error(self, subject: str) -> PermissionDeniedError:
        return PermissionDeniedError(f"permission denied: {subject} (role {self.role})")

    def on_error(self, exc: Exception) -> bool:
        m = _VIOLATION.search(str(exc))
        if m is None:
            return False
        kind, lowered = m.groups()
        subject = self._spelling.get(lowered.lower(), lowered)
        self.seen.append(subject)
        del self.seen[:-100]
        log.error("permission denied: %s%s (role %s)", "subscribe " if kind == "Subscription" else "", subject,
                  self.role)
        for entry in self._waiting.get(lowered.lower(), ()):
            if not entry[1]:
                entry[1] = True
                entry[0].cancel()
        return True

    def _remember(self, subject: str) -> str:
        key = subject.lower()
        if key not in self._spelling:
            if len(self._spelling) >= 1024:
                self._spelling.pop(next(iter(self._spelling)))
            self._spelling[key] = subject
        return key

    def wrap(self, nc: NATS) -> None:
        request = nc.request
        subscribe = nc.subscribe

        async def remembered(subject: str, *args: Any, **kwargs: Any) -> Any:
            self._remember(subject)
            return await subscribe(subject, *args, **kwargs)

        async def guarded(subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
                          headers: dict[str, Any] | None = None) -> Any:
            task = asyncio.current_task()
            entry: list[Any] = [task, False]
            key = self._remember(subject)
            waiting = self._waiting.setdefault(key, [])
            waiting.append(entry)
            try:
                return await request(subject, payload, timeout=timeout, old_style=old_style, headers=headers)
            except asyncio.CancelledError:
                if entry[1] and task is not None and task.uncancel() == 0:
                    raise self.error(subject) from None
                raise
            finally:
                waiting.remove(entry)
                if not waiting:
                    self._waiting.pop(key, None)

        nc.request = guarded  # type: ignore[method-assign]
        nc.subscribe = remembered  # type: ignore[method-assign]


class Connection:
    def __init__(self, nc: NATS, settings: Settings, denials: Denials | None = None) -> None:
        self.nc = nc
        self.settings = settings
        self.denials = denials or Denials(role_of(settings))
        self.names = Names(settings.namespace)
        self.js = nc.jetstream(timeout=10.0)
        # The probe of nats-py's internals (nats.transport; chronos/transport): fast or stock.
        self.transport: Transport = select_transport(settings, nc)
        self.publisher = Publisher(nc, transport=self.transport, atomic=settings.nats.atomic_batches)
        self._kv: dict[str, KeyValue] = {}

    async def kv(self, bucket: str) -> KeyValue:
        handle = self._kv.get(bucket)
        if handle is None:
            handle = await self.js.key_value(bucket)
            self._kv[bucket] = handle
        return handle

    async def close(self) -> None:
        await self.publisher.close()
        if not self.nc.is_closed:
            await self._drop_abandoned_iterators()
            try:
                await self.nc.drain()
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, asyncio.TimeoutError):
                pass
            if not self.nc.is_closed:
                try:
                    await self.nc.close()
                except OSError as exc:  # nats-py flushes what it still holds into a socket that died
                    log.debug("close: the connection was gone already: %s", exc)


    async def _drop_abandoned_iterators(self) -> None:
        """Unsubscribe iterator-style subscriptions (``sub.messages``) before draining.

        Their readers are gone by the time the connection closes. A reader cancelled while it
        held a message never marks it done, and nats-py's drain then waits for the whole
        drain timeout (5 s) on that subscription, which can eat a service's shutdown margin.
        Callback subscriptions are left to drain: their callbacks still run.
        """
        for sub in self.transport.iterator_subscriptions():
            try:
                await sub.unsubscribe()
            except Exception as exc:  # already gone or connection closing: nothing to drain then
                log.debug("unsubscribe before drain: %s", exc)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    n = settings.nats
    if not (n.tls_ca or n.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=n.tls_ca) if n.tls_ca else ssl.create_default_context()
    if n.tls_cert:
        ctx.load_cert_chain(n.tls_cert, n.tls_key)
    return ctx


async def connect(settings: Settings, *, name: str = "chronos", reconnect: bool = True) -> Connection:
    """Connect with the settings' credentials; a server that is down raises ConnectionFailedError naming the URL."""
    n = settings.nats
    opts: dict[str, Any] = {
        "servers": [u.strip() for u in n.url.split(",")],
        "name": name,
        "connect_timeout": n.connect_timeout,
        "allow_reconnect": reconnect,
        "max_reconnect_attempts": -1 if reconnect else 0,
        "reconnect_time_wait": 0.5,
        "pending_size": 64 * 1024 * 1024,
        "flusher_queue_size": 8192,
        "drain_timeout": 5,
        # Subjects are built in subjects.py from validated tokens; skip re-checking each publish.
        "skip_subject_validation": True,
        # Replies come back under this user's own prefix; the server lets no other user read them.
        "inbox_prefix": n.inbox_prefix or inbox_prefix(n.user),
    }
    if n.user:
        opts["user"], opts["password"] = n.user, n.password
    if n.token:
        opts["token"] = n.token
    if n.nkey_seed_file or n.creds_file:
        _require_nkeys("nats.nkey_seed_file" if n.nkey_seed_file else "nats.creds_file")
    if n.nkey_seed_file:
        opts["nkeys_seed"] = n.nkey_seed_file
    if n.creds_file:
        opts["user_credentials"] = n.creds_file
    tls = _tls_context(settings)
    if tls is not None:
        opts["tls"] = tls

    denials = Denials(role_of(settings))

    async def _quiet_error(exc: Exception) -> None:
        if not denials.on_error(exc):
            log.debug("nats: %s", exc)

    opts["error_cb"] = _quiet_error
    holder: list[Connection] = []

    async def _disconnected() -> None:
        if holder:
            holder[0].publisher.connection_lost()

    opts["disconnected_cb"] = _disconnected
    # The first connect must fail fast and clearly; reconnects after that retry forever.
    # nats-py retries a refused first connect for ~2 minutes whatever its options say, so probe first.
    await _probe(opts["servers"], n.url, n.connect_timeout)
    try:
        nc = await asyncio.wait_for(nats.connect(**{**opts, "allow_reconnect": False}), n.connect_timeout + 3)
    except (OSError, nats.errors.NoServersError, asyncio.TimeoutError, nats.errors.Error) as exc:
        raise ConnectionFailedError(f"cannot reach NATS at {n.url}: {exc or type(exc).__name__}") from None
    if reconnect:
        # nats-py reads these when a connection drops, so switching them on now is enough.
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
    denials.wrap(nc)
    conn = Connection(nc, settings, denials)
    holder.append(conn)
    await conn.publisher.start()
    return conn


def _require_nkeys(setting: str) -> None:
    """nats-py signs nkey and creds challenges with the optional ``nkeys`` package."""
    import importlib.util

    if importlib.util.find_spec("nkeys") is None:
        raise ConfigError(f"{setting} needs the nkeys package: pip install 'nats-py[nkeys]'")


async def _probe(servers: list[str], url: str, timeout: float) -> None:
    from urllib.parse import urlsplit

    errors = []
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            errors.append(str(exc) or type(exc).__name__)
            continue
        writer.close()
        return
    raise ConnectionFailedError(f"cannot reach NATS at {url}: {errors[-1] if errors else 'no server'}")


async def ensure_topology(conn: Connection) -> None:
    """Create or update every stream and bucket the namespace uses. Safe to call any number of times.

    With ``nats.manage_topology = false`` (least-privilege credentials that may not create
    streams) it only checks that everything exists and raises TopologyMissingError naming
    what does not.
    """
    if not conn.settings.nats.manage_topology:
        await verify_topology(conn)
        return
    s = conn.settings
    names = conn.names
    js = conn.js
    replicas = s.nats.replicas
    # No stream honours Nats-Rollup (one such write would wipe a bucket or stream); streams that
    # non-admin roles read expire idle consumers (see _EPHEMERAL_IDLE). Existing streams are moved
    # to this config by the update below: run `chronos admin init` after upgrading.
    idle = api.StreamConsumerLimits(inactive_threshold=_EPHEMERAL_IDLE)
    streams = [
        # Limits retention, not work-queue: under sync_interval always a work-queue ack is a delete,
        # an fsync per job; here an ack is consumer state and the leader purges what every consumer
        # acknowledged, in bulk (scheduler/purger.py). Full: new messages are refused (discard new),
        # never an unacknowledged job dropped. A stream made as work-queue keeps working (slower).
        api.StreamConfig(
            name=names.jobs_stream,
            subjects=[names.jobs_wildcard()],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            storage=api.StorageType.FILE,
            duplicate_window=s.jobs.duplicate_window,
            max_msg_size=s.jobs.max_payload_bytes + _ENVELOPE_SLACK,
            max_bytes=s.streams.jobs_max_bytes,
            num_replicas=replicas,
            allow_direct=True,
            allow_rollup_hdrs=False,
            allow_atomic=True,  # bulk submit's work messages go in atomic batches (clientapi/batched.py)
        ),
        api.StreamConfig(
            name=names.dlq_stream,
            subjects=[names.dlq_wildcard()],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=s.streams.dlq_max_age,
            max_bytes=s.streams.dlq_max_bytes,
            num_replicas=replicas,
            allow_direct=True,
            allow_rollup_hdrs=False,
            consumer_limits=idle,
        ),
        api.StreamConfig(
            name=names.events_stream,
            subjects=[names.events_wildcard()],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=s.streams.events_max_age,
            max_bytes=s.streams.events_max_bytes,
            discard=api.DiscardPolicy.OLD,
            num_replicas=replicas,
            allow_rollup_hdrs=False,  # no consumer_limits: the archive's durable lives here
        ),
        api.StreamConfig(
            name=names.delayed_stream,
            subjects=[names.delayed_wildcard()],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=s.jobs.duplicate_window,
            num_replicas=replicas,
            allow_direct=True,
            allow_rollup_hdrs=False,
            consumer_limits=idle,
        ),
        # Operator actions: append-only (no message delete, no purge); only max_age removes entries.
        api.StreamConfig(
            name=names.audit_stream,
            subjects=[names.audit_wildcard()],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=s.streams.audit_max_age,
            num_replicas=replicas,
            allow_direct=True,
            allow_rollup_hdrs=False,
            deny_delete=True,
            deny_purge=True,
            consumer_limits=idle,
        ),
    ]
    # A stream info asked before the cluster has a meta leader gets no answer: wait as for a create.
    await _until_placed(lambda: _keep_work_queue(js, streams[0]), f"stream {streams[0].name}")
    for cfg in streams:
        await _until_placed(lambda cfg=cfg: _add_or_update_stream(js, cfg), f"stream {cfg.name}")

    buckets = [
        api.KeyValueConfig(bucket=names.jobs_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, direct=True),
        api.KeyValueConfig(bucket=names.workers_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, ttl=s.streams.heartbeat_ttl, direct=True),
        api.KeyValueConfig(bucket=names.tasks_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, direct=True),
        api.KeyValueConfig(bucket=names.control_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, ttl=86400.0, direct=True),
        api.KeyValueConfig(bucket=names.schedules_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, direct=True),
        # No bucket TTL: the lease expires by per-message TTL; reads go to the stream leader (no direct).
        api.KeyValueConfig(bucket=names.lease_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas),
        # Operator settings per queue (pause flags): no TTL, a pause lasts until a resume.
        api.KeyValueConfig(bucket=names.queues_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, direct=True),
        # Unique-while-active and debounce keys: no TTL, a key is held as long as its job is pending.
        api.KeyValueConfig(bucket=names.unique_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, direct=True),
        # Rate-limit state and concurrency slots: no bucket TTL, each slot expires by its own
        # per-message TTL (its lease); reads go to the stream leader (no direct), as for the lease.
        api.KeyValueConfig(bucket=names.limits_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas),
        # Workflows: definitions, node specs, state records and fan-in bitmaps (chronos/workflowstore.py).
        api.KeyValueConfig(bucket=names.workflows_bucket, history=1, storage=api.StorageType.FILE,
                           replicas=replicas, direct=True),
    ]
    for kv_cfg in buckets:
        # The pruner deletes a pruned record's marker by sequence; no other bucket allows message delete.
        deny_delete = kv_cfg.bucket != names.jobs_bucket
        await _until_placed(lambda kv_cfg=kv_cfg, d=deny_delete: _ensure_bucket(js, kv_cfg, deny_delete=d),
                            f"bucket {kv_cfg.bucket}")

    for queue in s.worker.queues:
        await ensure_queue_consumers(conn, queue)


async def ensure_queue_consumers(conn: Connection, queue: str) -> None:
    """One durable per (priority, queue): work-queue streams refuse overlapping filters."""
    from .subjects import PRIORITIES

    for priority in PRIORITIES:
        if conn.settings.nats.manage_topology:
            await _until_placed(lambda p=priority: _ensure_consumer(conn, p, queue),
                                f"consumer {conn.names.consumer_name(priority, queue)}")
        else:
            await _require(conn.js.consumer_info(conn.names.jobs_stream, conn.names.consumer_name(priority, queue)),
                           f"consumer {conn.names.consumer_name(priority, queue)} (queue {queue!r})")


async def verify_topology(conn: Connection) -> None:
    """Every stream, bucket and queue consumer exists (read-only checks: STREAM.INFO, CONSUMER.INFO)."""
    names = conn.names
    streams = [names.jobs_stream, names.dlq_stream, names.events_stream, names.delayed_stream, names.audit_stream]
    buckets = [names.jobs_bucket, names.workers_bucket, names.tasks_bucket, names.control_bucket,
               names.schedules_bucket, names.lease_bucket, names.queues_bucket, names.unique_bucket,
               names.limits_bucket, names.workflows_bucket]
    for stream in streams:
        await _require(conn.js.stream_info(stream), f"stream {stream}")
    for bucket in buckets:
        info = await _require(conn.js.stream_info(names.kv_stream(bucket)), f"bucket {bucket}")
        if info is not None and info.config.allow_rollup_hdrs:
            log.warning("bucket %s still honours rollup headers (made before this version): any role that "
                        "writes it can wipe it; run `chronos admin init` with admin credentials", bucket)
    for queue in conn.settings.worker.queues:
        await ensure_queue_consumers(conn, queue)


async def _require(check: Any, what: str) -> Any:
    try:
        return await check
    except nats.js.errors.NotFoundError:
        raise TopologyMissingError(
            f"{what} does not exist and nats.manage_topology is false: "
            "run `chronos admin init` with admin credentials (and every queue in worker.queues)"
        ) from None
    except nats.errors.TimeoutError:
        raise TopologyMissingError(
            f"no answer checking {what}: do these credentials allow $JS.API.STREAM.INFO / CONSUMER.INFO?"
        ) from None


def _transient_placement(exc: Exception) -> bool:
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    return isinstance(exc, nats.js.errors.BadRequestError) and getattr(exc, "err_code", None) == _NO_PEERS


async def _until_placed(create: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``create``, retrying while the cluster cannot place it yet (a peer offline, no meta leader)."""
    patience = _PLACEMENT_PATIENCE
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.25
    while True:
        try:
            await create()
            return
        except nats.js.errors.APIError as exc:
            if not _transient_placement(exc):
                if "replicas" in (exc.description or "").lower():  # e.g. more than a single server has
                    raise ConfigError(f"nats.replicas: the server refused {what}: {exc.description}") from None
                raise
            reason = exc.description or str(exc)
        except nats.errors.TimeoutError:
            # No meta leader yet. Creating again is safe: each create accepts what already exists.
            reason = "no answer from the JetStream API (no meta leader yet?)"
        if loop.time() + delay > deadline:
            raise TopologyUnavailableError(
                f"the cluster could not place {what} for {patience:g}s: {reason}; "
                "are all of its nodes up (nats.replicas asks for that many)?")
        log.warning("cannot place %s yet (%s); retrying in %.2gs", what, reason, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


_warned_work_queue: set[str] = set()


async def _keep_work_queue(js: Any, cfg: api.StreamConfig) -> None:
    """A jobs stream made before limits retention keeps work-queue retention (the server cannot
    change it in place): it works, each ack a delete (an fsync per job under sync_interval always).
    Says once how to move to the new shape."""
    try:
        current = (await js.stream_info(cfg.name)).config
    except nats.js.errors.NotFoundError:
        return
    if current.retention != api.RetentionPolicy.WORK_QUEUE:
        return
    cfg.retention = api.RetentionPolicy.WORK_QUEUE
    cfg.discard = current.discard
    if cfg.name not in _warned_work_queue:
        _warned_work_queue.add(cfg.name)
        log.warning("stream %s has work-queue retention (made before this version; every ack is a delete, an "
                    "fsync each under sync_interval always): to migrate, stop submitters, let workers empty the "
                    "queues, delete the stream (nats stream rm %s) and run `chronos admin init`", cfg.name, cfg.name)


def work_stream_is_limits(info: Any) -> bool:
    """Whether a jobs stream (its STREAM.INFO) keeps acknowledged messages until purged (limits retention)."""
    return info.config.retention == api.RetentionPolicy.LIMITS


async def _add_or_update_stream(js: Any, cfg: api.StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError as exc:
        # 10058: exists with a different config; move it to ours.
        if getattr(exc, "err_code", None) == 10058:
            await js.update_stream(cfg)
        else:
            raise


async def _ensure_bucket(js: Any, cfg: api.KeyValueConfig, *, deny_delete: bool) -> None:
    """A bucket's stream as nats-py's ``create_key_value`` makes it, but without rollups.

    nats-py's buckets honour ``Nats-Rollup``: one empty write with ``Nats-Rollup: all`` to any
    key then deletes every key, and every role that writes a key could do it. Chronos never rolls
    up (it deletes keys with delete markers), so it is off: on a new bucket from the start, on an
    existing one by a stream update (``chronos admin init`` after an upgrade). ``deny_delete``
    cannot be lifted by an update; an old jobs bucket keeps it and the pruner's markers then
    expire by their TTL instead (scheduler/pruner.py).
    """
    stream = f"KV_{cfg.bucket}"
    idle = api.StreamConsumerLimits(inactive_threshold=_EPHEMERAL_IDLE)
    try:
        current = (await js.stream_info(stream)).config
    except nats.js.errors.NotFoundError:
        duplicate_window = min(120.0, cfg.ttl) if cfg.ttl else 120.0
        await js.add_stream(api.StreamConfig(
            name=stream, subjects=[f"$KV.{cfg.bucket}.>"], allow_direct=cfg.direct, allow_rollup_hdrs=False,
            allow_msg_ttl=True, allow_atomic=True, deny_delete=deny_delete, discard=api.DiscardPolicy.NEW,
            duplicate_window=duplicate_window, max_age=cfg.ttl, max_bytes=cfg.max_bytes, max_consumers=-1,
            max_msg_size=cfg.max_value_size, max_msgs=-1, max_msgs_per_subject=cfg.history,
            num_replicas=cfg.replicas, storage=cfg.storage, consumer_limits=idle,
        ))
        return
    limits = current.consumer_limits
    if (not current.allow_rollup_hdrs and current.allow_msg_ttl and limits is not None
            and limits.inactive_threshold == _EPHEMERAL_IDLE and current.allow_atomic):
        return
    log.info("bucket %s: switching rollup headers off, atomic batches on and bounding idle consumers", cfg.bucket)
    current.allow_rollup_hdrs = False
    current.allow_msg_ttl = True
    current.allow_atomic = True  # batched writes (store/kv.py CasBatcher, clientapi/batched.py)
    current.consumer_limits = idle
    await js.update_stream(current)


def consumer_config(conn: Connection, priority: str, queue: str) -> api.ConsumerConfig:
    s = conn.settings.worker
    return api.ConsumerConfig(
        durable_name=conn.names.consumer_name(priority, queue),
        filter_subject=conn.names.queue_filter(priority, queue),
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=s.ack_wait,
        max_deliver=s.max_deliver,
        max_ack_pending=-1,
        max_waiting=4096,
        deliver_policy=api.DeliverPolicy.ALL,
    )


async def _ensure_consumer(conn: Connection, priority: str, queue: str) -> None:
    cfg = consumer_config(conn, priority, queue)
    try:
        await conn.js.add_consumer(conn.names.jobs_stream, cfg)
    except nats.js.errors.BadRequestError as exc:
        if _transient_placement(exc):
            raise
        # An existing durable with other settings (ack_wait changed in config): move it to ours.
        log.info("updating consumer %s: %s", cfg.durable_name, exc)
        await conn.js.update_consumer(conn.names.jobs_stream, cfg) if hasattr(conn.js, "update_consumer") else None
