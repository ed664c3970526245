"""@chronos.task handles and --tasks loading, without a server."""

from __future__ import annotations

import datetime as dt
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

import chronos
from chronos.errors import ConfigError, ValidationError
from chronos.tasks import Task
from chronos.worker.registry import Registry, default_registry, load_tasks


def test_handle_calls_the_function_and_registers_with_its_options() -> None:
    reg = Registry()

    @chronos.task(name="t.add", weight=2, queue="math", max_attempts=3, retry_on=(IOError,), registry=reg)
    async def add(a: int, b: int = 1) -> int:
        return a + b

    assert isinstance(add, Task) and add.name == "t.add"
    d = reg.get("t.add")
    assert d is not None and d.weight == 2 and d.queue == "math" and d.retry_on == (IOError,)
    assert "t.add" not in default_registry  # an explicit (empty, falsy-looking) registry is used
    assert add.options == {"queue": "math", "max_attempts": 3}
    import asyncio

    assert asyncio.run(add(2, 3)) == 5  # calling the handle calls the function


def test_bind_checks_the_call_against_the_signature() -> None:
    reg = Registry()

    @chronos.task(name="t.send", registry=reg)
    def send(to: str, subject: str, *, cc: list[str] | None = None) -> None: ...

    assert send.bind("a@x", "hi") == {"to": "a@x", "subject": "hi"}
    assert send.bind("a@x", subject="hi", cc=["b"]) == {"to": "a@x", "subject": "hi", "cc": ["b"]}
    with pytest.raises(ValidationError, match="missing a required argument: 'subject'"):
        send.bind("a@x")
    with pytest.raises(ValidationError, match="unexpected keyword argument 'bcc'"):
        send.bind("a@x", "hi", bcc=1)
    with pytest.raises(ValidationError, match=r"argument 'to': Expected `str`, got `int`"):
        send.bind(5, "hi")

    @chronos.task(name="t.pos", registry=reg)
    def pos(a: int, /, *rest: int) -> None: ...

    assert pos.bind(1, 2, 3) == [1, 2, 3]


def test_options_are_checked_on_the_decorator_and_per_call() -> None:
    reg = Registry()
    with pytest.raises(ConfigError, match="priority 'urgent'"):
        chronos.task(name="t.bad", priority="urgent", registry=reg)(lambda: None)
    with pytest.raises(ConfigError, match="weight"):
        chronos.task(name="t.bad2", weight=0, registry=reg)(lambda: None)
    with pytest.raises(ConfigError, match="retry_on takes exception classes"):
        chronos.task(name="t.bad3", retry_on=("IOError",), registry=reg)(lambda: None)

    @chronos.task(name="t.ok", registry=reg)
    def ok() -> None: ...

    when = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    call = ok.with_options(run_at=when, delay=None, priority="high")
    assert call.options["run_at"] == when.timestamp()
    assert ok.with_options(delay=dt.timedelta(minutes=1)).options["delay"] == 60.0
    with pytest.raises(ValidationError, match="unknown option 'retries'"):
        ok.with_options(retries=3)
    with pytest.raises(ValidationError, match="run_at: must be a datetime"):
        ok.with_options(run_at="tomorrow")
    with pytest.raises(ValidationError, match="delay: must be a number"):
        ok.with_options(delay=float("nan"))


class Sent(msgspec.Struct):
    to: str
    n: int


def test_typed_results_convert_to_the_return_annotation() -> None:
    reg = Registry()

    @chronos.task(name="t.typed", registry=reg)
    async def typed() -> Sent: ...

    from chronos.models import JobRecord, JobSpec
    from chronos.states import JobState

    rec = JobRecord(id="j1", spec=JobSpec(task="t.typed"), state=JobState.COMPLETED, created_at=0.0,
                    updated_at=0.0, result={"to": "a", "n": 2})
    assert typed.result_of(rec) == Sent("a", 2)
    failed = msgspec.structs.replace(rec, state=JobState.DISCARDED)
    with pytest.raises(chronos.JobFailedError, match="ended discarded"):
        typed.result_of(failed)


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("qs_")]:
        del sys.modules[name]


def test_tasks_module_serves_every_decorated_task_from_the_current_directory(module_dir: Path) -> None:
    (module_dir / "qs_tasks.py").write_text(textwrap.dedent('''
        import chronos

        @chronos.task(name="qs.send", weight=3, queue="mail")
        async def send(to: str) -> None: ...

        @chronos.task
        def plain(x: int) -> int:
            return x

        def not_a_task(): ...
    '''))
    reg = load_tasks(["qs_tasks"], Registry())
    assert reg.names() == ["qs.send", "qs_tasks.plain"]
    assert reg.get("qs.send").weight == 3 and reg.get("qs.send").queue == "mail"
    # Loading it again (already imported) finds the same tasks through the module's handles.
    assert load_tasks(["qs_tasks"], Registry()).names() == ["qs.send", "qs_tasks.plain"]
    # module:attr keeps the decorator's name and weight; a plain function gets module.qualname.
    one = load_tasks(["qs_tasks:send", "qs_tasks:not_a_task"], Registry())
    assert one.names() == ["qs.send", "qs_tasks.not_a_task"] and one.get("qs.send").weight == 3


def test_tasks_specs_that_add_nothing_are_one_line_errors(module_dir: Path) -> None:
    (module_dir / "qs_empty.py").write_text("X = 1\n")
    (module_dir / "qs_broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="defines no @chronos.task"):
        load_tasks(["qs_empty"], Registry())
    with pytest.raises(ConfigError, match="no such module"):
        load_tasks(["qs_missing"], Registry())
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_tasks(["qs_empty:nope"], Registry())
    with pytest.raises(ConfigError, match="failed to import: RuntimeError: boom"):
        load_tasks(["qs_broken"], Registry())


def test_a_name_registered_twice_by_different_functions_is_refused() -> None:
    reg = Registry()

    def one() -> int:
        return 1

    def two() -> int:
        return 2

    chronos.task(name="t.dup", registry=reg)(one)
    with pytest.raises(ConfigError, match="registered twice"):
        chronos.task(name="t.dup", registry=reg)(two)
