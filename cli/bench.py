"""`chronos bench throughput|precision|failover|delayed-memory|crash`: thin over chronos.bench (each benchmark starts what it measures)."""

from __future__ import annotations

from typing import Annotated

import msgspec
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
    sync: Annotated[str, typer.Option("--sync", help="The server's sync_interval: always (fsync every write, "
                                      "the production setting), default (lazy, every 2m), or both (one run each; --json gives a list).")] = "always",
    count_fsyncs: Annotated[bool, typer.Option("--count-fsyncs", help="Also a run per mode under strace, "
                                               "counting the server's fsyncs per job (slower; its jobs/s not shown).")] = False,
    transport: Annotated[str, typer.Option("--transport", help="nats.transport of the submitter and the worker: "
                                           "auto, fast or stock.")] = "auto",
    atomic_batches: Annotated[str, typer.Option("--atomic-batches", help="nats.atomic_batches of the submitter "
                                                "and the worker: auto (batches unless the server fsyncs lazily), "
                                                "true or false.")] = "auto",
    json_: JsonOpt = False,
) -> None:
    """Enqueue and end-to-end jobs/s of N no-op jobs through one worker process, per server sync mode."""
    from chronos.bench.throughput import run_throughput

    if sync not in ("always", "default", "both"):
        raise typer.BadParameter(f"{sync!r} is not always, default or both", param_hint="--sync")
    if transport not in ("auto", "fast", "stock"):
        raise typer.BadParameter(f"{transport!r} is not auto, fast or stock", param_hint="--transport")
    if atomic_batches not in ("auto", "true", "false"):
        raise typer.BadParameter(f"{atomic_batches!r} is not auto, true or false", param_hint="--atomic-batches")
    st = state(ctx)
    modes = ["always", "default"] if sync == "both" else [sync]
    results = []
    for mode in modes:
        result = run_async(st, run_throughput(n=n, concurrency=concurrency, timeout=timeout, sync=mode,
                                              transport=transport, atomic_batches=atomic_batches))
        if count_fsyncs:
            traced = run_async(st, run_throughput(n=n, concurrency=concurrency, timeout=timeout, sync=mode,
                                                  count_fsyncs=True, atomic_batches=atomic_batches))
            result = msgspec.structs.replace(result, fsyncs_per_job=traced.fsyncs_per_job)
        results.append(result)
    if wants_json(ctx, json_):
        out.print_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            rows = [
                ("server sync", "always (fsync every write)" if result.sync == "always" else "default (fsync every 2m)"),
                ("atomic batches", "on" if result.atomic_batches else "off"),
                ("jobs", result.n),
                ("enqueue", f"{result.enqueue_jobs_per_s:,.0f} jobs/s ({result.enqueue_seconds:.2f}s)"),
                ("end to end", f"{result.end_to_end_jobs_per_s:,.0f} jobs/s ({result.end_to_end_seconds:.2f}s)"),
                ("completed", result.completed),
                ("lost", result.lost),
                ("duplicated", result.duplicated),
                ("server msgs/job", f"{result.server_msgs_in_per_job} in, {result.server_msgs_out_per_job} out"),
                ("writes/job", ", ".join(f"{k} {v}" for k, v in result.writes_per_job.items()) or "-"),
                ("fsyncs/job", "-" if result.fsyncs_per_job is None else f"{result.fsyncs_per_job}"),
                ("concurrency", result.concurrency),
                ("cpu per job", ", ".join(f"{k} {v:.0f} µs" for k, v in result.cpu_us_per_job.items())),
            ]
            out.console().print(out.key_values([(k, str(v)) for k, v in rows]))
    if any(r.lost for r in results):
        raise typer.Exit(1)


@app.command("precision")
def precision(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, help="Delayed jobs.")] = 2000,
    spread: Annotated[float, typer.Option("--spread", min=0.1, help="Seconds their run_at times spread over.")] = 10.0,
    lead: Annotated[float, typer.Option("--lead", min=0.5, help="Seconds from submit to the first run_at.")] = 2.0,
    json_: JsonOpt = False,
) -> None:
    """Lateness of delayed jobs: run_at to the work message reaching an outside subscriber."""
    from chronos.bench.precision import run_precision

    st = state(ctx)
    result = run_async(st, run_precision(n=n, spread=spread, lead=lead))
    if wants_json(ctx, json_):
        out.print_json(result)
    else:
        rows = [
            ("jobs", f"{result.observed}/{result.n} over {result.spread_seconds:g}s"),
            ("lateness p50", f"{result.p50_ms:.3f} ms"),
            ("lateness p95", f"{result.p95_ms:.3f} ms"),
            ("lateness p99", f"{result.p99_ms:.3f} ms"),
            ("lateness max", f"{result.max_ms:.3f} ms"),
            ("early", result.early),
            ("in run_at order", "yes" if result.in_order else "no"),
            ("scheduler timer p50/p99", f"{result.timer_p50_ms:.3f} / {result.timer_p99_ms:.3f} ms"),
            ("measured at", result.measured_at),
        ]
        out.console().print(out.key_values([(k, str(v)) for k, v in rows]))
    if result.early or result.missing:
        raise typer.Exit(1)


