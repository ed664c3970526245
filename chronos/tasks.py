"""Task handles: what ``@chronos.task`` returns.

A handle is the typed front of a registered function (Celery's task object, without the
app): calling it calls the function (for unit tests); ``submit`` (async) and
``submit_sync`` enqueue a job with the arguments bound against the function's signature
at submit, so a wrong call fails then and there, not five retries later. Defaults set on
the decorator (queue, priority, max_attempts, timeout, backoff, retry_on) apply to every
submit; ``with_options(...)`` overrides them for one call. Both return a ``JobRef`` that
can wait for the job and return its result as the function's declared return type.

Which client submits: the one given to ``chronos.set_client(client)``, else one connected
from ``load_settings()`` on first use, one per event loop (``await chronos.close_client()``
closes it); ``submit_sync`` uses the process's ``SyncClient`` (``chronos.sync_client()``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import math
import typing
import weakref
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, Iterable, ParamSpec, Protocol, TypeVar, overload

import msgspec

from .errors import ChronosError, ConfigError, ValidationError
from .limits import LimitError, key_of, task_limits
from .models import Backoff
from .subjects import PRIORITIES, is_valid_token
from .worker.registry import Registry, TaskDef, default_registry, default_task_name

if TYPE_CHECKING:
    from .client import Client
    from .workflows import Signature
    from .models import JobRecord
    from .sync import SyncClient

P = ParamSpec("P")
R = TypeVar("R")

_OPTION_NAMES = ("queue", "priority", "max_attempts", "timeout", "backoff", "delay", "run_at",
                 "unique_key", "tags", "annotations", "unique", "debounce", "debounce_max")


class JobFailedError(ChronosError):
    """The job ended in a state other than completed (discarded or cancelled)."""

    def __init__(self, record: "JobRecord") -> None:
        self.record = record
        last = record.error or (record.attempts[-1].error if record.attempts else None)
        super().__init__(f"job {record.id} ({record.spec.task}) ended {record.state.value}"
                         + (f": {last}" if last else ""))


def _as_timestamp(value: Any, name: str) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()  # a naive datetime is local time, as everywhere in chronos
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValidationError(f"{name}: must be a datetime or a Unix timestamp, not {value!r}")


def _as_seconds(value: Any, name: str) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValidationError(f"{name}: must be a number of seconds or a timedelta, not {value!r}")


def _check_options(name: str, options: dict[str, Any], error: type[ChronosError]) -> dict[str, Any]:
    """Normalise and check submit options; ``error`` is ConfigError on the decorator, ValidationError at submit."""
    out = dict(options)
    unknown = set(out) - set(_OPTION_NAMES)
    if unknown:
        raise error(f"task {name}: unknown option {sorted(unknown)[0]!r} (known: {', '.join(_OPTION_NAMES)})")
    q = out.get("queue")
    if q is not None and (not isinstance(q, str) or not is_valid_token(q)):
        raise error(f"task {name}: queue {q!r} is not a valid name (1-64 letters, digits, '_' or '-')")
    p = out.get("priority")
    if p is not None and p not in PRIORITIES:
        raise error(f"task {name}: priority {p!r} is not one of {', '.join(PRIORITIES)}")
    m = out.get("max_attempts")
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
        raise error(f"task {name}: max_attempts must be a whole number of at least 1")
    for key in ("timeout", "delay"):
        if out.get(key) is not None:
            try:
                out[key] = _as_seconds(out[key], key)
            except ValidationError as exc:
                raise error(f"task {name}: {exc}") from None
            if key == "timeout" and out[key] <= 0:
                raise error(f"task {name}: timeout must be a positive number of seconds")
            if key == "delay" and out[key] < 0:
                raise error(f"task {name}: delay must not be negative")
    if out.get("run_at") is not None:
        try:
            out["run_at"] = _as_timestamp(out["run_at"], "run_at")
        except ValidationError as exc:
            raise error(f"task {name}: {exc}") from None
    b = out.get("backoff")
    if isinstance(b, dict):
        try:
            out["backoff"] = msgspec.convert(b, Backoff)
        except msgspec.ValidationError as exc:
            raise error(f"task {name}: backoff: {exc}") from None
    elif b is not None and not isinstance(b, Backoff):
        raise error(f"task {name}: backoff must be a chronos.Backoff or a dict of its fields")
    if any(out.get(k) is not None for k in ("unique", "debounce", "debounce_max")):  # docs/unique-jobs.md
        from .clientapi.spec import unique_options

        try:
            for key in ("debounce", "debounce_max"):
                if out.get(key) is not None:
                    out[key] = _as_seconds(out[key], key)
            out.update(unique_options(out.get("unique"), out.get("debounce"), out.get("debounce_max")))
        except ValidationError as exc:
            raise error(f"task {name}: {exc}") from None
    if "tags" in out and out["tags"] is not None:
        out["tags"] = list(out["tags"])
    return out


class _Ref(Generic[R]):
    """A submitted job's id and task; the async and sync refs add the waiting."""

    __slots__ = ("id", "task", "_client", "outcome")

    def __init__(self, job_id: str, task: "Task[..., R]", client: Any, outcome: str = "created") -> None:
        self.id = job_id
        self.task = task
        self._client = client
        # created, or (unique while active, debounce; docs/unique-jobs.md) active or debounced:
        # the job already there, whose id this is
        self.outcome = outcome

    @property
    def existing(self) -> bool:
        """The submit made no new job: a unique-while-active job held the key, or a debounce moved one."""
        return self.outcome != "created"

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, task={self.task.name!r})"


