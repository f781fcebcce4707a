"""`tessera-pipeline bench-run`: the run layer at scale (plan the globe, driver tiles/s, status of a big plan)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.table import Table

from tessera_pipeline.cli.console import make_console, print_table


@click.command("bench-run")
@click.option("--driver-tiles", type=click.IntRange(100), default=20_000, show_default=True,
              help="Tiles through the no-op driver benchmark.")
@click.option("--status-tiles", type=click.IntRange(100), default=100_000, show_default=True,
              help="Tiles in the plan `status` is timed on (90 % committed).")
@click.option("--s3-idle", is_flag=True, help="Also: actor idle time between tiles with inputs and store on a "
              "loopback S3 server (needs moto[server]; real-size random v1.1 model, about a minute).")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def bench_run(driver_tiles: int, status_tiles: int, s3_idle: bool, as_json: bool) -> None:
    """Measure the run layer itself, with no model: how fast the globe plans, how many tiles per second
    the driver schedules through real Ray actors (no-op encoder), and how fast `status` answers."""
    from tessera_pipeline.bench.run_bench import bench_driver, bench_plan_globe, bench_s3_idle, bench_status

    console = make_console(stderr=as_json)
    with console.status("planning the globe"):
        plan = bench_plan_globe()
    with console.status(f"{driver_tiles:,} tiles through no-op actors"):
        driver = bench_driver(driver_tiles)
    with console.status(f"status of a {status_tiles:,}-tile plan"):
        status = bench_status(status_tiles, int(status_tiles * 0.9))
    idle = None
    if s3_idle:
        with console.status("idle time between tiles, inputs on loopback S3"):
            idle = bench_s3_idle()
    if as_json:
        click.echo(json.dumps({"plan_globe": asdict(plan), "driver_noop": asdict(driver), "status": asdict(status),
                               "s3_idle": asdict(idle) if idle else None}, indent=1))
        return
    table = Table("measure", "result", title="run layer at scale")
    table.add_row("plan the globe", f"{plan.tiles:,} tiles, {plan.pixels / 1e12:.2f} T px in "
                  f"{plan.select_s + plan.plan_s + plan.encode_s:.1f} s, peak RSS {plan.peak_rss_mb:,.0f} MB, "
                  f"plan {plan.plan_bytes / 1e6:.1f} MB")
    table.add_row("driver, no-op actors", f"{driver.tiles_per_s:,.0f} tiles/s ({driver.tiles:,} tiles, "
                  f"{driver.actors} actor(s), window {driver.window})")
    table.add_row("status", f"{status.seconds:.2f} s for {status.tiles:,} planned, {status.complete:,} complete, "
                  f"{status.failed} failed")
    if idle is not None:
        table.add_row("actor idle between tiles (S3 inputs)", f"max {100 * idle.idle_fraction_max:.2f}%, mean "
                      f"{100 * idle.idle_fraction_mean:.2f}% over {idle.tiles} tiles of {idle.size} "
                      f"(~{idle.encode_s_per_tile:.1f} s encode each); input cache evicted: {idle.evicted}")
    print_table(console, table)
