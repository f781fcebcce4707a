"""`tessera-pipeline status`: complete, failed and pending tiles of a store's run, from the store alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from tessera_pipeline.cli.console import make_console, print_table


@click.command("status")
@click.option("--store", required=True, help="The run's store (local path or s3://).")
@click.option("--run-id", default=None, help="Which recorded run (default: the store's current run).")
@click.option("--all-reasons", is_flag=True, help="Count failure reasons over every failure record (default: the "
              "first 1,000; one GET each).")
@click.option("--json", "as_json", is_flag=True, help="JSON: complete, failed, pending, failed_by_reason, throughput, ...")
@click.option("--map", "map_png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the run's tiles by state (complete, failed by reason, pending, awaiting input) on a "
                   "world or region map, as this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --map file.")
def status(store: str, run_id: str | None, all_reasons: bool, as_json: bool, map_png: Path | None,
           overwrite: bool) -> None:
    """Show a run's progress: whether its driver is running, tiles complete, failed (by reason) and pending,
    throughput by hardware class, quarantined actors and given-up nodes.

    Reads listings (1,000 keys a request) and only the records it shows, so it answers in seconds
    for a global run. With --map, failed tiles whose record was not read (beyond the first 1,000;
    --all-reasons reads all) are drawn as one colour. Exit code 1 while any planned tile has failed,
    0 otherwise.
    """
    from tessera_pipeline.run.status import REASONS_FROM, run_status

    if map_png is not None:
        from tessera_pipeline.cli.outputs import check_output_files

        check_output_files([map_png], "--map", overwrite=overwrite)
    st = run_status(store, run_id, reasons_from=None if all_reasons else REASONS_FROM, with_tiles=map_png is not None)
    if map_png is not None:
        from tessera_pipeline.run.status_map import draw_run_map

        map_png.parent.mkdir(exist_ok=True)
        draw_run_map(st, map_png)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=1))
    else:
        console = make_console()
        pct = 100.0 * st.complete / st.planned if st.planned else 100.0
        console.print(f"{st.kind} {st.run_id} (started {st.created_at}), checkpoint "
                      f"{str(st.checkpoint.get('sha256', ''))[:12]}: {st.complete:,}/{st.planned:,} tiles complete "
                      f"({pct:.1f}%, {st.pixels_complete:,}/{st.pixels_planned:,} px), {st.failed:,} failed, "
                      f"{st.pending:,} pending", markup=False)
        if st.awaiting_input:
            console.print(f"{st.awaiting_input:,} tiles await their inputs (none existed when the run last started): "
                          f"once they do, run: tessera-pipeline resume --store {store}", markup=False)
        d = st.driver
        if st.state == "running" and d:
            console.print(f"running: driver on {d['host']} (pid {d['pid']}), last beat {d['last_beat_s_ago']:.0f} s ago",
                          markup=False)
        elif st.state == "stopped":
            lapsed = bool(d)
            why = (f"its driver on {d['host']} last beat {d['last_beat_s_ago']:.0f} s ago (lease expired)" if lapsed
                   else "no driver holds the store")
            console.print(f"not running: {why}; continue with: tessera-pipeline resume --store {store}"
                          f"{' --takeover' if lapsed else ''}", markup=False)
        progress = st.progress or {}
        for node in progress.get("given_up_nodes", []):
            console.print(f"  node {node['node_id'][:8]} ({node['hw_class']}) given up: {node['reason']}; "
                          f"last error: {node['last_error']} (remove it from the cluster)", markup=False)
        if progress.get("quarantined"):
            console.print(f"  {progress['quarantined']} actor(s) quarantined (failed tiles in a row while others "
                          "succeeded; their tiles were not charged)", markup=False)
        if st.failed_by_reason:
            title = "failed by reason" if st.reasons_counted >= st.failed else (
                f"failed by reason (the first {st.reasons_counted:,} of {st.failed:,} records; --all-reasons for all)")
            table = Table("reason", "tiles", title=title)
            for reason, n in sorted(st.failed_by_reason.items(), key=lambda kv: -kv[1]):
                table.add_row(reason, f"{n:,}")
            print_table(console, table)
            for f in st.failed_tiles[:10]:
                console.print(f"  {f['year']}/{f['tile']} ({f['kind']}): {f['reason']}: {f['message']}", markup=False)
            if st.failed_by_kind.get("permanent"):
                console.print(f"after fixing the inputs: tessera-pipeline resume --store {store} --retry-failed",
                              markup=False)
        if st.throughput:
            threads = (st.progress or {}).get("threads_by_class", {})
            table = Table("hardware class", "actors", "threads", "tiles", "px/s", title="throughput (last driver session)")
            for cls, v in sorted(st.throughput.items()):
                table.add_row(cls, str(v.get("actors", "")), ",".join(map(str, threads.get(cls, []))) or "-",
                              f"{v.get('tiles', 0):,}", f"{v.get('px_per_s', 0):,.0f}")
            print_table(console, table)
        if map_png is not None:
            console.print(f"map of the run's tiles by state: {map_png}", markup=False)
    if st.failed:
        sys.exit(1)