class JobRef(_Ref[R]):
    """A submitted job: its id, and a wait for its typed result (async)."""

    __slots__ = ()

    async def get(self) -> "JobRecord":
        return await self._client.get(self.id)

    async def wait(self, timeout: float | None = None) -> "JobRecord":
        """The record once the job is terminal (completed, cancelled or discarded)."""
        return await self._client.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the job; its result as the task's return type, or ``JobFailedError``."""
        return self.task.result_of(await self.wait(timeout))


class SyncJobRef(_Ref[R]):
    """A submitted job, from synchronous code: its id, and a blocking wait for its typed result."""

    __slots__ = ()

    def get(self) -> "JobRecord":
        return self._client.get(self.id)  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> "JobRecord":
        return self._client.wait(self.id, timeout)  # type: ignore[no-any-return]

    def result(self, timeout: float | None = None) -> R:
        return self.task.result_of(self.wait(timeout))


class Task(Generic[P, R]):
    """A registered task. ``task(...)`` calls the function; ``submit``/``submit_sync`` enqueue it."""

    def __init__(self, fn: Callable[..., Any], taskdef: TaskDef, options: dict[str, Any]) -> None:
        self.fn = fn
        self.__chronos_taskdef__ = taskdef
        self.options = options
        self._sig = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", taskdef.name)
        self.__qualname__ = getattr(fn, "__qualname__", taskdef.name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable annotations: results stay as decoded JSON
            hints = {}
        self._hints = hints
        ret = hints.get("return", Any)
        self._result_type: Any = Any if ret is type(None) else ret

    @property
    def name(self) -> str:
        return self.__chronos_taskdef__.name

    @property
    def taskdef(self) -> TaskDef:
        return self.__chronos_taskdef__

    def __repr__(self) -> str:
        return f"<chronos task {self.name!r} -> {self.fn.__module__}.{self.fn.__qualname__}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    # --- binding ---------------------------------------------------------------------------
    def bind(self, *args: Any, **kwargs: Any) -> list[Any] | dict[str, Any]:
        """The job's args for this call, checked against the signature (and simple annotations)."""
        try:
            bound = self._sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise ValidationError(f"task {self.name}: {exc} (signature: {self.fn.__name__}{self._sig})") from None
        params = self._sig.parameters
        for pname, value in bound.arguments.items():
            ann = self._hints.get(pname)
            if ann is None or params[pname].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            try:
                msgspec.convert(value, ann, strict=True)
            except msgspec.ValidationError as exc:
                raise ValidationError(f"task {self.name}: argument {pname!r}: {exc}") from None
            except Exception:  # a type msgspec cannot check: left to the task
                pass
        positional_only = any(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)
                              for p in params.values() if p.name in bound.arguments)
        if not positional_only:
            out: dict[str, Any] = {}
            for pname, value in bound.arguments.items():
                if params[pname].kind is inspect.Parameter.VAR_KEYWORD:
                    out.update(value)
                else:
                    out[pname] = value
            return out
        if bound.kwargs:
            raise ValidationError(
                f"task {self.name}: cannot send positional-only or *args together with keyword arguments "
                "(a job carries a list or an object)")
        return list(bound.args)

    def check_limit_key(self, job_args: Any) -> None:
        """A per-key limit needs its key in the args: ValidationError naming ``limit_key`` if absent."""
        limits = self.__chronos_taskdef__.limits
        if limits is not None and limits.key is not None:
            try:
                key_of(job_args, limits.key)
            except LimitError as exc:
                raise ValidationError(f"task {self.name}: {exc}") from None

    def result_of(self, record: "JobRecord") -> R:
        from .states import JobState

        if record.state is not JobState.COMPLETED:
            raise JobFailedError(record)
        if self._result_type is Any:
            return record.result  # type: ignore[no-any-return]
        try:
            return msgspec.convert(record.result, self._result_type, strict=False)  # type: ignore[no-any-return]
        except (msgspec.ValidationError, TypeError):
            return record.result  # type: ignore[no-any-return]

    # --- workflows (chronos/workflows.py) -----------------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> "Signature":
        """A signature: this task with partial arguments, for ``chain``, ``group``, ``chord``, ``Workflow``."""
        from .workflows import Signature

        return Signature(self, args, kwargs)

    # --- submitting --------------------------------------------------------------------------
    def with_options(self, **options: Any) -> "TaskCall[P, R]":
        """These submit options for the next submit: ``send_email.with_options(delay=60).submit(...)``."""
        return TaskCall(self, _check_options(self.name, options, ValidationError))

    def _merged(self, overrides: dict[str, Any]) -> dict[str, Any]:
        opts = {**self.options, **overrides}
        if "run_at" in overrides or "delay" in overrides:  # one moment per job: the call's wins
            opts.pop("delay" if "run_at" in overrides else "run_at", None)
        return opts

    async def submit(self, *args: P.args, **kwargs: P.kwargs) -> JobRef[R]:
        """Enqueue a job (async); returns once the server has it."""
        return await TaskCall(self, {}).submit(*args, **kwargs)

    def submit_sync(self, *args: P.args, **kwargs: P.kwargs) -> SyncJobRef[R]:
        """Enqueue a job from synchronous code (any thread); returns once the server has it."""
        return TaskCall(self, {}).submit_sync(*args, **kwargs)


