"""`tessera-pipeline tiles`: list, count or describe the land tiles a region selects."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, TextIO

import click

from tessera_pipeline.cli.options import RegionRequest, region_options, select_tiles

if TYPE_CHECKING:
    from tessera_pipeline.grid import TileSet

#: Tiles whose geometry is computed per batch when writing JSON (bounds memory for --global --json).
_JSON_BATCH = 100_000


def write_json(tiles: TileSet, out: TextIO) -> None:
    """Write a JSON list of tile objects (name, lon, lat, epsg, height, width, transform), streamed in batches."""
    from tessera_pipeline.grid import geometries

    out.write("[")
    first = True
    for start in range(0, len(tiles), _JSON_BATCH):
        batch = geometries(tiles.ix[start : start + _JSON_BATCH], tiles.iy[start : start + _JSON_BATCH])
        for geom in batch:
            out.write(("\n" if first else ",\n") + json.dumps(geom.to_dict()))
            first = False
    out.write("\n]\n")


@click.command()
@region_options
@click.option("--count", "count_only", is_flag=True, help="Print only the number of tiles.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with each tile's CRS, size and transform.")
def tiles(region: RegionRequest, count_only: bool, as_json: bool) -> None:
    """List the land tiles of a region (tile names, one per line, unless --count or --json)."""
    if count_only and as_json:
        raise click.UsageError("choose --count (the number alone) or --json (the tile list), not both")
    selected = select_tiles(region)
    if count_only:
        click.echo(len(selected))
    elif as_json:
        write_json(selected, sys.stdout)
    else:
        sys.stdout.write("".join(f"{name}\n" for name in selected.names()))
