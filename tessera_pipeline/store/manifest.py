"""The manifest: one row per committed (year, tile), from the commit markers alone, as GeoParquet.

Markers are listed (O(tiles / 1000) requests), read in parallel batches, and checked against one
listing of each year's objects: a tile whose version lacks an object it must hold is left out and
reported, never listed. Columns and metadata are specified in docs/formats.md section 10.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera_pipeline.store import layout, listing
from tessera_pipeline.store.backend import Backend
from tessera_pipeline.store.layout import TileKey

if TYPE_CHECKING:
    import pyarrow as pa

    from tessera_pipeline.store.zarr_store import TileStore

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "tessera-manifest/1"
#: Marker GETs per task of the parallel read (one task per thread would cost a future per marker).
MARKER_BATCH = 512
#: Rows per Parquet row group: a reader filtering on (year, tile) reads one group of a global release.
ROW_GROUP = 16_384
#: Provenance keys copied into string columns of the same name (absent: null).
PROVENANCE_COLUMNS = ("model_version", "checkpoint_sha256", "data_source", "precision", "hardware_class",
                      "device_kind", "pipeline_version")
_BBOX = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class LeftOut:
    """A committed tile the manifest leaves out, and why (a missing object, an unreadable marker)."""

    year: int
    tile: str
    version: str | None
    problem: str

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class Manifest:
    """The manifest's rows (a pyarrow Table, sorted by year and tile) and the tiles left out."""

    table: pa.Table
    left_out: list[LeftOut]
    store_url: str

    def __len__(self) -> int:
        """Number of rows (tiles listed)."""
        return int(self.table.num_rows)

    def keys(self) -> list[TileKey]:
        """The (year, tile) of every row, in row order."""
        return [TileKey(int(y), str(t)) for y, t in zip(self.table["year"].to_pylist(), self.table["tile"].to_pylist())]

    def to_parquet(self) -> bytes:
        """The manifest as GeoParquet 1.1 bytes (zstd, row groups of ROW_GROUP rows)."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(self.table, buf, compression="zstd", row_group_size=ROW_GROUP)
        return buf.getvalue()


def build_manifest(store: TileStore, year: int | None = None) -> Manifest:
    """Rows for every committed tile of `year` (or of every year) whose version is whole; the rest reported."""
    backend = store.backend
    years = [layout.check_year(year)] if year is not None else listing.committed_years(backend)
    markers: list[dict[str, Any]] = []
    left_out: list[LeftOut] = []
    for y in years:
        tiles = sorted(listing.committed(backend, y).tiles)
        found, bad = _read_markers(backend, y, tiles)
        left_out += bad
        whole, broken = _whole(backend, y, found)
        markers += whole
        left_out += broken
    for item in left_out:
        log.warning("%s/%s left out of the manifest: %s", item.year, item.tile, item.problem)
    root = store.root_attrs() or {}
    return Manifest(rows_table(markers, store.url, root.get("tessera:model", {})), left_out, store.url)


def _read_markers(backend: Backend, year: int, tiles: list[str]) -> tuple[list[dict[str, Any]], list[LeftOut]]:
    """GET the tiles' markers in parallel batches; an unreadable one is left out, a vanished one skipped."""
    keys = [layout.marker_key(year, t) for t in tiles]
    batches = [keys[i:i + MARKER_BATCH] for i in range(0, len(keys), MARKER_BATCH)]
    raws = [raw for batch in listing.parallel_map(lambda ks: [backend.get(k) for k in ks], batches) for raw in batch]
    found: list[dict[str, Any]] = []
    bad: list[LeftOut] = []
    for tile, raw in zip(tiles, raws):
        if raw is None:
            continue  # deleted since the listing: no longer committed
        marker = _parse(raw)
        if marker is None:
            bad.append(LeftOut(year, tile, None, "unreadable commit marker"))
        else:
            found.append(marker)
    return found, bad


def _parse(raw: bytes) -> dict[str, Any] | None:
    """A commit marker's dict, or None when it is not a readable marker of this format naming a version."""
    try:
        marker = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(marker, dict) or marker.get("format") != layout.COMMIT_FORMAT:
        return None
    if not layout.is_version(str(marker.get("version"))) or not isinstance(marker.get("path"), str):
        return None
    return marker


def _whole(backend: Backend, year: int, markers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[LeftOut]]:
    """Split markers into those whose version holds every object (one listing of the year) and the rest.

    A tile that looks broken is looked at again on its own (marker GET, one listing of its version):
    a reprocess between the marker read and the year's listing must not leave a whole tile out.
    """
    present = listing.year_objects(backend, year)
    whole: list[dict[str, Any]] = []
    broken: list[LeftOut] = []
    for marker in markers:
        if all(f"{marker['path']}/{o}" in present for o in layout.VERSION_OBJECTS):
            whole.append(marker)
            continue
        again = backend.get(layout.marker_key(year, marker["tile"]))
        fresh = marker if again is None else (_parse(again) or marker)
        keys = set(backend.list_keys(fresh["path"]))
        missing = [f"{fresh['path']}/{o}" for o in layout.VERSION_OBJECTS if f"{fresh['path']}/{o}" not in keys]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            broken.append(LeftOut(year, str(marker["tile"]), str(fresh["version"]), f"missing object {missing[0]}{more}"))
        elif again is not None:
            whole.append(fresh)
    return whole, broken