@app.command("failover")
def failover(
    ctx: typer.Context,
    before: Annotated[float, typer.Option("--before", min=1, help="Seconds of fires under the first leader.")] = 4.0,
    after: Annotated[float, typer.Option("--after", min=1, help="Seconds of fires after the takeover.")] = 6.0,
    json_: JsonOpt = False,
) -> None:
    """SIGKILL the leading scheduler under an every-second schedule: takeover, duplicate and missed fires."""
    from chronos.bench.failover import run_failover

    st = state(ctx)
    result = run_async(st, run_failover(before=before, after=after, lease_ttl=st.settings.scheduler.lease_ttl))
    if wants_json(ctx, json_):
        out.print_json(result)
    else:
        rows = [
            ("takeover", f"{result.takeover_seconds:.2f} s (target <= {result.lease_ttl + 1:g} s: lease TTL + 1)"),
            ("fires", result.fires),
            ("duplicate fires", result.duplicate_fires),
            ("missed fires", result.missed_fires),
            ("worst fire delay", f"{result.max_fire_delay_seconds:.2f} s"),
            ("verdict", "pass" if result.passed else "FAIL"),
        ]
        out.console().print(out.key_values([(k, str(v)) for k, v in rows]))
    if not result.passed:
        raise typer.Exit(1)


@app.command("workflows")
def workflows(
    ctx: typer.Context,
    children: Annotated[int, typer.Option("--children", min=0, help="Children of the group (0: skip it).")] = 10_000,
    steps: Annotated[int, typer.Option("--steps", min=0, help="Steps of the chain (0: skip it).")] = 1_000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 2,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Slots per worker.")] = 256,
    idle: Annotated[float, typer.Option("--idle", min=0, help="Seconds of idle scheduler CPU to measure, "
                                        "with no workflow and with --finished finished ones (0: skip).")] = 0.0,
    finished: Annotated[int, typer.Option("--finished", min=1, help="Finished workflows for --idle.")] = 10_000,
    json_: JsonOpt = False,
) -> None:
    """A group of N children with one callback (runs once; latency from the last child) and a chain of M steps."""
    from chronos.bench.workflows import run_workflows

    st = state(ctx)
    result = run_async(st, run_workflows(children=children, steps=steps, workers=workers, concurrency=concurrency,
                                         idle=idle, finished=finished))
    if wants_json(ctx, json_):
        out.print_json(result)
    else:
        rows: list[tuple[str, str]] = []
        if result.idle is not None:
            i = result.idle
            rows += [("idle scheduler", f"{i.cpu_percent_empty} % CPU with no workflow, {i.cpu_percent_finished} % "
                                        f"with {i.finished:,} finished ({i.seconds:g} s each; load {i.loadavg})"),
                     ("full read", f"{i.full_read_ms:.0f} ms to read every workflow record once"),
                     ("idle, one running", f"{i.cpu_percent_active} % CPU with a running {i.active_nodes:,}-node "
                                           f"workflow in which nothing changes; one repair of it {i.repair_ms:.0f} ms")]
        if result.group is not None:
            g = result.group
            rows += [
                ("group", f"{g.children} children, submitted in {g.submit_seconds:.2f} s, all done {g.children_seconds:.2f} s after"),
                ("fan-in", f"callback created {g.callback_created * 1000:.0f} ms after the last child completed"),
                ("callback latency", f"{g.callback_latency * 1000:.0f} ms from the last child to the callback's start (goal <= 1000 ms)"),
                ("callback runs", f"{g.callback_runs} (result {g.callback_result}); duplicate children {g.duplicate_children}"),
            ]
        if result.chain is not None:
            c = result.chain
            rows += [("chain", f"{c.steps} steps in {c.total_seconds:.2f} s: {c.per_step_ms:.1f} ms per step; duplicates {c.duplicate_steps}")]
        rows += [("load", result.loadavg), ("verdict", "pass" if result.target_met else "FAIL")]
        out.console().print(out.key_values(rows))
    if not result.target_met:
        raise typer.Exit(1)


