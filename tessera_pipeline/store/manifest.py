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
from tessera_pipeline.store.records import VersionRow, own

if TYPE_CHECKING:
    import pyarrow as pa

    from tessera_pipeline.store.zarr_store import TileStore

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "tessera-manifest/1"
#: Marker GETs per task of the parallel read (one task per thread would cost a future per marker).
MARKER_BATCH = 512
#: Markers read and parsed at a time: their raw bytes (~1.2 KB each) are dropped once parsed.
MARKER_CHUNK = 32_768
#: Bytes of marker JSON per block of Arrow's reader (blocks are parsed side by side).
JSON_BLOCK = 8 << 20
#: A version id (layout.new_version), for Arrow's regex match.
VERSION_PATTERN = r"^v\d{8}T\d{12}Z-[0-9a-f]{8}$"
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
    import pyarrow as pa

    backend = store.backend
    years = [layout.check_year(year)] if year is not None else listing.committed_years(backend)
    parts: list[pa.Table] = []
    left_out: list[LeftOut] = []
    for y in years:
        tiles = sorted(listing.committed(backend, y).tiles)
        found: list[pa.Table] = []
        for start in range(0, len(tiles), MARKER_CHUNK):
            chunk = tiles[start:start + MARKER_CHUNK]
            rows, bad = marker_table(y, chunk, _get_all(backend, [layout.marker_key(y, t) for t in chunk]))
            found.append(rows)
            left_out += bad
        whole, broken = _whole(backend, y, pa.concat_tables(found) if found else marker_table(y, [], [])[0])
        parts.append(whole)
        left_out += broken
    for item in left_out:
        log.warning("%s/%s left out of the manifest: %s", item.year, item.tile, item.problem)
    root = store.root_attrs() or {}
    rows = pa.concat_tables(parts) if parts else marker_table(0, [], [])[0]
    return Manifest(rows_table(rows, store.url, root.get(own("model"), {})), left_out, store.url)


def _get_all(backend: Backend, keys: list[str]) -> list[bytes | None]:
    """GET many small objects: on S3 in parallel batches (one task per batch, not a future per object); a local
    disk reads them one after another (threads only add lock traffic there)."""
    batches = [keys[i:i + MARKER_BATCH] for i in range(0, len(keys), MARKER_BATCH)]
    threads = listing.IO_THREADS if backend.concurrent_listing else 1
    got = listing.parallel_map(lambda ks: [backend.get(k) for k in ks], batches, threads=threads)
    return [raw for batch in got for raw in batch]


def _marker_reader_schema() -> pa.Schema:
    """The marker fields the manifest reads (everything else in a marker is ignored), plus the key's year and tile."""
    import pyarrow as pa

    text = pa.string()
    array = pa.struct([("dtype", text), ("sha256", text)])
    return pa.schema([
        ("format", text), ("version", text), ("path", text), ("committed_at", text), ("epsg", pa.int64()),
        ("transform", pa.list_(pa.float64())), ("shape", pa.list_(pa.int64())),
        ("arrays", pa.struct([(layout.EMBEDDINGS, array), (layout.SCALES, array)])),
        ("provenance", pa.struct([(k, text) for k in PROVENANCE_COLUMNS])),
    ])


def _parse_lines(raws: list[bytes]) -> pa.Table:
    """Markers parsed by Arrow's multithreaded JSON reader, one after another (markers are pretty-printed)."""
    import pyarrow.json as pj

    options = pj.ParseOptions(explicit_schema=_marker_reader_schema(), unexpected_field_behavior="ignore",
                              newlines_in_values=True)
    return pj.read_json(io.BytesIO(b"\n".join(raws)), read_options=pj.ReadOptions(block_size=JSON_BLOCK),
                        parse_options=options)