def tile_bounds(tiles: list[str]) -> np.ndarray:
    """(west, south, east, north) in degrees of many tile names, shape (N, 4): the 0.1 degree cell."""
    from tessera_pipeline.grid import HALF

    centres = np.array([t[5:].rsplit("_", 1) for t in tiles], dtype=np.float64).reshape(-1, 2)
    return np.round(np.concatenate([centres - HALF, centres + HALF], axis=1), 2)


def geo_metadata(bounds: np.ndarray) -> dict[str, Any]:
    """GeoParquet 1.1 `geo` metadata: WKB polygons in OGC:CRS84, with the `bbox` struct column as covering."""
    from pyproj import CRS

    extent = [float(v) for v in (*bounds[:, :2].min(axis=0), *bounds[:, 2:].max(axis=0))] if len(bounds) else []
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": CRS.from_user_input("OGC:CRS84").to_json_dict(),
        "edges": "planar",
        "covering": {"bbox": {k: ["bbox", k] for k in _BBOX}},
    }
    if extent:
        column["bbox"] = extent
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def rows_table(markers: list[dict[str, Any]], store_url: str, model: dict[str, Any]) -> pa.Table:
    """The manifest table of parsed markers, column by column, sorted by (year, tile)."""
    import pyarrow as pa
    import shapely

    markers = sorted(markers, key=lambda m: (int(m["year"]), str(m["tile"])))
    tiles = [str(m["tile"]) for m in markers]
    bounds = tile_bounds(tiles)
    prov = [m.get("provenance") or {} for m in markers]
    shape = np.array([m["shape"] for m in markers], dtype=np.int64).reshape(-1, 3)
    height, width, dims = shape[:, 0], shape[:, 1], shape[:, 2]
    strings = pa.string()
    columns: dict[str, pa.Array] = {
        "year": pa.array([int(m["year"]) for m in markers], pa.int32()),
        "tile": pa.array(tiles, strings),
        "version": pa.array([str(m["version"]) for m in markers], strings),
        "path": pa.array([str(m["path"]) for m in markers], strings),
        "bbox": pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)], list(_BBOX)),
        "geometry": pa.array(shapely.to_wkb(shapely.box(*bounds.T)) if len(bounds) else [], pa.binary()),
        "epsg": pa.array([int(m["epsg"]) for m in markers], pa.int32()),
        "transform": pa.array([[float(v) for v in m["transform"]] for m in markers], pa.list_(pa.float64(), 6)),
        "height": pa.array(height, pa.int32()),
        "width": pa.array(width, pa.int32()),
        "dims": pa.array(dims, pa.int32()),
        "raw_bytes": pa.array(height * width * (dims + 4), pa.int64()),
        "embeddings_sha256": pa.array([m["arrays"][layout.EMBEDDINGS]["sha256"] for m in markers], strings),
        "scales_sha256": pa.array([m["arrays"][layout.SCALES]["sha256"] for m in markers], strings),
        **{key: pa.array([_text(p.get(key)) for p in prov], strings) for key in PROVENANCE_COLUMNS},
        "committed_at": pa.array([str(m["committed_at"]) for m in markers], strings).cast(pa.timestamp("us", "UTC")),
    }
    meta = {
        "geo": geo_metadata(bounds),
        "tessera:manifest": {"format": MANIFEST_FORMAT, "store": store_url, "model": model,
                             "created_at": datetime.now(timezone.utc).isoformat(), "tiles": len(markers)},
    }
    table = pa.table(columns)
    return table.replace_schema_metadata({k: json.dumps(v, sort_keys=True) for k, v in meta.items()})


def _text(value: Any) -> str | None:
    """A provenance value as a string column cell (None stays null)."""
    return None if value is None else str(value)


def read_manifest(data: bytes) -> pa.Table:
    """A manifest (or release) table from its Parquet bytes."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


def version_marker(row: dict[str, Any]) -> dict[str, Any]:
    """A manifest row as the part of a commit marker `TileStore.verify_named` checks (path, arrays)."""
    h, w, d = int(row["height"]), int(row["width"]), int(row["dims"])
    return {
        "path": row["path"],
        "version": row["version"],
        "arrays": {
            layout.EMBEDDINGS: {"dtype": "int8", "shape": [h, w, d], "sha256": row["embeddings_sha256"]},
            layout.SCALES: {"dtype": "float32", "shape": [h, w], "sha256": row["scales_sha256"]},
        },
    }
