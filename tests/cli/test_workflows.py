"""`chronos workflows list|get|cancel|retry` against a real server (no worker: nodes stay pending)."""

from __future__ import annotations

import asyncio
import json

from chronos.client import Client
from chronos.workflows import Signature, Workflow, chain, chord, group

from .conftest import cli_json, items, one_error_line


def submit_workflow(settings, wf: Workflow) -> str:
    async def go() -> str:
        c = await Client.connect(settings)
        try:
            c._known_tasks.update({"t.add", "t.collect"})
            return (await c.submit_workflow(wf)).id
        finally:
            await c.close()

    return asyncio.run(go())


def test_list_get_cancel_retry(cli, settings):
    wf_id = submit_workflow(settings, Workflow(
        chain(Signature("t.add", (1, 2)).set(queue="nobody"),
              chord(group(Signature("t.add", (i,)).set(queue="nobody") for i in range(3)),
                    Signature("t.collect").set(queue="nobody"))), name="etl"))
    rows = items(cli, "workflows", "list")
    assert [(r["id"], r["state"], r["nodes"], r["name"]) for r in rows] == [(wf_id, "running", 5, "etl")]
    envelope = cli_json(cli, "workflows", "list")
    assert set(envelope) == {"items", "count", "next"} and envelope["count"] == 1 and envelope["next"] is None

    view = cli_json(cli, "workflows", "get", wf_id)
    assert [n["state"] for n in view["nodes"]] == ["pending"] * 5
    assert [n["parents"] for n in view["nodes"]] == [[], [0], [0], [0], [1, 2, 3]]
    tree = cli("workflows", "get", wf_id)
    assert tree.exit_code == 0, tree.output
    lines = tree.stdout.splitlines()
    assert wf_id in lines[0] and "running" in lines[0]
    assert any("4 t.collect pending (after 1, 2, 3)" in ln for ln in lines)

    r = cli("workflows", "retry", wf_id, "--node", "0")
    assert r.exit_code == 5 and "only failed or cancelled nodes" in one_error_line(r)

    r = cli("workflows", "cancel", wf_id, "--reason", "not today")
    assert r.exit_code == 0 and r.stdout.strip() == f"workflow {wf_id} cancelled"
    view = cli_json(cli, "workflows", "get", wf_id)
    assert view["record"]["state"] == "cancelled" and view["nodes"][0]["state"] == "cancelled"
    assert [r["id"] for r in items(cli, "workflows", "list", "--state", "cancelled")] == [wf_id]

    again = cli_json(cli, "workflows", "retry", wf_id)
    assert again == {"workflow": wf_id, "retried": [0]}  # the root: its dependents follow it
    assert cli_json(cli, "workflows", "get", wf_id)["record"]["state"] == "running"


def test_mistakes_are_one_line_with_an_exit_code(cli):
    r = cli("workflows", "get", "wnope")
    assert r.exit_code == 4 and "no workflow with id wnope" in one_error_line(r)
    r = cli("workflows", "list", "--state", "done")
    assert r.exit_code == 2 and "--state" in one_error_line(r)


def test_a_malformed_workflow_id_is_a_usage_error_naming_it(cli):
    # was: "error: InvalidKeyError: nats: JetStream.InvalidKeyError", exit 1
    for args in (["get", "../.."], ["get", "a*"], ["cancel", "a>"], ["retry", "../.."], ["get", "w.1"]):
        r = cli("workflows", *args)
        line = one_error_line(r)
        assert r.exit_code == 2, (args, r.output)
        assert f"{args[1]!r} is not a workflow id" in line and "InvalidKey" not in line, line


def test_bench_workflows_small(cli):
    """`chronos bench workflows` runs end to end (its own server and processes): callback once."""
    r = cli("bench", "workflows", "--children", "50", "--steps", "5", "--workers", "1", "--json")
    assert r.exit_code in (0, 1), r.output  # 1: the latency goal missed on a loaded host; still a result
    data = json.loads(r.stdout)
    assert data["group"]["callback_runs"] == 1 and data["group"]["callback_result"] == 50
    assert data["group"]["duplicate_children"] == 0 and data["chain"]["duplicate_steps"] == 0