def marker_table(year: int, tiles: list[str], raws: list[bytes | None]) -> tuple[pa.Table, list[LeftOut]]:
    """The readable markers of these tiles as one table (with `year`, `tile` from their keys); unreadable ones
    left out. A marker deleted since the listing (None) is no longer committed and is skipped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kept = [(t, r) for t, r in zip(tiles, raws) if r is not None]
    names, bodies = [t for t, _ in kept], [r for _, r in kept]
    try:
        table = _parse_lines(bodies) if bodies else _marker_reader_schema().empty_table()
        ok = np.ones(len(bodies), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # one bad marker spoils its batch: find it marker by marker
        one = [_parse_one(b) for b in bodies]
        ok = np.array([t is not None for t in one], dtype=bool)
        good = [t for t in one if t is not None]
        table = pa.concat_tables(good) if good else _marker_reader_schema().empty_table()
    table = table.add_column(0, "tile", pa.array([n for n, k in zip(names, ok.tolist()) if k], pa.string()))
    table = table.add_column(0, "year", pa.array(np.full(table.num_rows, year), pa.int32()))
    valid = pc.fill_null(pc.and_(
        pc.and_(pc.equal(table["format"], layout.COMMIT_FORMAT), pc.match_substring_regex(table["version"], VERSION_PATTERN)),
        pc.and_(pc.is_valid(table["path"]), pc.equal(pc.list_value_length(table["shape"]), 3))), False)
    valid_np = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)
    bad_tiles = [n for n, k in zip(names, ok.tolist()) if not k]
    bad_tiles += [t for t, v in zip(table["tile"].to_pylist(), valid_np.tolist()) if not v]
    bad = [LeftOut(year, t, None, "unreadable commit marker") for t in sorted(bad_tiles)]
    return table.filter(pa.array(valid_np)), bad


def _parse_one(raw: bytes) -> pa.Table | None:
    """One marker as a one-row table (provenance values of other JSON types as text), or None when unreadable."""
    import pyarrow as pa

    try:
        return _parse_lines([raw])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        marker = json.loads(raw)
    except ValueError:
        return None
    prov = marker.get("provenance") if isinstance(marker, dict) else None
    if not isinstance(prov, dict):
        return None
    marker["provenance"] = {k: _text(prov.get(k)) for k in PROVENANCE_COLUMNS}
    try:
        return _parse_lines([json.dumps(marker).encode()])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _text(value: Any) -> str | None:
    """A provenance value as a text cell (JSON numbers and objects as their JSON text; null stays null)."""
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def _whole(backend: Backend, year: int, table: pa.Table) -> tuple[pa.Table, list[LeftOut]]:
    """Split marker rows into those whose version holds every object (listing.absent) and the rest.

    A tile that looks broken is looked at again on its own (marker GET, one listing of its version):
    a reprocess between the marker read and the check must not leave a whole tile out.
    """
    import pyarrow as pa

    paths = table["path"].to_pylist()
    keys = [f"{p}/{o}" for p in paths for o in layout.VERSION_OBJECTS]
    absent = listing.absent(backend, year, keys).reshape(len(paths), len(layout.VERSION_OBJECTS))
    suspects = np.flatnonzero(absent.any(axis=1))
    broken: list[LeftOut] = []
    redone: list[pa.Table] = []
    tiles = table["tile"].to_pylist()
    for i in suspects.tolist():
        tile = tiles[i]
        again, _ = marker_table(year, [tile], [backend.get(layout.marker_key(year, tile))])
        path = again["path"][0].as_py() if again.num_rows else paths[i]
        present = set(backend.list_keys(path))
        missing = [f"{path}/{o}" for o in layout.VERSION_OBJECTS if f"{path}/{o}" not in present]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            broken.append(LeftOut(year, tile, path.rsplit("/", 1)[-1], f"missing object {missing[0]}{more}"))
        elif again.num_rows:
            redone.append(again)
    keep = np.ones(len(paths), dtype=bool)
    keep[suspects] = False
    return pa.concat_tables([table.filter(pa.array(keep)), *redone]), broken


def tile_bounds(tiles: pa.Array) -> np.ndarray:
    """(west, south, east, north) in degrees of many tile names, shape (N, 4): the 0.1 degree cell."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tessera_pipeline.grid import HALF

    parts = pc.split_pattern(tiles, "_")
    centres = np.stack([pc.list_element(parts, i).cast(pa.float64()).to_numpy() for i in (1, 2)], axis=1)
    return np.round(np.concatenate([centres - HALF, centres + HALF], axis=1), 2).reshape(-1, 4)


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


def rows_table(markers: pa.Table, store_url: str, model: dict[str, Any]) -> pa.Table:
    """The manifest table from marker rows (`marker_table`), column by column, sorted by (year, tile)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import shapely

    markers = markers.take(pc.sort_indices(markers, [("year", "ascending"), ("tile", "ascending")]))
    bounds = tile_bounds(markers["tile"])
    shape = np.asarray(pc.list_flatten(markers["shape"]).to_numpy(), dtype=np.int64).reshape(-1, 3)
    height, width, dims = shape[:, 0], shape[:, 1], shape[:, 2]
    columns: dict[str, Any] = {
        "year": markers["year"],
        "tile": markers["tile"],
        "version": markers["version"],
        "path": markers["path"],
        "bbox": pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)], list(_BBOX)),
        "geometry": pa.array(shapely.to_wkb(shapely.box(*bounds.T)) if len(bounds) else [], pa.binary()),
        "epsg": markers["epsg"].cast(pa.int32()),
        "transform": markers["transform"].cast(pa.list_(pa.float64(), 6)),
        "height": pa.array(height, pa.int32()),
        "width": pa.array(width, pa.int32()),
        "dims": pa.array(dims, pa.int32()),
        "raw_bytes": pa.array(height * width * (dims + 4), pa.int64()),
        "embeddings_sha256": pc.struct_field(markers["arrays"], [layout.EMBEDDINGS, "sha256"]),
        "scales_sha256": pc.struct_field(markers["arrays"], [layout.SCALES, "sha256"]),
        **{key: pc.struct_field(markers["provenance"], [key]) for key in PROVENANCE_COLUMNS},
        "committed_at": markers["committed_at"].cast(pa.timestamp("us", "UTC")),
    }
    meta = {
        "geo": geo_metadata(bounds),
        own("manifest"): {"format": MANIFEST_FORMAT, "store": store_url, "model": model,
                             "created_at": datetime.now(timezone.utc).isoformat(), "tiles": int(markers.num_rows)},
    }
    table = pa.table(columns)
    return table.replace_schema_metadata({k: json.dumps(v, sort_keys=True) for k, v in meta.items()})


def read_manifest(data: bytes) -> pa.Table:
    """A manifest (or release) table from its Parquet bytes.

    Decoded on the calling thread: Arrow's thread pool, left running by a command that then fails at once, can
    abort the interpreter at exit ("terminate called without an active exception", exit 134)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data), use_threads=False)


def version_marker(row: dict[str, Any]) -> dict[str, Any]:
    """A manifest row as the part of a commit marker `TileStore.verify_named` checks (path, arrays)."""
    return VersionRow.parse(row, where="manifest row", tile=str(row.get("tile"))).version_marker()
