"""Prometheus metrics for `chronos serve worker|scheduler`, fed by events, never by the hot path.

A worker's metrics come from its in-process event bus (``EventPublisher.bus``) and from
reading a few of its counters at scrape time. A scheduler node follows every job event of
the namespace on ``<ns>.events.>`` (a core subscription: a view, like the events themselves)
and polls the queue consumers for depth. Each service gets its own ``CollectorRegistry``.

Worker::

    chronos_jobs_total{state,queue}             job transitions this worker made (completed, retryable, ...)
    chronos_job_run_seconds{queue}              how long attempts ran (histogram)
    chronos_jobs_fetched_total{queue}           deliveries this worker handled to an outcome
    chronos_acks_total{kind}                    ack | nak | term, by the outcome that sent it
    chronos_worker_slots{kind}                  total | used

Scheduler::

    chronos_leader                              1 while this node holds the lease
    chronos_leader_changes_total{change}        gained | lost, for this node
    chronos_job_events_total{state,queue}       job events seen namespace-wide
    chronos_job_queue_seconds{queue}            from available to started (histogram, namespace-wide)
    chronos_jobs{state,queue,priority}          available (waiting) and running (unacked), from the consumers
    chronos_scheduled_jobs                      delayed jobs parked for later
    chronos_dlq_messages                        entries in the dead-letter queue
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import nats.errors
import nats.js.errors
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .config import Settings
from .models import Event
from .states import JobState

log = logging.getLogger(__name__)

JOB_STATES = frozenset(s.value for s in JobState)
# Seconds: from a 50 ms no-op to a half-hour report.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Which acknowledgement each outcome a worker reports sent (executor: completed -> ack, ...).
_ACK_OF = {"completed": "ack", "retryable": "nak", "available": "nak", "cancelled": "term", "discarded": "term"}
# A job id remembered from its "available" event until it starts; oldest forgotten past this.
MAX_TRACKED = 200_000


class WorkerMetrics:
    """Metrics of one WorkerService; ``on_event`` is subscribed to its event bus."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("chronos_jobs", "Job transitions made by this worker.", ["state", "queue"], registry=r)
        self.run_seconds = Histogram("chronos_job_run_seconds", "How long job attempts ran on this worker.",
                                     ["queue"], buckets=RUN_BUCKETS, registry=r)
        self.fetched = Counter("chronos_jobs_fetched", "Job deliveries this worker took and handled to an outcome.",
                               ["queue"], registry=r)
        self.acks = Counter("chronos_acks", "Acknowledgements sent, by kind (ack, nak, term).", ["kind"], registry=r)
        slots = Gauge("chronos_worker_slots", "Worker slots.", ["kind"], registry=r)
        slots.labels("total").set_function(lambda: float(getattr(self.service, "slots", 0)))
        slots.labels("used").set_function(lambda: float(getattr(self.service, "used", 0)))
        for kind in ("ack", "nak", "term"):
            self.acks.labels(kind)  # present from the first scrape, at 0

    def on_event(self, ev: Event) -> None:
        kind = ev.kind
        if kind not in JOB_STATES:
            return
        queue = ev.queue or "_"
        self.jobs.labels(kind, queue).inc()
        ack = _ACK_OF.get(kind)
        if ack is None:  # running: not an outcome
            return
        self.acks.labels(ack).inc()
        self.fetched.labels(queue).inc()
        if ev.duration is not None:
            self.run_seconds.labels(queue).observe(ev.duration)

    async def follow(self, stop: asyncio.Event) -> None:
        """Subscribe to the worker's bus as soon as it exists (before its first fetch), until stop."""
        svc = self.service
        while svc.events is None:
            if stop.is_set():
                return
            await asyncio.sleep(0.01)
        unsubscribe = svc.events.bus.subscribe(self.on_event)
        try:
            await stop.wait()
        finally:
            unsubscribe()