@app.command("delayed-memory")
def delayed_memory(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, help="Delayed jobs waiting far ahead.")] = 1_000_000,
    days: Annotated[float, typer.Option("--days", min=0.01, help="Spread their run_at over this many days.")] = 7.0,
    settle: Annotated[float, typer.Option("--settle", min=1, help="Seconds to watch a restarted scheduler.")] = 20.0,
    json_: JsonOpt = False,
) -> None:
    """Scheduler RSS with N delayed jobs pending (target < 250 MB for a million)."""
    from chronos.bench.delayed_memory import run_delayed_memory

    st = state(ctx)
    result = run_async(st, run_delayed_memory(n=n, days=days, settle=settle))
    if wants_json(ctx, json_):
        out.print_json(result)
    else:
        rows = [
            ("jobs", f"{result.n:,} (written in {result.fill_seconds:.0f}s)"),
            ("peak RSS while they arrive", f"{result.peak_rss_mb_while_filling:.1f} MB"),
            ("peak RSS, restarted over all", f"{result.peak_rss_mb_restarted:.1f} MB"),
            ("verdict", "pass (< 250 MB)" if result.passed else "FAIL (>= 250 MB)"),
        ]
        out.console().print(out.key_values([(k, str(v)) for k, v in rows]))
    if not result.passed:
        raise typer.Exit(1)


@app.command("crash")
def crash(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, help="Jobs to run.")] = 5000,
    job_seconds: Annotated[float, typer.Option("--job-seconds", min=0, help="How long each job sleeps.")] = 0.05,
    ack_wait: Annotated[float, typer.Option("--ack-wait", min=1, help="Workers' ack_wait (redelivery after a death).")] = 2.0,
    kill: Annotated[str, typer.Option("--kill", help="What gets the SIGKILL: worker (one worker's process group) "
                                      "or server (nats-server, run with sync_interval always, restarted on its "
                                      "store).")] = "worker",
    json_: JsonOpt = False,
) -> None:
    """Two 8-slot workers; SIGKILL one's process group (or nats-server) at 40 %, restart it after 1 s: lost,
    duplicated, recovery."""
    from chronos.bench.crash import run_crash

    if kill not in ("worker", "server"):
        raise typer.BadParameter(f"{kill!r} is not worker or server", param_hint="--kill")
    st = state(ctx)
    result = run_async(st, run_crash(n=n, job_seconds=job_seconds, ack_wait=ack_wait, kill=kill))
    if wants_json(ctx, json_):
        out.print_json(result)
    else:
        rows = [
            ("jobs", f"{result.n:,} of {result.job_seconds * 1000:.0f} ms on {result.workers} workers x "
                     f"{result.concurrency} slots (ack_wait {result.ack_wait:g} s)"),
            ("killed", "nats-server (sync_interval always), restarted on its store" if result.kill == "server"
             else "one worker's process group, restarted"),
            ("killed at", f"{result.killed_at_completed:,} completed; {result.orphaned} jobs were running "
                          f"{'anywhere' if result.kill == 'server' else 'on it'}"),
            ("lost", result.lost),
            ("duplicated", f"{result.duplicated} ({result.unseen_duplicates} that their record does not show)"),
            ("kill -> its jobs done", f"{result.recovery_seconds:.2f} s (target <= 6 s)"),
            ("kill -> all done", f"{result.drain_seconds:.2f} s (the work left needs >= {result.min_drain_seconds:.1f} s)"),
            ("verdict", "pass" if result.target_met else "FAIL"),
        ]
        out.console().print(out.key_values([(k, str(v)) for k, v in rows]))
    if not result.target_met:
        raise typer.Exit(1)


@app.command("unique")
def unique(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=10, help="Submits of each kind.")] = 300,
    json_: JsonOpt = False,
) -> None:
    """Submit latency of unique-while-active and debounced jobs against plain jobs (docs/unique-jobs.md)."""
    from chronos.bench.unique import run_unique_bench

    result = run_unique_bench(n=n)
    if wants_json(ctx, json_):
        out.print_json(result)
        return
    rows = [(kind, f"p50 {v.p50_ms:.2f} ms, p99 {v.p99_ms:.2f} ms, max {v.max_ms:.1f} ms ({v.n} submits)")
            for kind, v in result.kinds.items()]
    rows.append(("load average", result.loadavg))
    out.console().print(out.key_values(rows))


