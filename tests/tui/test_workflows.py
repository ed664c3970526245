"""The workflows view against a real server: the list, a workflow as a live tree of node states,
and retry of a failed node from the tree (the workflow resumes)."""

from __future__ import annotations

from textual.widgets import Tree

import chronos
from chronos.states import WorkflowState
from chronos.tui.app import make_app
from chronos.tui.screens.workflows import WorkflowsScreen, WorkflowTable
from chronos.worker.registry import Registry
from chronos.workflows import Workflow

from .conftest import table_rows, wait_until

SIZE = (160, 48)
reg = Registry()
fail_once: set[str] = set()


@chronos.task(name="tw.step", registry=reg, max_attempts=1)
async def step(label: str) -> str:
    if label in fail_once:
        fail_once.discard(label)
        raise RuntimeError(f"{label} failed on purpose")
    return label


def tree_lines(screen: WorkflowsScreen) -> list[str]:
    tree = screen.query_one("#wf-tree", Tree)
    out = []

    def walk(node, depth: int) -> None:
        out.append("  " * depth + str(getattr(node.label, "plain", node.label)))
        for child in node.children:
            walk(child, depth + 1)

    walk(tree.root, 0)
    return out


async def test_tree_of_node_states_live_and_retry_a_node(client, settings, start_worker):
    fail_once.add("b")
    await start_worker(reg)
    wf = Workflow(name="tui")
    a = wf.add(step.s("a"))
    b = wf.add(step.s("b"), depends_on=[a])
    wf.add(step.s("c"), depends_on=[b])
    ref = await client.submit_workflow(wf)
    rec = await ref.wait(20)
    assert rec.state is WorkflowState.FAILED
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await app.action_view("workflows")
        screen = app.screen
        assert isinstance(screen, WorkflowsScreen)
        table = screen.query_one(WorkflowTable)
        await wait_until(pilot, lambda: any(r[0] == ref.id for r in table_rows(table)), what="the workflow row")
        table.focus()
        await pilot.press("enter")
        lines = await wait_until(pilot, lambda: (ls := tree_lines(screen)) and len(ls) == 4 and ls, what="the tree")
        assert "failed" in lines[0]
        assert lines[1].strip().startswith("0 tw.step  completed")
        assert lines[2].strip().startswith("1 tw.step  failed") and lines[2].startswith("    ")
        assert "2 tw.step  cancelled" in lines[3] and "skipped" in lines[3]
        # retry node 1 from the tree: it completes, its skipped dependent runs, the tree follows
        tree = screen.query_one("#wf-tree", Tree)
        tree.focus()
        tree.move_cursor(tree.root.children[0].children[0])
        await pilot.press("r")
        await wait_until(pilot, lambda: "completed" in tree_lines(screen)[0]
                         and all("completed" in ln for ln in tree_lines(screen)[1:]), what="the resumed workflow")


async def test_list_is_kept_from_the_watch_not_read_every_second(client, settings, start_worker):
    """Once the records' watch has caught up, the list is not read again: a new workflow and its
    end reach the table from the watch alone."""
    await start_worker(reg)
    await (await client.submit_workflow(_one("before"))).wait(20)
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await app.action_view("workflows")
        screen = app.screen
        assert isinstance(screen, WorkflowsScreen)
        await wait_until(pilot, lambda: screen._live, what="the watch caught up")
        reads: list[int] = []
        listing = client.workflow_api.listing

        async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            reads.append(1)
            return await listing(*args, **kwargs)

        client.workflow_api.listing = counted
        ref = await client.submit_workflow(_one("after"))
        table = screen.query_one(WorkflowTable)
        await wait_until(pilot, lambda: any(r[0] == ref.id and "completed" in str(r[2]) for r in table_rows(table)),
                         what="the new workflow, completed")
        assert reads == []


def _one(label: str) -> Workflow:
    wf = Workflow(name=label)
    wf.add(step.s(label))
    return wf
