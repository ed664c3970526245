"""Client: the front door. Submit, get, list, cancel, retry, watch, DLQ, schedules, workers.

The CLI and the TUI use only this. The work is done by one object per noun in
``chronos/clientapi/`` (as ``cli/`` is split by noun); ``Client`` builds them around one
connection, one ``JobOps`` and one event publisher, and each of its methods is the same-named
method of one of them:

=================  ===========================  ==============================================
attribute          module                       methods
=================  ===========================  ==============================================
``catalog``        ``clientapi/catalog.py``     register_tasks, tasks, task_queue
``submitter``      ``clientapi/submit.py``      build_spec, submit, submit_job, submit_specs
``jobs``           ``clientapi/jobs.py``        get, list, counts, wait, cancel, retry, run_now,
                                                watch, resolve_job_id
``dlq``            ``clientapi/dlq.py``         dlq_list, dlq_get, dlq_replay, dlq_sequences,
                                                dlq_forget, dlq_purge, dlq_count
``cluster``        ``clientapi/cluster.py``     leader, workers, queue_depths, ensure_queue,
                                                namespace_exists
``archive``        ``clientapi/history.py``     history
``schedules``      ``clientapi/schedules.py``   add_schedule, update_schedule, get_schedule, ...
``limit_control``  ``clientapi/limits.py``      set_queue_limit, clear_queue_limit, queue_limit,
                                                queue_limits, limits
``queue_control``  ``clientapi/queues.py``      pause_queue, resume_queue, queue_flag, queues
=================  ===========================  ==============================================

Composition, not mixins: each noun object holds only what it needs (a schedule's checks ask
the catalog, the cluster and the submitter), and the method names are kept as they were, so
every caller stays unchanged. A delegated method costs one attribute lookup more per call, not
an await: the bulk submit path (PubAck callbacks) is the submitter's own code, unchanged.
Every state change goes through ``states.transition`` and is persisted with compare-and-set
(via JobOps); operator actions are audited in the noun modules (``@audited``, chronos/audit.py).
"""

from __future__ import annotations

from typing import Any, Callable, Concatenate, Generic, ParamSpec, TypeVar, overload

import msgspec

from .clientapi.catalog import TaskCatalog
from .clientapi.cluster import Cluster
from .clientapi.dlq import DLQ
from .clientapi.history import History
from .clientapi.jobs import Jobs
from .clientapi.limits import Limits
from .clientapi.queues import Queues
from .clientapi.schedules import Schedules
from .clientapi.workflows import Workflows
from .clientapi.spec import (  # re-exported: the limits a spec is checked against
    LATEST_RUN_AT as LATEST_RUN_AT,
    MAX_METADATA as MAX_METADATA,
    MAX_TASK_NAME as MAX_TASK_NAME,
    MAX_TIMEOUT as MAX_TIMEOUT,
    MAX_UNIQUE_KEY as MAX_UNIQUE_KEY,
    check_spec as check_spec,
)
from .clientapi.submit import Submitter
from .clock import SYSTEM_CLOCK, Clock
from .config import Settings, load_settings
from .connection import Connection, connect, ensure_topology
from .events import EventPublisher
from .jobs import JobOps
from .models import JobRecord

P = ParamSpec("P")
R = TypeVar("R")


class _Via(Generic[P, R]):
    """A Client method that is a noun object's method: ``client.name(...)`` calls
    ``client.<part>.name(...)``, with that method's signature, return type and docstring."""

    def __init__(self, part: str, fn: Callable[Concatenate[Any, P], R]) -> None:
        self.part = part
        self.name = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> "_Via[P, R]": ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[P, R]: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, self.part), self.name)