@app.command("sync-submit")
def sync_submit(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=10, help="Submits from one thread.")] = 5000,
    threads: Annotated[int, typer.Option("--threads", min=1, max=256, help="Threads for the concurrent run.")] = 8,
    json_: JsonOpt = False,
) -> None:
    """Submit latency from synchronous code (SyncClient), against asyncio.run per call."""
    from chronos.bench.sync_submit import run_sync_submit

    result = run_sync_submit(n=n, threads=threads)
    if wants_json(ctx, json_):
        out.print_json(result)
        return
    rows = [
        ("one thread", f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, max {result.max_ms:.1f} ms ({result.n} submits)"),
        (f"{result.threads} threads", f"{result.threaded_jobs_per_s:,.0f} jobs/s, p50 {result.threaded_p50_ms:.2f} ms, "
                                      f"p99 {result.threaded_p99_ms:.2f} ms"),
        ("asyncio.run per call", f"p50 {result.asyncio_run_p50_ms:.1f} ms ({result.asyncio_run_calls} calls)"),
    ]
    out.console().print(out.key_values(rows))


def _sizes(value: str, option: str) -> list[int]:
    from ._parse import BadOption

    try:
        sizes = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(n < 1 for n in sizes):
        raise BadOption(option, f"{value!r} is not a comma-separated list of positive counts (100000,300000)")
    return sizes


@app.command("listing")
def listing(
    ctx: typer.Context,
    records: Annotated[str, typer.Option("--records", help="Sizes of the jobs bucket, cumulative.")]
    = "100000,300000,1000000",
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Calls per measured listing (median).")] = 5,
    idle: Annotated[float, typer.Option("--idle", min=1, help="Seconds the idle scheduler's CPU is measured.")] = 20.0,
    tui: Annotated[bool, typer.Option("--tui/--no-tui", help="Also time the console (counts, jobs rows).")] = True,
    json_: JsonOpt = False,
) -> None:
    """Listing first page per filter, counts, index catch-up and the idle scheduler's CPU as the bucket grows."""
    from chronos.bench.listing import FILTERS, run_listing

    measure = None
    if tui:
        from chronos.tui.measure import measure_paint as measure
    st = state(ctx)
    result = run_async(st, run_listing(_sizes(records, "--records"), repeat=repeat, idle=idle, tui=measure))
    if wants_json(ctx, json_):
        out.print_json(result)
        return
    t = out.table("RECORDS", *(k.upper() for k in FILTERS), "PAGE 2", "COUNTS", "CLIENT KB", "IDLE CPU",
                  "SCHED RSS", "INDEX ROWS/S")
    for p in result.points:
        t.add_row(f"{p.records:,}", *(f"{p.first_page_ms[k]:.0f} ms" for k in FILTERS), f"{p.second_page_ms:.0f} ms",
                  f"{p.counts_ms:.0f} ms", f"{p.client_peak_kb:.0f}", f"{p.idle_cpu_percent:.1f} %",
                  f"{p.scheduler_rss_mb:.0f} MB", f"{p.index_rows_per_s:,.0f}")
    out.print_table(t)
    for p in result.points:
        if p.tui_ms:
            typer.echo(f"console at {p.records:,}: counts shown after {p.tui_ms['counts_ms']:.0f} ms, "
                       f"jobs rows {p.tui_ms['jobs_rows_ms']:.0f} ms after the key")
    for p in result.points:
        if p.search_ms:
            found = p.search_found or {}
            typer.echo(f"--where at {p.records:,} (first page of 50): "
                       + ", ".join(f"{k} {v:.0f} ms ({found.get(k, 0)} found)" for k, v in p.search_ms.items())
                       + f"; a scan no other filter bounds: {p.scan_rows_per_s:,.0f} rows/s")
    if result.archiver_events_per_s is not None:
        typer.echo(f"archiver ingest (terminal events, KV read per event): {result.archiver_events_per_s:,.0f} events/s")


@app.command("schedules")
def schedules(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, help="Idle schedules (each fires once a day).")] = 10000,
    idle: Annotated[float, typer.Option("--idle", min=1, help="Seconds the idle scheduler's CPU is measured.")] = 20.0,
    delayed: Annotated[int, typer.Option("--delayed", min=1, help="Delayed jobs for the precision check.")] = 500,
    json_: JsonOpt = False,
) -> None:
    """Idle scheduler CPU, per-second fire lateness and delayed-job precision with 0 and N schedules."""
    from chronos.bench.schedules import run_schedules

    st = state(ctx)
    result = run_async(st, run_schedules(n, idle=idle, delayed=delayed))
    if wants_json(ctx, json_):
        out.print_json(result)
        return
    t = out.table("SCHEDULES", "IDLE CPU", "RSS", "FIRE P50", "FIRE MAX", "DELAYED P50", "DELAYED P99", "DELAYED MAX")
    for p in result.points:
        t.add_row(f"{p.schedules:,}", f"{p.idle_cpu_percent:.1f} %", f"{p.scheduler_rss_mb:.0f} MB",
                  f"{p.fire_p50_ms:.1f} ms", f"{p.fire_max_ms:.1f} ms", f"{p.delayed_p50_ms:.1f} ms",
                  f"{p.delayed_p99_ms:.1f} ms", f"{p.delayed_max_ms:.1f} ms")
    out.print_table(t)


