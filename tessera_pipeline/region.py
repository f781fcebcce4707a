"""Turn what a user asks for (a box, a GeoJSON region, a tile list, the globe) into land tiles.

Every selector returns a `TileSet` intersected with a `LandMask`; selecting nothing raises
`EmptySelectionError`, never a silent empty run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

from tessera_pipeline.errors import EmptySelectionError, RegionError, RegionFileError
from tessera_pipeline.grid import CELLS_PER_DEGREE, N_LAT, N_LON, TileSet, cell_box_degrees
from tessera_pipeline.landmask import LandMask, read_tile_list

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]

#: Widest box (degrees of longitude) accepted without an explicit `allow_wide`: wider boxes are
#: nearly always W and E swapped, which with antimeridian wrapping selects most of the globe.
MAX_BBOX_WIDTH = 180.0


def _num(value: float) -> str:
    """A number as the user would type it (no trailing .0), with every digit needed to read it back exactly."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _fmt(values: tuple[float, ...]) -> str:
    """A box as the user would type it in --bbox: parsing the text gives back exactly these numbers."""
    return ",".join(_num(v) for v in values)


def bbox_width(bbox: BBox) -> float:
    """Longitude span of a box in degrees; W > E wraps across the antimeridian."""
    west, _south, east, _north = bbox
    return east - west if west <= east else east + 360.0 - west


def _refusal(bbox: BBox, *, allow_wide: bool = False) -> str | None:
    """Why `parse_bbox` refuses a box of four finite numbers (without hints), or None when it accepts it."""
    west, south, east, north = bbox
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        return "longitudes must be within [-180, 180]"
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        return "latitudes must be within [-90, 90]"
    if south > north:
        return f"south {_num(south)} is north of north {_num(north)}"
    if bbox_width(bbox) > MAX_BBOX_WIDTH and not allow_wide:
        return f"the box is {bbox_width(bbox):g} degrees wide"
    return None


def _accepted(bbox: BBox) -> bool:
    """True when `parse_bbox` accepts the box as typed (without --allow-wide-bbox)."""
    return _refusal(bbox) is None


def _hint(west: float, south: float, east: float, north: float) -> str:
    """A hint naming the box meant by the likeliest single mistake (S/N, then lon/lat swapped) if it is accepted."""
    if south > north and _accepted((west, north, east, south)):
        return f"; did you mean {_fmt((west, north, east, south))} (south and north swapped)?"
    if _accepted((south, west, north, east)):
        return (f"; did you swap longitude and latitude? --bbox is W,S,E,N (lon,lat,lon,lat): "
                f"{_fmt((south, west, north, east))}")
    return ""


def parse_bbox(text: str, *, allow_wide: bool = False) -> BBox:
    """Parse "W,S,E,N" in degrees; W > E crosses the antimeridian; wider than 180 degrees needs `allow_wide`."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise RegionError(f"--bbox needs four numbers W,S,E,N, got {text!r}")
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError as exc:
        raise RegionError(f"--bbox needs four numbers W,S,E,N, got {text!r}") from exc
    if not all(np.isfinite([west, south, east, north])):
        raise RegionError(f"--bbox values must be finite, got {text!r}")
    bbox = (west, south, east, north)
    why = _refusal(bbox, allow_wide=allow_wide)
    if why is None:
        return bbox
    if _refusal(bbox, allow_wide=True) is not None:
        raise RegionError(f"--bbox {why}, got {text!r}{_hint(*bbox)}")
    width = bbox_width(bbox)
    if west > east:
        meant = (east, south, west, north)
        why = f"W {_num(west)} > E {_num(east)} means crossing the antimeridian, a box {width:g} degrees wide"
        why += f"; did you mean {_fmt(meant)}?" if _accepted(meant) else "."
    else:
        why = f"the box is {width:g} degrees wide."
    raise RegionError(f"--bbox {text}: {why} A box wider than {MAX_BBOX_WIDTH:g} degrees needs --allow-wide-bbox "
                      "(or use --global)")


def _index_range(low: float, high: float, offset: float, n: int) -> np.ndarray:
    """Cell indices whose interiors overlap [low, high] (a degenerate range selects its cell)."""
    eps = 1e-9
    first = int(np.floor((low + offset) * CELLS_PER_DEGREE + eps))
    last = int(np.ceil((high + offset) * CELLS_PER_DEGREE - eps)) - 1
    last = max(last, first)
    return np.arange(max(first, 0), min(last, n - 1) + 1, dtype=np.int64)


def _bbox_indices(bbox: BBox) -> tuple[np.ndarray, np.ndarray]:
    """Column and row indices a lon/lat box overlaps; W > E wraps across 180."""
    west, south, east, north = bbox
    iy = _index_range(south, north, 90.0, N_LAT)
    if west <= east:
        ix = _index_range(west, east, 180.0, N_LON)
    else:
        ix = np.concatenate([_index_range(west, 180.0, 180.0, N_LON), _index_range(-180.0, east, 180.0, N_LON)])
    return ix, iy


def bbox_tiles(bbox: BBox) -> TileSet:
    """Every cell (land or not) whose interior overlaps the box."""
    ix, iy = _bbox_indices(bbox)
    gx, gy = np.meshgrid(ix, iy)
    return TileSet.from_indices(gx.ravel(), gy.ravel())


def _nonempty(tiles: TileSet, what: str, mask: LandMask) -> TileSet:
    """Return tiles, or raise EmptySelectionError naming the request and the mask."""
    if len(tiles) == 0:
        raise EmptySelectionError(f"{what} selects no land tile (land mask: {mask.source})")
    log.info("%s: %d land tiles", what, len(tiles))
    return tiles


def select_bbox(bbox: BBox, mask: LandMask) -> TileSet:
    """Land tiles overlapping a lon/lat box (read straight off the mask window, no candidate list)."""
    tiles = _bbox_land(bbox, mask)
    if len(tiles) == 0:
        west, south, east, north = bbox
        swapped = (south, west, north, east)
        if _accepted(swapped) and len(_bbox_land(swapped, mask)):
            raise EmptySelectionError(
                f"bbox {_fmt(bbox)} selects no land tile (land mask: {mask.source}); did you swap longitude and "
                f"latitude? --bbox is W,S,E,N (lon,lat,lon,lat), and {_fmt(swapped)} selects land"
            )
    return _nonempty(tiles, f"bbox {_fmt(bbox)}", mask)


def _bbox_land(bbox: BBox, mask: LandMask) -> TileSet:
    """Land tiles overlapping a box, read straight off the mask window."""
    ix_all, iy_all = _bbox_indices(bbox)
    wy, wx = np.nonzero(mask.grid[np.ix_(iy_all, ix_all)])
    return TileSet.from_indices(ix_all[wx], iy_all[wy])


def select_global(mask: LandMask) -> TileSet:
    """Every land tile."""
    return _nonempty(mask.tiles(), "--global", mask)


def select_tile_file(path: str | Path, mask: LandMask) -> TileSet:
    """The land tiles of a user's tile list (CSV/Parquet lon,lat or names, or a text file of names)."""
    tiles = read_tile_list(path)
    if len(tiles) == 0:
        raise EmptySelectionError(f"{path}: tile list is empty")
    land = _nonempty(mask.restrict(tiles), f"tile list {path}", mask)
    if len(land) < len(tiles):
        log.warning(
            "%d of the %d tiles in %s are not land under the land mask %s and are left out (--landmask none keeps them)",
            len(tiles) - len(land), len(tiles), path, mask.source,
        )
    return land


