"""Click options shared by commands that select tiles: the region flags and the land-mask choice.

Usage in a command::

    @click.command()
    @region_options
    def export(region: RegionRequest, ...) -> None:
        tiles = select_tiles(region)          # a TileSet (vectorised), or
        names = region_tile_names(region)     # a plain list of tile names

The decorator collects `--bbox`, `--region-file`, `--tiles`, `--global` and `--landmask` into a single
keyword argument `region` (a frozen `RegionRequest`), so commands need not repeat five parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tessera_pipeline.errors import RegionError

if TYPE_CHECKING:
    from tessera_pipeline.grid import TileSet

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RegionRequest:
    """What the user asked for on the command line; exactly one selector when `given`."""

    bbox: str | None = None
    region_file: Path | None = None
    tiles_file: Path | None = None
    global_: bool = False
    landmask: str = "globe"
    allow_wide_bbox: bool = False

    @property
    def given(self) -> bool:
        """True when any selector (bbox, region file, tile list, global) was passed."""
        return bool(self.bbox or self.region_file or self.tiles_file or self.global_)


def region_options(func: F) -> F:
    """Add the region flags to a click command and pass them on as one `region: RegionRequest`."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        bbox: str | None,
        region_file: Path | None,
        tiles_file: Path | None,
        global_: bool,
        landmask: str,
        allow_wide_bbox: bool,
        **kwargs: Any,
    ) -> Any:
        kwargs["region"] = RegionRequest(
            bbox=bbox, region_file=region_file, tiles_file=tiles_file, global_=global_, landmask=landmask,
            allow_wide_bbox=allow_wide_bbox,
        )
        return func(*args, **kwargs)

    decorators = [
        click.option(
            "--bbox",
            metavar="W,S,E,N",
            default=None,
            help="Longitude/latitude box in degrees, longitudes first; W > E crosses the antimeridian.",
        ),
        click.option(
            "--allow-wide-bbox",
            is_flag=True,
            default=False,
            help="Accept a --bbox wider than 180 degrees (otherwise refused: usually W and E swapped).",
        ),
        click.option(
            "--region-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="GeoJSON Polygon/MultiPolygon/Feature(Collection); a declared `crs` is honoured.",
        ),
        click.option(
            "--tiles",
            "tiles_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Tile list: CSV/Parquet with lon,lat or name columns, or a text file of tile names.",
        ),
        click.option("--global", "global_", is_flag=True, default=False, help="Every land tile on Earth."),
        click.option(
            "--landmask",
            default="globe",
            show_default=True,
            metavar="globe|none|FILE",
            help="Which tiles count as land: the embedded GLOBE mask, none (every cell), "
            "a tile list (CSV/Parquet) or a GeoTIFF mask.",
        ),
    ]
    for decorate in reversed(decorators):
        wrapper = decorate(wrapper)
    return wrapper  # type: ignore[return-value]


def select_tiles(region: RegionRequest) -> TileSet:
    """Resolve a `RegionRequest` to the selected land tiles; raises RegionError if none or ambiguous."""
    from tessera_pipeline import landmask, region as region_mod

    chosen = [
        flag
        for flag, value in (
            ("--bbox", region.bbox),
            ("--region-file", region.region_file),
            ("--tiles", region.tiles_file),
            ("--global", region.global_),
        )
        if value
    ]
    if not chosen:
        raise RegionError("no region given: pass one of --bbox, --region-file, --tiles or --global")
    if len(chosen) > 1:
        raise RegionError(f"choose one region selector, got {' and '.join(chosen)}")
    if region.allow_wide_bbox and not region.bbox:
        raise RegionError("--allow-wide-bbox applies to --bbox only")
    bbox = region_mod.parse_bbox(region.bbox, allow_wide=region.allow_wide_bbox) if region.bbox else None
    mask = landmask.load_landmask(region.landmask)
    if bbox is not None:
        return region_mod.select_bbox(bbox, mask)
    if region.region_file:
        return region_mod.select_geojson(region.region_file, mask)
    if region.tiles_file:
        return region_mod.select_tile_file(region.tiles_file, mask)
    return region_mod.select_global(mask)


def region_tile_names(region: RegionRequest) -> list[str]:
    """Resolve a `RegionRequest` to a sorted list of tile names (see `select_tiles`)."""
    return select_tiles(region).names()


def retry_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--retry-failed` and `--reason`, shared by run and resume."""
    func = click.option("--reason", default=None, metavar="REASON",
                        help="With --retry-failed: retry only tiles whose reason starts with this "
                             "(e.g. bad-input:CorruptFileError, or bad-input).")(func)
    return click.option("--retry-failed", is_flag=True,
                        help="Also retry tiles that failed for good (bad input); tiles whose transient failures "
                             "used up their attempts are always retried.")(func)


def driver_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--takeover` and `--dashboard`, shared by run, resume and reprocess."""
    func = click.option("--dashboard", is_flag=True,
                        help="With a local cluster: start Ray's dashboard and print its URL "
                             "(needs tessera-pipeline[dashboard]).")(func)
    return click.option("--takeover", is_flag=True,
                        help="Take the store over from a driver whose lease has expired (it was killed or its "
                             "head node lost); a live driver is never taken over.")(func)