@app.command("history")
def history(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option("--rows", min=1000, help="Archived rows to query.")] = 10_000_000,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Runs per query (median).")] = 5,
    archive: Annotated[str | None, typer.Option("--archive", help="Reuse (or keep) this archive file.")] = None,
    json_: JsonOpt = False,
) -> None:
    """History queries (task, state, time, error text) on an archive of ROWS finished jobs."""
    from chronos.bench.history import run_history

    st = state(ctx)
    result = run_async(st, run_history(rows, repeat=repeat, path=archive))
    if wants_json(ctx, json_):
        out.print_json(result)
        return
    typer.echo(f"{result.rows:,} rows, built in {result.build_seconds:.0f} s, {result.file_mb:,.0f} MB")
    t = out.table("QUERY", "ROWS", "MEDIAN", "MAX", "END TO END")
    for q in result.queries:
        t.add_row(q.query, str(q.rows), f"{q.median_ms:.1f} ms", f"{q.max_ms:.1f} ms",
                  "" if q.end_to_end_ms is None else f"{q.end_to_end_ms:.1f} ms")
    out.print_table(t)


@app.command("scale")
def scale(
    ctx: typer.Context,
    records: Annotated[str, typer.Option("--records", help="Sizes of the jobs bucket, grown in place.")]
    = "100000,300000,1000000",
    schedules: Annotated[int, typer.Option("--schedules", min=0, help="Idle schedules (each fires once a day).")]
    = 10000,
    running: Annotated[int, typer.Option("--running", min=0, help="Jobs running on a live worker besides "
                                         "the finished records (the rescuer reads each every pass).")] = 0,
    idle: Annotated[float, typer.Option("--idle", min=1, help="Seconds per idle CPU window.")] = 60.0,
    windows: Annotated[int, typer.Option("--windows", min=1, help="Idle CPU windows per size.")] = 2,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Calls per measured listing (median).")] = 5,
    tui: Annotated[bool, typer.Option("--tui/--no-tui", help="Also time the console's jobs view.")] = True,
    json_: JsonOpt = False,
) -> None:
    """The cost curve: first page, counts, console jobs view, idle scheduler CPU, RSS and rescuer pass per size."""
    from chronos.bench.scale import run_scale

    measure = None
    if tui:
        from chronos.tui.measure import measure_paint as measure
    st = state(ctx)
    quiet = wants_json(ctx, json_)
    result = run_async(st, run_scale(_sizes(records, "--records"), schedules=schedules, running=running,
                                     repeat=repeat, idle=idle,
                                     windows=windows, tui=measure,
                                     progress=lambda m: typer.echo(m, err=True)))
    if quiet:
        out.print_json(result)
        return

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f} ms"

    t = out.table("RECORDS", "FIRST PAGE", "DISCARDED", "COUNTS", "CLIENT KB", "TUI JOBS", "TUI AGAIN",
                  "SCHED CPU", "SERVER CPU", "SCHED RSS", "RESCUER PASS", "INDEX CATCH-UP", "LOADAVG")
    for p in result.points:
        t.add_row(f"{p.records:,}", ms(p.first_page_ms), ms(p.first_page_discarded_ms), ms(p.counts_ms),
                  f"{p.client_peak_kb:,.0f}", ms(p.tui_paint_ms), ms(p.tui_paint_again_ms),
                  " / ".join(f"{c:.1f} %" for c in p.scheduler_cpu_percent),
                  " / ".join(f"{c:.1f} %" for c in p.server_cpu_percent), f"{p.scheduler_rss_mb:,.0f} MB",
                  "-" if p.rescuer_pass_ms is None else f"{p.rescuer_pass_ms:,.1f} ms ({p.rescuer_records_read} read)",
                  f"{p.index_catch_up_seconds:,.0f} s", p.loadavg)
    out.print_table(t)
    typer.echo(f"{result.schedules:,} idle schedules, {result.running:,} running jobs; "
               f"scheduler CPU per {result.idle_seconds:.0f} s idle window "
               "(100 % = one core); records written in "
               + ", ".join(f"{p.fill_seconds:,.0f} s" for p in result.points))


