"""`tessera-pipeline status`: complete, failed and pending tiles of a store's run, from the store alone."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from tessera_pipeline.cli.console import make_console, print_table


@click.command("status")
@click.option("--store", required=True, help="The run's store (local path or s3://).")
@click.option("--run-id", default=None, help="Which recorded run (default: the store's current run).")
@click.option("--json", "as_json", is_flag=True, help="JSON: complete, failed, pending, failed_by_reason, throughput, ...")
def status(store: str, run_id: str | None, as_json: bool) -> None:
    """Show a run's progress: tiles complete, failed (by reason) and pending; throughput by hardware class.

    Exit code 1 while any planned tile has failed, 0 otherwise.
    """
    from tessera_pipeline.run.status import run_status

    st = run_status(store, run_id)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=1))
    else:
        console = make_console()
        pct = 100.0 * st.complete / st.planned if st.planned else 100.0
        console.print(f"{st.kind} {st.run_id} (started {st.created_at}), checkpoint "
                      f"{str(st.checkpoint.get('sha256', ''))[:12]}: {st.complete:,}/{st.planned:,} tiles complete "
                      f"({pct:.1f}%, {st.pixels_complete:,}/{st.pixels_planned:,} px), {st.failed:,} failed, "
                      f"{st.pending:,} pending", markup=False)
        if st.failed_by_reason:
            table = Table("reason", "tiles", title="failed by reason")
            for reason, n in sorted(st.failed_by_reason.items(), key=lambda kv: -kv[1]):
                table.add_row(reason, f"{n:,}")
            print_table(console, table)
            for f in st.failed_tiles[:10]:
                console.print(f"  {f['year']}/{f['tile']}: {f['reason']}: {f['message']}", markup=False)
        if st.throughput:
            table = Table("hardware class", "actors", "tiles", "px/s", title="throughput (last driver session)")
            for cls, v in sorted(st.throughput.items()):
                table.add_row(cls, str(v.get("actors", "")), f"{v.get('tiles', 0):,}", f"{v.get('px_per_s', 0):,.0f}")
            print_table(console, table)
    if st.failed:
        sys.exit(1)
