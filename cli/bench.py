"""`chronos bench throughput`: thin over chronos.bench (each benchmark starts what it measures)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import _output as out
from ._shared import JsonOpt, run_async, state, wants_json

app = typer.Typer(help="Benchmarks against a throwaway embedded nats-server.", no_args_is_help=True)


@app.command("throughput")
def throughput(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, help="Jobs to run.")] = 20000,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Worker slots.")] = 256,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Give up after this many seconds.")] = 300.0,
    json_: JsonOpt = False,
) -> None:
    """Enqueue and end-to-end jobs/s of N no-op jobs through one worker process."""
    from chronos.bench.throughput import run_throughput

    st = state(ctx)
    result = run_async(st, run_throughput(n=n, concurrency=concurrency, timeout=timeout))
    if wants_json(ctx, json_):
        out.print_json(result)
    else:
        rows = [
            ("jobs", result.n),
            ("enqueue", f"{result.enqueue_jobs_per_s:,.0f} jobs/s ({result.enqueue_seconds:.2f}s)"),
            ("end to end", f"{result.end_to_end_jobs_per_s:,.0f} jobs/s ({result.end_to_end_seconds:.2f}s)"),
            ("completed", result.completed),
            ("lost", result.lost),
            ("duplicated", result.duplicated),
            ("server msgs/job", f"{result.server_msgs_in_per_job} in, {result.server_msgs_out_per_job} out"),
            ("concurrency", result.concurrency),
            ("cpu per job", ", ".join(f"{k} {v:.0f} µs" for k, v in result.cpu_us_per_job.items())),
        ]
        out.console().print(out.key_values([(k, str(v)) for k, v in rows]))
    if result.lost:
        raise typer.Exit(1)