@app.command("limits")
def limits(
    ctx: typer.Context,
    duration: Annotated[float, typer.Option("--duration", min=1, help="Seconds of backlog for the rate run.")] = 60.0,
    rate: Annotated[str, typer.Option("--rate", help="The task's rate limit, e.g. 50/s.")] = "50/s",
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Jobs for the concurrency run.")] = 1000,
    keys: Annotated[int, typer.Option("--keys", min=1, help="Keys they are spread over (limit 1 each).")] = 20,
    lease: Annotated[float, typer.Option("--lease", min=2, help="worker.limit_lease for the recovery run.")] = 5.0,
    only: Annotated[str, typer.Option("--only", help="Comma list of rate, concurrency, recovery, snapshot.")] = "rate,concurrency,recovery",
    json_: JsonOpt = False,
) -> None:
    """Fleet-wide limits, 3 worker processes: a 50/s rate (achieved, max in any 1 s), 1 per key over 20 keys
    (overlapping runs, time), and slot recovery after a SIGKILL."""
    from chronos.bench.limits import run_limits
    from chronos.limits import LimitError, parse_rate

    from ._parse import BadOption

    which = tuple(w.strip() for w in only.split(",") if w.strip())
    if not which or set(which) - {"rate", "concurrency", "recovery", "snapshot"}:
        raise BadOption("--only", f"{only!r}: give rate, concurrency, recovery and/or snapshot")
    try:
        parse_rate(rate, "--rate")
    except LimitError as exc:
        raise BadOption("--rate", str(exc).removeprefix("--rate: ")) from None
    st = state(ctx)
    result = run_async(st, run_limits(which=which, rate=rate, duration=duration, jobs=jobs, keys=keys, lease=lease))
    if wants_json(ctx, json_):
        out.print_json(result)
        return
    rows: list[tuple[str, str]] = []
    ok = True
    if result.rate is not None:
        r = result.rate
        ok &= r.within_5_percent and r.max_in_1s_window <= r.goal_window
        rows += [("rate", f"{r.jobs:,} jobs limited to {r.limit} on {r.workers} workers: "
                          f"{r.achieved_per_second:.2f}/s achieved ({'within' if r.within_5_percent else 'OUTSIDE'} 5 %)"),
                 ("max in any 1 s", f"{r.max_in_1s_window} (goal <= {r.goal_window})")]
    if result.concurrency is not None:
        c = result.concurrency
        ok &= c.overlapping_runs == 0
        rows += [("concurrency", f"{c.jobs:,} jobs of {c.job_seconds * 1000:.0f} ms over {c.keys} keys, 1 each, "
                                 f"{c.workers} workers: {c.total_seconds:.1f} s (one key alone needs "
                                 f">= {c.serial_seconds_per_key:.1f} s)"),
                 ("overlapping runs", f"{c.overlapping_runs} (goal 0)"),
                 ("slot handoff", f"a run's end to the key's next start: p50 {c.handoff_p50_ms:.0f} ms, "
                                  f"p90 {c.handoff_p90_ms:.0f} ms, max {c.handoff_max_ms:.0f} ms")]
    if result.snapshot is not None:
        n = result.snapshot
        rows += [("snapshot", f"client.limits() over {n.keys:,} rate keys, {n.holders:,} held slots, {n.waiters:,} "
                              f"waiters: {n.seconds_median * 1000:.0f} ms median ({n.listed} listed, {n.omitted:,} more)")]
    if result.recovery is not None:
        k = result.recovery
        rows += [("recovery", f"{k.held_at_kill} slots held at SIGKILL; free after {k.slots_free_seconds:.2f} s "
                              f"(lease {k.lease:g} s); its jobs running again after {k.jobs_restarted_seconds:.2f} s")]
    rows.append(("loadavg", result.loadavg))
    out.console().print(out.key_values(rows))
    if not ok:
        raise typer.Exit(1)