class TaskCall(Generic[P, R]):
    """A task with options for one submit (``with_options``)."""

    __slots__ = ("task", "options")

    def __init__(self, task: Task[P, R], options: dict[str, Any]) -> None:
        self.task = task
        self.options = options

    def with_options(self, **options: Any) -> "TaskCall[P, R]":
        return TaskCall(self.task, {**self.options, **_check_options(self.task.name, options, ValidationError)})

    async def submit(self, *args: P.args, **kwargs: P.kwargs) -> JobRef[R]:
        job_args = self.task.bind(*args, **kwargs)
        self.task.check_limit_key(job_args)
        client = await get_client()
        job_id, outcome = await client.submit_job(self.task.name, job_args, **self.task._merged(self.options))
        return JobRef(job_id, self.task, client, outcome)

    def submit_sync(self, *args: P.args, **kwargs: P.kwargs) -> SyncJobRef[R]:
        from .sync import sync_client

        job_args = self.task.bind(*args, **kwargs)
        self.task.check_limit_key(job_args)
        client = sync_client()
        opts = self.task._merged(self.options)
        if any(opts.get(k) is not None for k in ("unique", "debounce")):
            job_id, outcome = client.submit_job(self.task.name, job_args, **opts)
            return SyncJobRef(job_id, self.task, client, outcome)
        job_id = client.submit(self.task.name, job_args, **opts)  # the batched path
        return SyncJobRef(job_id, self.task, client)


