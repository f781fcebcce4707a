"""`tessera-pipeline synth`: write synthetic d-pixel tiles for a region, in upstream's layout."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from tessera_pipeline.cli.console import make_console, progress
from tessera_pipeline.cli.options import RegionRequest, region_options, select_tiles
from tessera_pipeline.cli.outputs import check_output_dir
from tessera_pipeline.errors import ArgumentError, OutputError


@click.command()
@click.option("--out", "out", required=True, help="Root directory: tiles go to ROOT/YEAR/TILE/.")
@click.option("--year", type=click.IntRange(1000, 9999), required=True,
              help="Year the tiles stand for (also seeds the generator).")
@region_options
@click.option("--size", default=None, metavar="HxW",
              help="Reduced raster size per tile, at most the tile's own size (writes a roi.tiff).")
@click.option("--overwrite", is_flag=True, default=False, help="Replace tile directories that already exist.")
def synth(region: RegionRequest, out: str, year: int, size: str | None, overwrite: bool) -> None:
    """Generate realistic synthetic tiles (clouds, gaps, missing orbits) for the selected land tiles.

    Everything is checked before the first tile is written: the size fits every selected tile,
    and no tile directory exists yet (unless --overwrite).
    """
    from tessera_pipeline.grid import geometry_arrays
    from tessera_pipeline.inputs.dpixel import tile_location
    from tessera_pipeline.inputs.synthetic import make_synthetic_tile, parse_size

    try:
        hw = parse_size(size) if size is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from exc
    root = check_output_dir(out, "--out")
    selected = select_tiles(region)
    names = selected.names()
    if hw is not None:
        geom = geometry_arrays(selected.ix, selected.iy)
        too_small = np.flatnonzero((geom["height"] < hw[0]) | (geom["width"] < hw[1]))
        if too_small.size:
            i = int(too_small[0])
            raise ArgumentError(
                f"--size {hw[0]}x{hw[1]} does not fit {too_small.size} of the {len(names)} tiles, e.g. "
                f"{names[i]} ({geom['height'][i]}x{geom['width'][i]}); a reduced size is part of the tile"
            )
    existing = [n for n in names if Path(tile_location(root, year, n)).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"--out {out}: {len(existing)} of the {len(names)} tile directories exist, e.g. "
            f"{tile_location(root, year, existing[0])}; pass --overwrite to replace them"
        )
    console = make_console(stderr=True)
    with progress(console, f"synthetic tiles -> {out}", len(names), unit="tiles") as advance:
        for name in names:
            make_synthetic_tile(root, year, name, size=hw)
            advance(1)
    click.echo(f"{len(names)} tiles written under {root / str(year)}")
