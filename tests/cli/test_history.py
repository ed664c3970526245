"""`chronos history`: finished jobs from the scheduler archive, over NATS, against the real server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chronos.config import Settings
from chronos.scheduler import SchedulerService

from .conftest import cli_json, items, one_error_line, submit, wait_state, wait_until


class ThreadScheduler:
    """A SchedulerService (lease, loops and archive) in its own thread and event loop."""

    def __init__(self, settings: Settings, archive_path: Path) -> None:
        self.service = SchedulerService(settings, log_events=False, archive_path=str(archive_path))
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="cli-test-scheduler", daemon=True)

    def start(self, timeout: float = 20.0) -> ThreadScheduler:
        self._thread.start()
        assert self.ready.wait(timeout), "scheduler archive did not become ready"
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            task = asyncio.create_task(self.service.run())
            while self.service.archiver is None:
                await asyncio.sleep(0.01)  # run() builds it right after connecting
            ready = asyncio.ensure_future(self.service.archiver.ready.wait())
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
            self.ready.set()
            await task

        try:
            asyncio.run(go())
        except BaseException as exc:  # reported by start()
            self.error = exc
        finally:
            self.ready.set()

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self.service.stop)
            except RuntimeError:  # the loop already finished
                pass
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "scheduler thread did not stop"


@pytest.fixture
def scheduler(settings: Settings, tmp_path: Path) -> Iterator[ThreadScheduler]:
    s = ThreadScheduler(settings, tmp_path / "archive.sqlite3").start()
    yield s
    s.stop()


def test_history_without_a_scheduler_is_one_clear_error(cli):
    r = cli("history")
    assert r.exit_code == 1
    assert "no scheduler archive answered" in one_error_line(r)


def test_history_lists_and_filters_finished_jobs(cli, worker, scheduler):
    worker()
    ok = submit(cli, "t.add", "--args", "[1, 2]")
    bad = submit(cli, "t.boom", "--args", '["a Needle in the error"]', "--max-attempts", "1")
    wait_state(cli, ok, "completed")
    wait_state(cli, bad, "discarded")
    rows = wait_until(lambda: len(r := items(cli, "history")) >= 2 and r, what="both jobs in the archive")
    assert {r["id"] for r in rows} == {ok, bad}
    assert rows[0]["finished_at"] >= rows[1]["finished_at"]
    by_id = {r["id"]: r for r in rows}
    assert by_id[ok]["result"] == 3 and by_id[bad]["state"] == "discarded"

    table = cli("history")
    assert table.exit_code == 0, table.output
    header = table.stdout.splitlines()[0].split()
    assert header == ["ID", "TASK", "STATE", "QUEUE", "ATTEMPT", "FINISHED", "TOOK", "ERROR"]
    assert ok in table.stdout and bad in table.stdout and "discarded" in table.stdout
    assert "2 job(s)" in table.stdout

    def ids(*args: str) -> list[str]:
        return [r["id"] for r in items(cli, "history", *args)]

    assert ids("--state", "discarded") == [bad]
    assert ids("--grep", "NEEDLE") == [bad]
    assert ids("--grep", "RuntimeError") == [bad]  # in the traceback too
    assert ids("--task", "t.add") == [ok]
    assert ids("--queue", "default", "--state", "completed") == [ok]
    assert len(ids("--limit", "1")) == 1
    assert set(ids("--since", "1h")) == {ok, bad}
    assert ids("--until", "1h") == []
    assert cli("history", "--queue", "elsewhere").stdout.strip() == "no finished jobs match"


@pytest.mark.parametrize(
    "args, option",
    [
        (("--state", "running"), "--state"),
        (("--since", "yesterday-ish"), "--since"),
        (("--since", "0001-01-01"), "--since"),  # a date datetime cannot place in local time
        (("--since", "1m", "--until", "2h"), "--since"),
        (("--grep", ""), "--grep"),
        (("--limit", "0"), "--limit"),
    ],
)
def test_bad_history_options_name_the_option(cli, args, option):
    r = cli("history", *args)
    assert r.exit_code == 2
    assert option in one_error_line(r)
