"""`tessera-pipeline synth`: write synthetic d-pixel tiles for a region, in upstream's layout."""

from __future__ import annotations

from pathlib import Path

import click

from tessera_pipeline.cli.options import RegionRequest, region_options, select_tiles


@click.command()
@click.option("--out", "out", required=True, help="Root directory: tiles go to ROOT/YEAR/TILE/.")
@click.option("--year", type=int, required=True, help="Year the tiles stand for (also seeds the generator).")
@region_options
@click.option("--size", default=None, metavar="HxW", help="Reduced raster size per tile (writes a roi.tiff).")
def synth(region: RegionRequest, out: str, year: int, size: str | None) -> None:
    """Generate realistic synthetic tiles (clouds, gaps, missing orbits) for the selected land tiles."""
    from tessera_pipeline.inputs.synthetic import make_synthetic_tile, parse_size

    try:
        hw = parse_size(size) if size else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from exc
    names = select_tiles(region).names()
    with click.progressbar(names, label=f"synthetic tiles -> {out}", file=None) as bar:
        for name in bar:
            make_synthetic_tile(Path(out), year, name, size=hw)
    click.echo(f"{len(names)} tiles written under {Path(out) / str(year)}")
