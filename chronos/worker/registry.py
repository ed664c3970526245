"""The @task decorator and the name-to-function lookup."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Iterable

import msgspec

from ..errors import ConfigError


class TaskDef(msgspec.Struct, frozen=True):
    name: str
    fn: Callable[..., Any]
    is_async: bool
    weight: int = 1  # slots one run of this task takes


class Registry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}

    def register(self, fn: Callable[..., Any], *, name: str | None = None, weight: int = 1) -> TaskDef:
        if weight < 1:
            raise ConfigError(f"task {name or fn.__name__}: weight must be at least 1")
        task_name = name or f"{fn.__module__}.{fn.__qualname__}".removeprefix("__main__.")
        d = TaskDef(task_name, fn, inspect.iscoroutinefunction(fn), weight)
        self._tasks[task_name] = d
        return d

    def get(self, name: str) -> TaskDef | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def merge(self, other: "Registry") -> None:
        self._tasks.update(other._tasks)

    def __contains__(self, name: str) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)


default_registry = Registry()


def task(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    weight: int = 1,
    registry: Registry | None = None,
) -> Any:
    """Register a function as a task. Async functions run on the loop; sync ones in a thread pool.

    ``@task`` or ``@task(name="emails.send", weight=2)``.
    """

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        (registry or default_registry).register(f, name=name, weight=weight)
        return f

    return wrap(fn) if fn is not None else wrap


def load_tasks(specs: Iterable[str], registry: Registry | None = None) -> Registry:
    """Import ``module`` or ``module:attr`` specs; an attr may be a Registry, a function or a list of them."""
    reg = registry or default_registry
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import task module {module_name!r}: {exc}") from None
        if not attr:
            continue
        try:
            obj = getattr(module, attr)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
        if isinstance(obj, Registry):
            reg.merge(obj)
        elif callable(obj):
            if obj not in [d.fn for d in reg._tasks.values()]:
                reg.register(obj)
        elif isinstance(obj, (list, tuple)):
            for f in obj:
                reg.register(f)
        else:
            raise ConfigError(f"{spec} is neither a function, a list of functions nor a Registry")
    return reg