class SchedulerMetrics:
    """Metrics of one SchedulerService node and, through the events subject, of the namespace."""

    def __init__(self, service: Any, settings: Settings, *, poll_every: float = 5.0) -> None:
        self.service = service
        self.settings = settings
        self.poll_every = poll_every
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        leader = Gauge("chronos_leader", "1 while this scheduler node holds the leader lease.", registry=r)
        leader.set_function(lambda: 1.0 if getattr(self.service, "is_leader", False) else 0.0)
        self.leader_changes = Counter("chronos_leader_changes", "Lease changes of this node.", ["change"], registry=r)
        self.events = Counter("chronos_job_events", "Job events seen in the namespace.", ["state", "queue"],
                              registry=r)
        self.queue_seconds = Histogram("chronos_job_queue_seconds",
                                       "Seconds from available to started, namespace-wide.", ["queue"],
                                       buckets=QUEUE_BUCKETS, registry=r)
        self.jobs = Gauge("chronos_jobs", "Jobs waiting (available) or unacknowledged (running), per consumer.",
                          ["state", "queue", "priority"], registry=r)
        self.scheduled = Gauge("chronos_scheduled_jobs", "Delayed jobs parked for later.", registry=r)
        self.dlq = Gauge("chronos_dlq_messages", "Entries in the dead-letter queue.", registry=r)
        # Events of one job come from different processes, each flushing in batches: a start can be
        # seen before the submitter's "available". Whichever comes first waits here for the other.
        self._available_at: OrderedDict[str, float] = OrderedDict()
        self._started_at: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.following = asyncio.Event()  # subscribed to the namespace's events
        for change in ("gained", "lost"):
            self.leader_changes.labels(change)

    def on_event(self, ev: Event) -> None:
        kind = ev.kind
        if kind.startswith("leader."):
            node = getattr(self.service, "node_id", None) or getattr(getattr(self.service, "lease", None),
                                                                      "node_id", None)
            if ev.worker == node and kind in ("leader.gained", "leader.lost"):
                self.leader_changes.labels(kind.split(".", 1)[1]).inc()
            return
        if kind not in JOB_STATES:
            return
        queue = ev.queue or "_"
        self.events.labels(kind, queue).inc()
        if not ev.job_id:
            return
        if kind == "available":  # ready to run from this moment
            started = self._started_at.pop(ev.job_id, None)
            if started is not None:
                self.queue_seconds.labels(started[1]).observe(max(0.0, started[0] - ev.at))
            else:
                _remember(self._available_at, ev.job_id, ev.at)
            return
        if kind == "scheduled":  # waiting on purpose is not queueing
            return
        started_at = ev.at - (ev.duration or 0.0) if kind != "running" else ev.at
        since = self._available_at.pop(ev.job_id, None)
        if since is not None:
            self.queue_seconds.labels(queue).observe(max(0.0, started_at - since))
        elif kind in ("running", "completed"):
            _remember(self._started_at, ev.job_id, (started_at, queue))

    async def follow(self, stop: asyncio.Event) -> None:
        """Own connection: follow the namespace's events and poll the consumers until stop."""
        from .connection import connect
        from .events import decode_events
        from .subjects import PRIORITIES

        conn = await connect(self.settings, name="chronos-scheduler-metrics")
        names = conn.names

        async def on_msg(msg: Any) -> None:
            try:
                for ev in decode_events(msg.data):
                    self.on_event(ev)
            except Exception as exc:  # a foreign or newer message on the subject: skip it, say so
                log.debug("metrics: undecodable event batch on %s: %s", msg.subject, exc)

        try:
            await conn.nc.subscribe(names.events_wildcard(), cb=on_msg)
            await conn.nc.flush()
            self.following.set()
            while not stop.is_set():
                await self._poll(conn, PRIORITIES)
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_every)
                except asyncio.TimeoutError:
                    pass
        finally:
            await conn.close()

    async def _poll(self, conn: Any, priorities: tuple[str, ...]) -> None:
        names = conn.names
        js = conn.js
        try:
            for info in await js.consumers_info(names.jobs_stream):
                name = info.name or ""
                for p in priorities:
                    prefix = names.consumer_name(p) + "_"  # durables are consumer_name(priority, queue)
                    if name.startswith(prefix):
                        queue = name[len(prefix):]
                        self.jobs.labels("available", queue, p).set(info.num_pending or 0)
                        self.jobs.labels("running", queue, p).set(info.num_ack_pending or 0)
            self.dlq.set((await js.stream_info(names.dlq_stream)).state.messages)
            self.scheduled.set((await js.stream_info(names.delayed_stream)).state.messages)
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
            log.debug("metrics: consumer poll failed: %s", exc)


def _remember(d: OrderedDict[str, Any], key: str, value: Any) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > MAX_TRACKED:
        d.popitem(last=False)


class MetricsMain:
    """A ``main(stop)`` for run_service: serves ``metrics.registry`` on host:port while it follows."""

    def __init__(self, metrics: WorkerMetrics | SchedulerMetrics, port: int, host: str = "127.0.0.1") -> None:
        self.metrics = metrics
        self.port = port
        self.host = host
        self.bound_port: int | None = None

    async def __call__(self, stop: asyncio.Event) -> None:
        server, thread = start_http_server(self.port, addr=self.host, registry=self.metrics.registry)
        self.bound_port = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.bound_port)
        try:
            await self.metrics.follow(stop)
            await stop.wait()
        finally:
            await asyncio.get_running_loop().run_in_executor(None, server.shutdown)
            server.server_close()
            thread.join(5)
