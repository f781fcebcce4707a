"""`tessera-pipeline mosaic`: committed tiles into geotessera's UTM-zone store, built and updated shard by shard."""

from __future__ import annotations

import json
import sys

import click


def _zones(text: str | None) -> list[int] | None:
    """`--zones 30,31` as zone numbers."""
    if not text:
        return None
    try:
        zones = sorted({int(z) for z in text.split(",") if z.strip()})
    except ValueError as exc:
        raise click.BadParameter(f"expected zone numbers like 30,31, got {text!r}", param_hint="--zones") from exc
    if not zones or not all(1 <= z <= 60 for z in zones):
        raise click.BadParameter(f"UTM zones are 1 to 60, got {text!r}", param_hint="--zones")
    return zones


@click.command("mosaic")
@click.option("--store", "store_url", required=True, help="Our store: a local path or s3://bucket/prefix.")
@click.option("--year", type=click.IntRange(1000, 9999), required=True, help="Year to mosaic.")
@click.option("--out", "out_url", required=True,
              help="The zone store to build or update (a local path or s3://); shard records go beside it, OUT.mosaic.")
@click.option("--zones", default=None, metavar="Z1,Z2", help="Only these UTM zones (default: every zone with tiles).")
@click.option("--release", default=None, metavar="NAME", help="Exactly this release's tile versions.")
@click.option("--landmask", default="globe", show_default=True,
              help="Marks water (NaN): globe, none, or a tile list / GeoTIFF.")
@click.option("--address", default=None, help="Ray cluster to run the shard tasks on (e.g. auto); default: a local one.")
@click.option("--local-cpus", type=click.IntRange(1), default=None, help="CPUs of the local Ray cluster (default: all).")
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON document on stdout.")
def mosaic(store_url: str, year: int, out_url: str, zones: str | None, release: str | None, landmask: str,
           address: str | None, local_cpus: int | None, as_json: bool) -> None:
    """Build or update geotessera's zone store (one `utmZZ` group per zone, 4096-pixel shards) from the
    committed tiles of a year, or exactly a release's.

    Only shards whose tile versions changed since they were built are rewritten, each from every tile
    that overlaps it; a killed run is finished by running it again. Shards run as Ray tasks.

    A tile whose data is damaged or incomplete is left out: the rest is built, the tile is listed (`left_out`
    with --json) and the command exits 1.
    """
    from tessera_pipeline.cli.console import make_console
    from tessera_pipeline.publish.mosaic_run import run_mosaic

    console = make_console(stderr=True)

    def built(done: int, total: int) -> None:
        console.print(f"built shard {done}/{total}", markup=False)

    report = run_mosaic(store_url, year, out_url, zones=_zones(zones), release=release, landmask=landmask,
                        address=address, local_cpus=local_cpus, on_progress=built)
    summary = report.to_dict()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"zone store {report.out}: {summary['tiles']} tiles of {year} in zone(s) "
                   f"{', '.join(map(str, report.zones))}; {summary['rebuilt']} of {summary['shards']} shard(s) rebuilt, "
                   f"{summary['up_to_date']} up to date, {summary['seconds']} s")
    if report.left_out:
        click.echo(f"error: {len(report.left_out)} tile(s) left out of the mosaic (their shards were built without "
                   f"them, and are built again by the next run):", err=True)
        for cause in sorted(report.left_out.values()):
            click.echo(f"  {cause}", err=True)
        sys.exit(1)
