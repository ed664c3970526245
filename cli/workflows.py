"""`chronos workflows list|get|cancel|retry`: workflows and their nodes' states."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.tree import Tree

from chronos.clientapi.workflows import WorkflowView
from chronos.states import WorkflowState

from . import _output as out
from ._parse import BadOption
from ._shared import JsonOpt, run_client, state, wants_json

app = typer.Typer(help="Workflows (chains, groups, chords, DAGs): list, show as a tree, cancel, retry.",
                  no_args_is_help=True)

WfId = Annotated[str, typer.Argument(help="Workflow id (as `workflows list` prints it).", show_default=False)]
_STATES = [s.value for s in WorkflowState]
_NODE_STYLE = {"pending": "dim", "running": "cyan", "completed": "green", "failed": "red", "cancelled": "yellow"}


@app.command("list")
def list_workflows(
    ctx: typer.Context,
    state_: Annotated[Optional[str], typer.Option("--state", "-s", help=f"Only this state ({', '.join(_STATES)}).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, help="At most this many, newest first.")] = 100,
    json_: JsonOpt = False,
) -> None:
    """List workflows, newest first."""
    if state_ is not None and state_ not in _STATES:
        raise BadOption("--state", f"{state_!r} is not one of {', '.join(_STATES)}")
    recs = run_client(state(ctx), lambda c: c.workflows(state=state_, limit=limit), ensure=False)
    if wants_json(ctx, json_):
        out.print_listing(recs)
        return
    t = out.table("ID", "NAME", "STATE", "NODES", "FAILED", "CREATED")
    for r in recs:
        t.add_row(r.id, out.cell(r.name or "-"), r.state, str(r.nodes), ",".join(map(str, r.failed)) or "-",
                  out.when(r.created_at))
    out.print_table(t)


@app.command("get")
def get(ctx: typer.Context, wf_id: WfId, json_: JsonOpt = False) -> None:
    """Show a workflow as a tree of its nodes, each with its state (a node under its first parent)."""
    view = run_client(state(ctx), lambda c: c.workflow(wf_id), ensure=False)
    if wants_json(ctx, json_):
        out.print_json(view)
        return
    out.console().print(render_tree(view))


def render_tree(view: WorkflowView, max_nodes: int = 500) -> Tree:
    rec = view.record
    head = f"[bold]{rec.id}[/bold] {escape(rec.name or '')} [{_NODE_STYLE.get(rec.state, '')}]{rec.state}[/]"
    if rec.reason:
        head += f"  ({escape(rec.reason)})"
    root = Tree(head)
    branches: dict[int, Tree] = {}
    shown = 0
    for n in view.nodes:  # parents come before their children
        if shown >= max_nodes:
            root.add(f"[dim]... {len(view.nodes) - shown} more nodes (--json for all)[/dim]")
            break
        style = _NODE_STYLE.get(n.state, "")
        label = f"{n.index} {escape(out.cell(n.label or n.task))} [{style}]{n.state}[/]"
        if len(n.parents) > 1:
            label += f" [dim](after {len(n.parents)} nodes)[/dim]" if len(n.parents) > 3 else \
                f" [dim](after {', '.join(map(str, n.parents))})[/dim]"
        if n.state in ("failed", "cancelled") and n.error:
            label += f" [dim]{escape(n.error[:120])}[/dim]"
        parent = branches.get(n.parents[0]) if n.parents else None
        branches[n.index] = (parent or root).add(label)
        shown += 1
    return root


@app.command("cancel")
def cancel(
    ctx: typer.Context, wf_id: WfId,
    reason: Annotated[str, typer.Option("--reason", help="Recorded on the workflow and its nodes.")] = "cancelled by operator",
    json_: JsonOpt = False,
) -> None:
    """Cancel a workflow: pending nodes are cancelled, running ones signalled."""
    rec = run_client(state(ctx), lambda c: c.cancel_workflow(wf_id, reason=reason), ensure=False)
    if wants_json(ctx, json_):
        out.print_json(rec)
        return
    typer.echo(f"workflow {rec.id} {rec.state}")


@app.command("retry")
def retry(
    ctx: typer.Context, wf_id: WfId,
    node: Annotated[Optional[int], typer.Option("--node", "-n", min=0, help="Only this node (its index).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Run failed nodes again (one, or all failed and stopped ones); the workflow resumes from there."""
    nodes = run_client(state(ctx), lambda c: c.retry_workflow(wf_id, node=node), ensure=False)
    if wants_json(ctx, json_):
        out.print_json({"workflow": wf_id, "retried": nodes})
        return
    typer.echo(f"workflow {wf_id}: retried node(s) {', '.join(map(str, nodes))}")