class Client:
    def __init__(self, conn: Connection, clock: Clock = SYSTEM_CLOCK) -> None:
        self.conn = conn
        self.settings: Settings = conn.settings
        self.names = conn.names
        self.clock = clock
        self.ops = JobOps(conn, clock)
        self.events = EventPublisher(conn.nc, conn.names)
        self.catalog = TaskCatalog(conn, clock)
        self.submitter = Submitter(conn, clock, self.ops, self.events, self.catalog)
        self.jobs = Jobs(conn, clock, self.ops, self.events)
        self.dlq = DLQ(conn, clock, self.ops, self.jobs)
        self.cluster = Cluster(conn, clock)
        self.archive = History(conn)
        self.limit_control = Limits(conn, clock)
        self.workflow_api = Workflows(conn, clock, self.ops, self.events, self.catalog, self.submitter)
        self.schedules = Schedules(conn, clock, self.ops, self.events, self.catalog, self.cluster, self.submitter)
        self.queue_control = Queues(conn, clock, self.cluster, limits_of=self.limit_control.queue_limits)

    @property
    def _known_tasks(self) -> set[str]:
        """Tasks taken as registered without asking the catalog (tests add to it)."""
        return self.catalog._known_tasks

    # --- lifecycle -------------------------------------------------------------
    @classmethod
    async def connect(
        cls, settings: Settings | None = None, *, ensure: bool = True, clock: Clock = SYSTEM_CLOCK
    ) -> "Client":
        settings = settings or load_settings()
        conn = await connect(settings, name="chronos-client")
        try:
            if ensure:
                await ensure_topology(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, clock)

    async def close(self) -> None:
        await self.events.close()
        await self.conn.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- task catalog (clientapi/catalog.py) -------------------------------------
    register_tasks = _Via("catalog", TaskCatalog.register_tasks)
    tasks = _Via("catalog", TaskCatalog.tasks)
    task_queue = _Via("catalog", TaskCatalog.task_queue)

    # --- submit (clientapi/submit.py) ----------------------------------------------
    build_spec = _Via("submitter", Submitter.build_spec)
    submit = _Via("submitter", Submitter.submit)
    submit_job = _Via("submitter", Submitter.submit_job)  # -> Submitted(id, outcome): unique/debounce say what they did
    submit_specs = _Via("submitter", Submitter.submit_specs)

    # --- jobs: read, wait, act, watch, id prefixes (clientapi/jobs.py) ---------------
    get = _Via("jobs", Jobs.get)
    list = _Via("jobs", Jobs.list)
    counts = _Via("jobs", Jobs.counts)
    wait = _Via("jobs", Jobs.wait)
    cancel = _Via("jobs", Jobs.cancel)
    retry = _Via("jobs", Jobs.retry)
    run_now = _Via("jobs", Jobs.run_now)
    watch = _Via("jobs", Jobs.watch)
    resolve_job_id = _Via("jobs", Jobs.resolve_job_id)

    # --- DLQ (clientapi/dlq.py) --------------------------------------------------------
    dlq_list = _Via("dlq", DLQ.dlq_list)
    dlq_get = _Via("dlq", DLQ.dlq_get)
    dlq_replay = _Via("dlq", DLQ.dlq_replay)
    dlq_sequences = _Via("dlq", DLQ.dlq_sequences)
    dlq_forget = _Via("dlq", DLQ.dlq_forget)
    dlq_purge = _Via("dlq", DLQ.dlq_purge)
    dlq_count = _Via("dlq", DLQ.dlq_count)

    # --- cluster: leader, workers, queues, namespace (clientapi/cluster.py) --------------
    leader = _Via("cluster", Cluster.leader)
    workers = _Via("cluster", Cluster.workers)
    queue_depths = _Via("cluster", Cluster.queue_depths)
    ensure_queue = _Via("cluster", Cluster.ensure_queue)
    namespace_exists = _Via("cluster", Cluster.namespace_exists)

    # --- queues under operator control: pause, resume, what each holds (clientapi/queues.py) ---
    pause_queue = _Via("queue_control", Queues.pause_queue)
    resume_queue = _Via("queue_control", Queues.resume_queue)
    queue_flag = _Via("queue_control", Queues.queue_flag)
    queues = _Via("queue_control", Queues.queues)

    # --- workflows (clientapi/workflows.py) ---------------------------------------------------
    submit_workflow = _Via("workflow_api", Workflows.submit)
    workflow = _Via("workflow_api", Workflows.view)
    workflow_record = _Via("workflow_api", Workflows.record)
    workflows = _Via("workflow_api", Workflows.listing)
    wait_workflow = _Via("workflow_api", Workflows.wait)
    cancel_workflow = _Via("workflow_api", Workflows.cancel)
    retry_workflow = _Via("workflow_api", Workflows.retry)

    # --- limits: queue rate and concurrency, the live snapshot (clientapi/limits.py) ---------
    set_queue_limit = _Via("limit_control", Limits.set_queue_limit)
    clear_queue_limit = _Via("limit_control", Limits.clear_queue_limit)
    queue_limit = _Via("limit_control", Limits.queue_limit)
    queue_limits = _Via("limit_control", Limits.queue_limits)
    limits = _Via("limit_control", Limits.limits)

    # --- history (clientapi/history.py) ----------------------------------------------------
    history = _Via("archive", History.history)

    # --- schedules (clientapi/schedules.py) ----------------------------------------------------
    add_schedule = _Via("schedules", Schedules.add_schedule)
    update_schedule = _Via("schedules", Schedules.update_schedule)
    get_schedule = _Via("schedules", Schedules.get_schedule)
    list_schedules = _Via("schedules", Schedules.list_schedules)
    schedule_statuses = _Via("schedules", Schedules.schedule_statuses)
    remove_schedule = _Via("schedules", Schedules.remove_schedule)
    pause_schedule = _Via("schedules", Schedules.pause_schedule)
    pause_schedules = _Via("schedules", Schedules.pause_schedules)
    resume_schedule = _Via("schedules", Schedules.resume_schedule)
    resume_schedules = _Via("schedules", Schedules.resume_schedules)
    next_fire_times = _Via("schedules", Schedules.next_fire_times)
    preview_fire_times = _Via("schedules", Schedules.preview_fire_times)
    backfill_schedule = _Via("schedules", Schedules.backfill_schedule)
    export_crontab = _Via("schedules", Schedules.export_crontab)


def record_to_dict(rec: JobRecord) -> dict[str, Any]:
    return msgspec.to_builtins(rec)