class _TaskDecorator(Protocol):
    """What ``@task(...)`` with options returns: typed like ``@task`` itself."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    fn: None = None, /, *, name: str | None = ..., weight: int = ..., registry: Registry | None = ...,
    retry_on: Iterable[type[BaseException]] = ..., queue: str | None = ..., priority: str | None = ...,
    max_attempts: int | None = ..., timeout: float | None = ..., backoff: Backoff | dict[str, Any] | None = ...,
    rate_limit: str | None = ..., burst: int | None = ..., concurrency: int | None = ...,
    limit_key: str | int | Callable[[Any], Any] | None = ...,
    unique: str | None = ..., debounce: float | None = ...,
) -> _TaskDecorator: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    weight: int = 1,
    registry: Registry | None = None,
    retry_on: Iterable[type[BaseException]] = (),
    queue: str | None = None,
    priority: str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    backoff: Backoff | dict[str, Any] | None = None,
    rate_limit: str | None = None,
    burst: int | None = None,
    concurrency: int | None = None,
    limit_key: str | int | Callable[[Any], Any] | None = None,
    unique: str | None = None,
    debounce: float | None = None,
) -> Any:
    """Register a function as a task and return its handle.

    ``@task`` or ``@task(name="emails.send", queue="mail", max_attempts=3, retry_on=(IOError,))``.
    Async functions run on the worker's loop; sync ones in its thread pool. ``weight`` is
    the slots one run takes; ``retry_on`` limits retries to those exceptions (others end
    the job at once). The rest are submit defaults, except the fleet-wide limits
    (docs/rate-limits.md, docs/concurrency-limits.md): ``rate_limit="50/s"`` (or ``/m``, ``/h``)
    with an optional ``burst``, ``concurrency=N`` running at once, and ``limit_key``, which makes
    them per key: a path into the args (``"customer_id"``, ``"0"``, ``"order.customer.id"``) or a
    function of the args. A malformed limit raises ConfigError here, naming the field.
    ``unique="while_active"`` or ``debounce=<seconds>`` make every submit unique while active or
    debounced (docs/unique-jobs.md); ``with_options(unique_key=...)`` names the key.
    """

    def wrap(f: Callable[..., Any]) -> Task[Any, Any]:
        if isinstance(f, Task):
            raise ConfigError(f"task {f.name}: @chronos.task applied twice")
        if not callable(f):
            raise ConfigError(f"@chronos.task decorates a function, not {f!r}")
        task_name = name or default_task_name(f)
        if not isinstance(task_name, str) or not task_name.strip() or len(task_name) > 256:
            raise ConfigError(f"task name {task_name!r}: must be 1-256 characters")
        options = {k: v for k, v in (("queue", queue), ("priority", priority), ("max_attempts", max_attempts),
                                     ("timeout", timeout), ("backoff", backoff), ("unique", unique),
                                     ("debounce", debounce)) if v is not None}
        options = _check_options(task_name, options, ConfigError)
        try:
            limits = task_limits(rate_limit, burst, concurrency, limit_key)
        except LimitError as exc:
            raise ConfigError(f"task {task_name}: {exc}") from None
        reg = registry if registry is not None else default_registry
        d = reg.register(f, name=task_name, weight=weight, retry_on=retry_on, queue=options.get("queue"),
                         limits=limits)
        return Task(f, d, options)

    return wrap(fn) if fn is not None else wrap


# --- the client handles submit through -------------------------------------------------------
_explicit: "Client | None" = None
_per_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client]" = weakref.WeakKeyDictionary()


def set_client(client: "Client | None") -> None:
    """Make ``client`` the one task handles submit through (None: back to the lazy default)."""
    global _explicit
    _explicit = client


def _is_open(client: "Client") -> bool:
    nc = client.conn.nc
    return not (nc.is_closed or nc.is_draining)


async def get_client() -> "Client":
    """The client for handle submits in this event loop (connected on first use)."""
    if _explicit is not None and _is_open(_explicit):
        return _explicit
    loop = asyncio.get_running_loop()
    client = _per_loop.get(loop)
    if client is None or not _is_open(client):
        from .client import Client

        client = await Client.connect()
        _per_loop[loop] = client
    return client


def _workflows_use_handles_client() -> None:
    """``Workflow.submit()`` without a client submits through this module's client."""
    from . import workflows

    workflows._default_client = get_client


_workflows_use_handles_client()


async def close_client() -> None:
    """Close the lazily connected client of this event loop, if any."""
    client = _per_loop.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()