def _declared_crs(doc: dict[str, Any]) -> str | None:
    """The CRS a GeoJSON document declares in its (pre-RFC 7946) `crs` member, if any."""
    crs = doc.get("crs")
    if not crs:
        return None
    if isinstance(crs, dict):
        props = crs.get("properties") or {}
        name = props.get("name") or props.get("code")
        if name is not None:
            return str(name) if not isinstance(name, int) else f"EPSG:{name}"
    raise RegionFileError(f"unsupported GeoJSON crs member: {crs!r}")


def load_geojson(path: str | Path) -> shapely.Geometry:
    """Read a GeoJSON Polygon/MultiPolygon/Feature/FeatureCollection as one lon/lat geometry."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegionFileError(f"{path}: not readable GeoJSON ({exc})") from exc
    if not isinstance(doc, dict) or "type" not in doc:
        raise RegionFileError(f"{path}: not a GeoJSON object")
    if doc["type"] == "FeatureCollection":
        raw = [f.get("geometry") for f in doc.get("features", [])]
    elif doc["type"] == "Feature":
        raw = [doc.get("geometry")]
    else:
        raw = [doc]
    try:
        geoms = [shape(g) for g in raw if g]
    except (ValueError, KeyError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
        raise RegionFileError(f"{path}: invalid geometry ({exc})") from exc
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not polys:
        raise RegionFileError(f"{path}: no Polygon or MultiPolygon found")
    geom = shapely.union_all([shapely.make_valid(p) for p in polys])
    crs = _declared_crs(doc)
    if crs is not None and not _is_lonlat(crs):
        geom = _to_lonlat(geom, crs, path)
    return geom


def _is_lonlat(crs: str) -> bool:
    """True for CRS names meaning plain WGS84 lon/lat."""
    key = crs.upper().replace("::", ":")
    return key.endswith("CRS84") or key in ("EPSG:4326", "URN:OGC:DEF:CRS:EPSG:4326")


def _to_lonlat(geom: shapely.Geometry, crs: str, path: Path) -> shapely.Geometry:
    """Reproject a geometry from `crs` to lon/lat (always x=lon, y=lat)."""
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    try:
        transformer = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)
    except CRSError as exc:
        raise RegionFileError(f"{path}: unknown crs {crs!r} ({exc})") from exc
    densified = shapely.segmentize(geom, max_segment_length=_segment_length(geom))

    def project(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(densified, project)


def _segment_length(geom: shapely.Geometry) -> float:
    """Densify edges to ~1/200 of the extent so straight projected edges follow their true curve."""
    minx, miny, maxx, maxy = geom.bounds
    return max(max(maxx - minx, maxy - miny) / 200.0, 1e-9)


def select_geometry(geom: shapely.Geometry, mask: LandMask, *, what: str = "region") -> TileSet:
    """Land tiles whose interior overlaps a lon/lat geometry (vectorised shapely predicates)."""
    west, south, east, north = geom.bounds
    candidates = mask.restrict(bbox_tiles((max(west, -180), max(south, -90), min(east, 180), min(north, 90))))
    if len(candidates) == 0:
        raise EmptySelectionError(f"{what} selects no land tile (land mask: {mask.source})")
    boxes = shapely.box(*cell_box_degrees(candidates.ix, candidates.iy))
    shapely.prepare(geom)
    hit = shapely.intersects(geom, boxes) & ~shapely.touches(geom, boxes)
    tiles = TileSet(ix=candidates.ix[hit], iy=candidates.iy[hit])
    return _nonempty(tiles, what, mask)


def select_geojson(path: str | Path, mask: LandMask) -> TileSet:
    """Land tiles overlapping the polygons of a GeoJSON file (reprojected from a declared CRS)."""
    return select_geometry(load_geojson(path), mask, what=f"region file {path}")
