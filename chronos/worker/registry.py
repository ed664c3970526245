"""The name-to-function lookup a worker serves, and ``--tasks`` loading.

A ``Registry`` maps task names to ``TaskDef``s. ``@chronos.task`` (``chronos/tasks.py``)
registers into the process-wide ``default_registry`` unless given another, and returns a
typed handle; ``load_tasks`` turns ``--tasks`` specs into the registry a worker serves.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from typing import Any, Callable, Iterable

import msgspec

from ..errors import ConfigError
from ..limits import TaskLimits

log = logging.getLogger(__name__)


class TaskDef(msgspec.Struct, frozen=True):
    name: str
    fn: Callable[..., Any]
    is_async: bool
    weight: int = 1  # slots one run of this task takes
    # Exceptions worth another attempt; any other exception ends the job (discarded) at once.
    # Empty: every exception is retried until attempts run out.
    retry_on: tuple[type[BaseException], ...] = ()
    queue: str | None = None  # the queue submits go to by default (the handle's, and the catalog's)
    # Fleet-wide rate and concurrency limits, per task or per limit key (chronos/limits.py); None: none,
    # and the worker's hot path pays nothing for them.
    limits: TaskLimits | None = None


class Registry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}

    def register(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        weight: int = 1,
        retry_on: Iterable[type[BaseException]] = (),
        queue: str | None = None,
        limits: TaskLimits | None = None,
    ) -> TaskDef:
        task_name = name or default_task_name(fn)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise ConfigError(f"task {task_name}: weight must be a whole number of at least 1")
        retry = tuple(retry_on)
        for exc in retry:
            if not (isinstance(exc, type) and issubclass(exc, BaseException)):
                raise ConfigError(f"task {task_name}: retry_on takes exception classes, not {exc!r}")
        d = TaskDef(task_name, fn, inspect.iscoroutinefunction(fn), weight, retry, queue, limits)
        self.add(d)
        return d

    def add(self, d: TaskDef) -> None:
        _LOCAL[d.name] = d
        old = self._tasks.get(d.name)
        if old is not None and old.fn is not d.fn and _origin(old.fn) != _origin(d.fn):
            raise ConfigError(f"task {d.name!r} is registered twice: by {_origin(old.fn)} and {_origin(d.fn)}")
        self._tasks[d.name] = d

    def get(self, name: str) -> TaskDef | None:
        return self._tasks.get(name)

    def defs(self) -> list[TaskDef]:
        return [self._tasks[n] for n in sorted(self._tasks)]

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def merge(self, other: "Registry") -> None:
        for d in other._tasks.values():
            self.add(d)

    def __contains__(self, name: str) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        # An empty registry is still a registry: `registry or default_registry` must keep it.
        return True


default_registry = Registry()
_LOCAL: dict[str, TaskDef] = {}


def local_task(name: str) -> TaskDef | None:
    """A task registered in this process, in any registry: a submit of it needs no catalog."""
    return _LOCAL.get(name)


def default_task_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}".removeprefix("__main__.")


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _taskdef_of(obj: Any) -> TaskDef | None:
    """The TaskDef of a task handle (``@chronos.task``), else None."""
    d = getattr(obj, "__chronos_taskdef__", None)
    return d if isinstance(d, TaskDef) else None


def _import(module_name: str) -> Any:
    # Like `celery -A`: the directory the worker is started from is importable.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"cannot import task module {module_name!r}: no such module "
                              f"(looked in the current directory {cwd} and on sys.path)") from None
        raise ConfigError(f"cannot import task module {module_name!r}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"cannot import task module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        raise ConfigError(f"task module {module_name!r} failed to import: {type(exc).__name__}: {exc}") from None


def load_tasks(specs: Iterable[str], registry: Registry | None = None) -> Registry:
    """Add the tasks of ``module`` or ``module:attr`` specs to ``registry``.

    ``module``: every ``@chronos.task`` defined in that module (its handles and anything it
    registered in the default registry while importing), with its name, weight and options,
    plus any ``Registry`` it holds at the top level.
    ``module:attr``: a task handle, a ``Registry``, a plain function (registered as
    ``module.qualname``) or a list of those.
    Each spec must add at least one task; one that adds none is a ``ConfigError``.
    """
    reg = registry if registry is not None else default_registry
    for spec in specs:
        module_name, _, attr = spec.strip().partition(":")
        if not module_name:
            raise ConfigError(f"--tasks {spec!r}: give a module, or module:attribute")
        before = dict(default_registry._tasks)
        module = _import(module_name)
        found: list[TaskDef] = []
        if not attr:
            # Registered by this import (including its submodules)...
            found += [d for k, d in default_registry._tasks.items() if before.get(k) is not d]
            for value in list(vars(module).values()):  # ...and handles it holds (imported earlier too)
                d = _taskdef_of(value)
                if d is not None:
                    found.append(d)
                elif isinstance(value, Registry) and value is not reg:
                    found += value.defs()
            if not found:
                raise ConfigError(
                    f"--tasks {spec}: module {module_name!r} defines no @chronos.task "
                    "(decorate functions with @chronos.task, or name one with module:function)")
        else:
            try:
                obj = getattr(module, attr)
            except AttributeError:
                raise ConfigError(f"--tasks {spec}: module {module_name!r} has no attribute {attr!r}") from None
            items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
            for item in items:
                d = _taskdef_of(item)
                if d is not None:
                    found.append(d)
                elif isinstance(item, Registry):
                    found += item.defs()
                elif callable(item):
                    found.append(TaskDef(default_task_name(item), item, inspect.iscoroutinefunction(item)))
                else:
                    raise ConfigError(f"--tasks {spec}: {item!r} is neither a task, a function nor a Registry")
            if not found:
                raise ConfigError(f"--tasks {spec}: adds no task (an empty Registry or list)")
        for d in found:
            reg.add(d)
    return reg
