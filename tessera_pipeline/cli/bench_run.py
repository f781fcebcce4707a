"""`tessera-pipeline bench-run`: the run layer at scale (plan the globe, driver tiles/s, whole-store commands
over 10^5-10^6 markers locally and on loopback S3, the scheduling loop over the global plan)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.table import Table

from tessera_pipeline.cli.console import make_console, print_table


def _tile_counts(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated tile counts, got {value!r}") from None
    if any(n < 100 for n in counts):
        raise click.BadParameter("each tile count must be at least 100")
    return counts


@click.command("bench-run")
@click.option("--driver-tiles", type=click.IntRange(100), default=20_000, show_default=True,
              help="Tiles through the no-op driver benchmark (real Ray actors).")
@click.option("--store-tiles", default="100000,1000000", show_default=True, callback=_tile_counts,
              help="Plan sizes for status / resume / reprocess status over a local store (90 % committed).")
@click.option("--s3-tiles", type=click.IntRange(0), default=100_000, show_default=True,
              help="Plan size for the same over a loopback S3 server counting requests (0: skip).")
@click.option("--schedule-tiles", type=click.IntRange(0), default=1_598_651, show_default=True,
              help="Tiles through the scheduling loop with simulated actors (0: skip; default: the global plan).")
@click.option("--slots", type=click.IntRange(1), default=1000, show_default=True,
              help="Simulated actor slots in the scheduling loop.")
@click.option("--s3-idle", is_flag=True, help="Also: actor idle time between tiles with inputs and store on a "
              "loopback S3 server (needs moto[server]; real-size random v1.1 model, about a minute).")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def bench_run(driver_tiles: int, store_tiles: tuple[int, ...], s3_tiles: int, schedule_tiles: int, slots: int,
              s3_idle: bool, as_json: bool) -> None:
    """Measure the run layer itself, with no model: how fast the globe plans, how many tiles per second
    the driver schedules through real Ray actors (no-op encoder) and through 1,000 simulated slots, and
    what `status` and `resume` cost (seconds, peak memory, S3 requests) over stores of up to 10^6 markers.
    Stores are built on local disk and in the loopback server's memory; that setup is not timed."""
    from tessera_pipeline.bench.run_bench import bench_driver, bench_plan_globe, bench_s3_idle
    from tessera_pipeline.bench.scale_bench import bench_commands_local, bench_commands_s3, bench_scheduling

    console = make_console(stderr=as_json)
    with console.status("planning the globe"):
        plan = bench_plan_globe()
    with console.status(f"{driver_tiles:,} tiles through no-op actors"):
        driver = bench_driver(driver_tiles)
    commands = []
    for n in store_tiles:
        with console.status(f"status and resume over {n:,} planned tiles, local store"):
            commands += bench_commands_local(n)
    if s3_tiles:
        with console.status(f"status and resume over {s3_tiles:,} planned tiles, loopback S3"):
            commands += bench_commands_s3(s3_tiles)
    scheduling = None
    if schedule_tiles:
        with console.status(f"scheduling {schedule_tiles:,} tiles onto {slots:,} simulated slots"):
            scheduling = bench_scheduling(schedule_tiles, slots)
    idle = None
    if s3_idle:
        with console.status("idle time between tiles, inputs on loopback S3"):
            idle = bench_s3_idle()
    if as_json:
        click.echo(json.dumps({"plan_globe": asdict(plan), "driver_noop": asdict(driver),
                               "commands": [asdict(c) for c in commands],
                               "scheduling": asdict(scheduling) if scheduling else None,
                               "s3_idle": asdict(idle) if idle else None}, indent=1))
        return
    table = Table("measure", "result", title="run layer at scale")
    table.add_row("plan the globe", f"{plan.tiles:,} tiles, {plan.pixels / 1e12:.2f} T px in "
                  f"{plan.select_s + plan.plan_s + plan.encode_s:.1f} s, peak RSS {plan.peak_rss_mb:,.0f} MB, "
                  f"plan {plan.plan_bytes / 1e6:.1f} MB")
    table.add_row("driver, no-op actors", f"{driver.tiles_per_s:,.0f} tiles/s ({driver.tiles:,} tiles, "
                  f"{driver.actors} actor(s), window {driver.window})")
    if scheduling is not None:
        table.add_row("scheduling loop, simulated slots", f"{scheduling.tiles_per_s:,.0f} tiles/s ({scheduling.tiles:,} "
                      f"tiles, {scheduling.slots:,} slots, window {scheduling.window}), peak RSS "
                      f"{scheduling.peak_rss_mb:,.0f} MB")
    if idle is not None:
        table.add_row("actor idle between tiles (S3 inputs)", f"max {100 * idle.idle_fraction_max:.2f}%, mean "
                      f"{100 * idle.idle_fraction_mean:.2f}% over {idle.tiles} tiles of {idle.size} "
                      f"(~{idle.encode_s_per_tile:.1f} s encode each); input cache evicted: {idle.evicted}")
    print_table(console, table)
    if commands:
        ctable = Table("command", "store", "planned", "markers", "seconds", "peak RSS MB", "LIST", "GET",
                       title="whole-store commands")
        for c in commands:
            ctable.add_row(c.command, c.backend, f"{c.tiles:,}", f"{c.markers:,}", f"{c.seconds:.2f}",
                           f"{c.peak_rss_mb:,.0f}", f"{c.requests.get('LIST', '-')}", f"{c.requests.get('GET', '-')}")
        print_table(console, ctable)
