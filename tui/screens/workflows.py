"""Workflows: the list, and the selected one as a tree of its nodes with their states, live.
On a node: r retries it (the workflow resumes), c cancels it; C cancels the whole workflow."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Label, Tree

from chronos.clientapi.workflows import NodeView, WorkflowView
from chronos.workflows import WorkflowRecord

from ..format import ago
from ..widgets.sync_table import SyncTable
from .base import ChronosScreen

STYLE = {"pending": "dim", "running": "cyan", "completed": "green", "failed": "bold red", "cancelled": "yellow"}
MAX_TREE = 500  # nodes drawn; a group of 10,000 shows its first ones and a count
log = logging.getLogger(__name__)


class WorkflowTable(SyncTable):
    COLUMNS = (("id", "ID"), ("name", "NAME"), ("state", "STATE"), ("nodes", "NODES"), ("age", "CREATED"))

    def show(self, recs: list[WorkflowRecord], now: float) -> None:
        self.sync([(r.id, (r.id, r.name or "-", Text(r.state, style=STYLE.get(r.state, "")), str(r.nodes),
                           ago(r.created_at, now))) for r in recs])


def node_label(n: NodeView) -> Text:
    t = Text(f"{n.index} ")
    t.append(n.label or n.task)
    t.append(f"  {n.state}", style=STYLE.get(n.state, ""))
    if len(n.parents) > 1:
        t.append(f"  (after {len(n.parents)} nodes)" if len(n.parents) > 3 else
                 f"  (after {', '.join(map(str, n.parents))})", style="dim")
    if n.state in ("failed", "cancelled") and n.error:
        t.append(f"  {n.error[:100]}", style="dim")
    return t


class WorkflowsScreen(ChronosScreen):
    VIEW = "workflows"
    MUTATING = frozenset({"retry_node", "cancel_node", "cancel_workflow"})
    BINDINGS = [
        Binding("r", "retry_node", "Retry node"),
        Binding("c", "cancel_node", "Cancel node"),
        Binding("C", "cancel_workflow", "Cancel workflow"),
        Binding("g", "reload", "Reload"),
    ]
    DEFAULT_CSS = """
    WorkflowsScreen #wf-panes { height: 1fr; }
    WorkflowsScreen #workflows { width: 2fr; }
    WorkflowsScreen #wf-tree { width: 3fr; border-left: solid $boost; }
    WorkflowsScreen #wf-status { height: 1; padding: 0 1; background: $boost; }
    """
    RELOAD_EVERY = 1.0
    LIMIT = 200  # rows, newest first

    def __init__(self) -> None:
        super().__init__()
        self.records: list[WorkflowRecord] = []
        self.view: WorkflowView | None = None
        self.selected_id: str | None = None
        # The list is kept from a watch of the records (each change as it is written) rather
        # than read whole every second: 10,000 records took 0.3-0.7 s per read.
        self._known: dict[str, WorkflowRecord] = {}
        self._live = False  # the watch has caught up; until then (or after it ends) the list is read
        self._changed = True

    def compose(self) -> ComposeResult:
        yield self.banner()
        with Horizontal(id="wf-panes"):
            yield WorkflowTable(id="workflows")
            yield Tree("select a workflow", id="wf-tree")
        yield Label("loading…", id="wf-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(WorkflowTable).focus()
        self.follow()
        self.reload()
        self.set_interval(self.RELOAD_EVERY, lambda: self.is_current and self.reload())

    @work(exclusive=True, group="workflows-follow")
    async def follow(self) -> None:
        """Keep ``_known`` from the records' watch; started over (after a pause) when it ends."""
        while True:
            client = self._client()
            api = getattr(client, "workflow_api", None)
            if api is None or not hasattr(api, "follow"):
                return  # a client without it: the list is read on each reload
            self._known.clear()
            try:
                async for wf, rec, caught_up in api.follow():
                    if wf:
                        if rec is None:
                            self._known.pop(wf, None)
                        else:
                            self._known[wf] = rec
                        self._changed = True
                    if caught_up and not self._live:
                        self._live = self._changed = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnecting, or the server is gone: read on each reload meanwhile
                log.debug("workflows view: the records' watch ended (%s); reading the list until it is back", exc)
            self._live = False
            await asyncio.sleep(2.0)

    def _client(self) -> Any:
        """The console's client (the live source has one; a test double may not)."""
        return getattr(self.capp.feeds.source, "client", None)

    def action_reload(self) -> None:
        self.reload()

    @work(exclusive=True, group="workflows-load")
    async def reload(self) -> None:
        client = self._client()
        status = self.query_one("#wf-status", Label)
        if client is None:
            status.update("not connected")
            return
        try:
            if self._live:
                recs = None
                if self._changed:
                    self._changed = False
                    recs = sorted(self._known.values(), key=lambda r: r.created_at, reverse=True)[:self.LIMIT]
            else:
                recs = await client.workflows(limit=self.LIMIT)
            view = await client.workflow(self.selected_id) if self.selected_id else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status.update(f"error: {exc}")
            return
        if recs is None:  # nothing changed: only the ages move on
            recs = self.records
        self.records = recs
        self.query_one(WorkflowTable).show(recs, self.capp.clock.now())
        if view is not None:
            self.show_view(view)
        running = sum(1 for r in recs if r.state == "running")
        status.update(f"{len(recs)} workflow{'s' if len(recs) != 1 else ''} · {running} running"
                      " · enter: show its nodes · r/c on a node: retry/cancel · C: cancel the workflow")

    def show_view(self, view: WorkflowView) -> None:
        self.view = view
        tree: Tree[int] = self.query_one("#wf-tree", Tree)  # type: ignore[assignment]
        rec = view.record
        label = Text(f"{rec.id} {rec.name or ''} ")
        label.append(rec.state, style=STYLE.get(rec.state, ""))
        if rec.reason:
            label.append(f"  {rec.reason[:100]}", style="dim")
        selected = tree.cursor_node.data if tree.cursor_node is not None else None
        tree.clear()
        tree.root.set_label(label)
        tree.root.expand()
        nodes: dict[int, Any] = {}
        for n in view.nodes[:MAX_TREE]:  # parents come before their children
            parent = nodes.get(n.parents[0]) if n.parents else None
            nodes[n.index] = (parent or tree.root).add(node_label(n), data=n.index, expand=True)
        if len(view.nodes) > MAX_TREE:
            tree.root.add_leaf(Text(f"… {len(view.nodes) - MAX_TREE} more nodes", style="dim"))
        if selected is not None and selected in nodes:
            tree.move_cursor(nodes[selected])

    @on(DataTable.RowSelected, "#workflows")
    def _open(self, event: DataTable.RowSelected) -> None:
        self.selected_id = self.query_one(WorkflowTable).selected_key()
        self.reload()
        self.query_one("#wf-tree", Tree).focus()

    def selected_node(self) -> NodeView | None:
        tree = self.query_one("#wf-tree", Tree)
        if self.view is None or tree.cursor_node is None or tree.cursor_node.data is None:
            return None
        index = tree.cursor_node.data
        return self.view.nodes[index] if 0 <= index < len(self.view.nodes) else None

    def action_retry_node(self) -> None:
        node, view = self.selected_node(), self.view
        if node is None or view is None:
            return
        wf_id, index = view.record.id, node.index
        self.capp.feeds.act("retry node", f"{wf_id} #{index}", lambda s: s.client.retry_workflow(wf_id, node=index))  # type: ignore[attr-defined]

    def action_cancel_node(self) -> None:
        node = self.selected_node()
        if node is None:
            return
        job_id = node.job_id
        self.capp.feeds.act("cancel node", job_id, lambda s: s.cancel(job_id))

    def action_cancel_workflow(self) -> None:
        if self.view is None:
            return
        wf_id = self.view.record.id
        self.capp.feeds.act("cancel workflow", wf_id, lambda s: s.client.cancel_workflow(wf_id))  # type: ignore[attr-defined]

    def after_action(self, message: Any) -> None:
        if self.is_current:
            self.reload()
