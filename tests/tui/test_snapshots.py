"""SVG snapshots of the main views with fixed data (FakeSource) and a FakeClock.

Regenerate with ``pytest tests/tui/test_snapshots.py --snapshot-update`` on Python 3.11
with the pinned Textual (see pyproject), and review the SVGs before committing.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import textual

from chronos.clock import FakeClock
from chronos.config import load_settings
from chronos.errors import ConnectionFailedError
from chronos.tui.app import make_app

from .conftest import table_rows, wait_until
from .fakes import NOW, FakeSource

SIZE = (140, 40)

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11) or textual.__version__ != "8.2.8",
    reason="snapshots are made with Python 3.11 and textual 8.2.8",
)


def fake_app() -> Any:
    settings = load_settings(overrides={"namespace": "demo"}, read_env=False)
    return make_app(settings, source=FakeSource(FakeClock(NOW)))


async def settled(pilot: Any) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: app.latest_cluster is not None and app.latest_stats is not None
                     and app.latest_stats.seeded and app.feeds.tally.events_seen >= FakeSource.EVENTS,
                     what="fake data in")


def test_dashboard(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settled(pilot)
        screen = pilot.app.screen
        await wait_until(pilot, lambda: len(table_rows(screen.query_one("#workers"))) == 2, what="workers")
        await wait_until(pilot, lambda: pilot.app.latest_stats.events_seen == FakeSource.EVENTS,
                         what="every event counted")
        await pilot.pause(0.6)  # two more ticks: nothing changes any more (fixed data, frozen clock)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_jobs(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settled(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "page", None) is not None, what="jobs page")
        await pilot.press("down", "down")

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_jobs_filtered(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settled(pilot)
        await pilot.press("f")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "page", None) is not None
                         and pilot.app.screen.page.query.state == "failed", what="failed jobs")

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_job_detail(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settled(pilot)
        pilot.app.open_job("job0002")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "detail", None) is not None, what="detail")

    assert snap_compare(fake_app(), terminal_size=(140, 60), run_before=run_before)


def test_schedules(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settled(pilot)
        await pilot.press("4")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "rows", None), what="schedules")

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_dlq(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settled(pilot)
        await pilot.press("5")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "entries", None), what="dlq entries")

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_readonly_disconnected_banner(snap_compare: Any) -> None:
    """The read-only console while the server is unreachable: the red 'retrying' banner."""
    settings = load_settings(overrides={"namespace": "demo", "nats": {"url": "nats://127.0.0.1:1"}},
                             read_env=False)
    clock = FakeClock(NOW)

    calls = []

    async def never(settings: Any, clock: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:  # one failed attempt, then hang, so the banner stops changing
            await asyncio.Event().wait()
        raise ConnectionFailedError("cannot reach NATS at nats://127.0.0.1:1: connection refused")

    app = make_app(settings, readonly=True, clock=clock)
    app.feeds._connect = never

    async def run_before(pilot: Any) -> None:
        await wait_until(pilot, lambda: pilot.app.latest_connection is not None
                         and pilot.app.latest_connection.attempts >= 1, what="first failed attempt")
        await wait_until(pilot, lambda: len(calls) > 1, what="second attempt under way")
        clock.advance(12)
        pilot.app.screen.refresh_from_latest()

    assert snap_compare(app, terminal_size=(140, 12), run_before=run_before)
