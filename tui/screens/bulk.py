"""Bulk actions from the jobs view: cancel (C) or retry (R) every job the filter matches.

The filter is the jobs view's own (state, queue, task, tag and ``args.``/``annotations.``
filters; free words are not a bulk filter: they are matched here, not by the index). The
matches are counted first, the operator confirms with the count on screen, and the action
runs as the CLI's `jobs cancel|retry --all` does (chronos/clientapi/bulk.py: one audit entry,
each job by compare-and-set, a changed one skipped); a notice says when it starts and what it
did.
"""

from __future__ import annotations

from typing import Any

from chronos.errors import ChronosError

from ..data import JobQuery
from .confirm import ConfirmScreen


def refusal(q: JobQuery) -> str | None:
    """Why this filter cannot select a bulk action's jobs, or None."""
    if q.archive:
        return "bulk actions act on live jobs: leave the archive view (a) first"
    if q.text:
        return f"free words ({q.text!r}) are not a bulk filter: use state:, queue:, task:, tag:, args.… or annotations.…"
    if not (q.state or q.queue or q.task or q.tag or q.where):
        return "filter first (/): a bulk action needs at least one filter"
    return None


def start(screen: Any, verb: str) -> None:
    """Count the matches of ``screen.query_spec``, ask, then run ``verb`` ("cancel" or "retry") on them."""
    app = screen.capp
    q: JobQuery = screen.query_spec
    why = refusal(q)
    if why is not None:
        app.notify(why, severity="warning")
        return
    if app.readonly:
        app.notify(f"read-only console: {verb} is disabled", severity="warning")
        return
    source = app.feeds.source
    if source is None:
        app.notify("not connected", severity="error")
        return
    what = q.describe()

    def confirmed(n: int, yes: bool | None) -> None:
        if not yes:
            return
        app.notify(f"{verb}: {n} job{'s' if n != 1 else ''} matching {what}…")
        app.feeds.act(f"{verb} all", what, lambda s: s.bulk(verb, q),
                      lambda r: f"{r.matched} matched, {r.done} done, {r.skipped} skipped, {r.failed} failed")

    async def count() -> None:
        try:
            n = await source.bulk_count(verb, q)
        except ChronosError as exc:
            app.notify(f"{verb} all: {exc}", severity="error")
            return
        if n == 0:
            app.notify(f"nothing to {verb}: no job matches {what}")
            return
        app.push_screen(ConfirmScreen(f"{verb.capitalize()} {n} job{'s' if n != 1 else ''} matching {what}?"),
                        lambda yes: confirmed(n, yes))

    screen.run_worker(count(), name=f"bulk.{verb}.count", group="bulk-count", exclusive=True)
