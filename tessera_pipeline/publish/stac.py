"""STAC for a release: one Collection (JSON), one Item per tile and one per zone mosaic, items as stac-geoparquet.

A year is ~1.6 M tiles, so items are rows of one Parquet file (the stac-geoparquet spec), not JSON
files. Every field, and how the output was validated: docs/reading.md, "Publishing a year: STAC".
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tessera_pipeline.errors import PublishError
from tessera_pipeline.publish.stac_license import license_fields
from tessera_pipeline.publish.stac_parquet import CHUNK_ITEMS, read_items, write_items  # noqa: F401 (read_items: API)
from tessera_pipeline.store.records import PREFIX, modernised, own

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

STAC_VERSION = "1.1.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
#: The "Embedding" extension (prefix `emb:`, a proposal from the 2026 CNG embeddings sprint).
EMBEDDINGS_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
EXTENSIONS = [PROJECTION_EXTENSION, EMBEDDINGS_EXTENSION]
ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
#: Prefix of the fields no extension defines (tile name, version, zone, array checksums): ours, as in the store.
OWN = PREFIX
GSD_M = 10.0
#: Per-pixel symmetric int8: value = embeddings.astype(float32) * scales[..., None] (formats.md section 2).
QUANTIZATION: dict[str, Any] = {
    "method": "per_pixel_scale",
    "original_dtype": "float32",
    "quantized_dtype": "int8",
    "scale_array": "scales",
    "dequantise": "embeddings.astype(float32) * scales[..., None]",
}
#: Release columns copied into each tile item's `emb:runtime_parameters` (absent values left out).
RUNTIME_COLUMNS = ("model_version", "checkpoint_sha256", "data_source", "precision", "hardware_class",
                   "device_kind", "pipeline_version")
#: The model each version names, as geotessera's `geoemb:model` does.
MODEL_URLS = {"v1.0": "https://geotessera.org/model/1.0", "v1.1": "https://geotessera.org/model/1.1"}
#: Source collections by the store's data source (v1.1's normalisation set); other values: Copernicus.
SOURCE_DATA = {
    "mpc": ["https://planetarycomputer.microsoft.com/api/stac/v1/collections/sentinel-2-l2a",
            "https://planetarycomputer.microsoft.com/api/stac/v1/collections/sentinel-1-rtc"],
    "": ["https://stac.dataspace.copernicus.eu/v1/collections/sentinel-2-l2a",
         "https://stac.dataspace.copernicus.eu/v1/collections/sentinel-1-grd"],
}
ZONE_GROUP = re.compile(r"^utm(\d{2})$")
COLLECTION_FILE = "collection.json"
ITEMS_FILE = "items.parquet"
ZONES_FILE = "zones.parquet"


@dataclass(frozen=True)
class ZoneMosaic:
    """One zone group of a mosaic store (geotessera's `utm{zone:02d}`): canonical EPSG:326zz, grid and href."""

    zone: int
    years: tuple[int, ...]
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]
    href: str

    @property
    def group(self) -> str:
        """The group's name in the zone store."""
        return f"utm{self.zone:02d}"


def year_interval(first: int, last: int) -> tuple[str, str]:
    """The first instant of `first` and the last second of `last`, RFC 3339 UTC (an annual product's range)."""
    return f"{first:04d}-01-01T00:00:00Z", f"{last:04d}-12-31T23:59:59Z"


def _rfc3339(value: datetime | str | None) -> str | None:
    """A timestamp as RFC 3339 with a Z (None stays None)."""
    if value is None or isinstance(value, str):
        return value
    return value.isoformat().replace("+00:00", "Z")


def _href(base: str, path: str) -> str:
    """`path` under a store URL (a local path becomes absolute)."""
    if "://" not in base:
        base = str(Path(base).resolve())
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def item_id(year: int, tile: str) -> str:
    """A tile item's id: `{year}-{tile}`, unique in a release."""
    return f"{year}-{tile}"


def model_of(root: Mapping[str, Any]) -> dict[str, Any]:
    """The store root's model provenance (model version, checkpoint, dimensions, data source), either prefix."""
    model = modernised(root).get(own("model"))
    return dict(model) if isinstance(model, Mapping) else {}


def _links(root: Mapping[str, Any], model: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Collection's `emb:model` and `emb:source-data` links (from the root's `geoemb:` attributes if present)."""
    version = str(model.get("model_version", ""))
    url = root.get("geoemb:model") or MODEL_URLS.get(version if version.startswith("v") else f"v{version}")
    links: list[dict[str, Any]] = []
    if url:
        links.append({"rel": "emb:model", "href": str(url), "title": f"Tessera {version}".strip()})
    else:
        log.warning("model version %r has no known model URL: the collection has no emb:model link", version)
    sources = root.get("geoemb:source_data") or SOURCE_DATA.get(str(model.get("data_source")), SOURCE_DATA[""])
    links += [{"rel": "emb:source-data", "href": str(s)} for s in sources]
    return links


def _emb_fields(dims: int) -> dict[str, Any]:
    """The `emb:` and common-metadata fields every item and the collection carry."""
    return {"emb:type": "pixel", "emb:dimensions": int(dims), "data_type": "int8", "gsd": GSD_M,
            "emb:temporal_resolution": "annual", "emb:quantization": dict(QUANTIZATION)}


def build_collection(release: pa.Table, *, collection_id: str, store_url: str, root: Mapping[str, Any],
                     release_name: str, license: str, license_url: str | None = None,
                     zones: bool = False) -> dict[str, Any]:
    """The Collection: extent of the release's tiles and years, license, model links, summaries and the items' files."""
    import pyarrow.compute as pc

    license, license_link = license_fields(license, license_url)
    if release.num_rows == 0:
        raise PublishError(f"release {release_name} names no tile: nothing to publish")
    model = model_of(root)
    bbox = release["bbox"]
    extent_box = [pc.min(pc.struct_field(bbox, "xmin")).as_py(), pc.min(pc.struct_field(bbox, "ymin")).as_py(),
                  pc.max(pc.struct_field(bbox, "xmax")).as_py(), pc.max(pc.struct_field(bbox, "ymax")).as_py()]
    years = sorted(set(release["year"].to_pylist()))
    start, end = year_interval(years[0], years[-1])
    dims = sorted(set(release["dims"].to_pylist()))
    if len(dims) != 1:
        raise PublishError(f"release {release_name} mixes embedding dimensions {dims}")
    summaries: dict[str, Any] = {
        "proj:code": [f"EPSG:{e}" for e in sorted(set(release["epsg"].to_pylist()))],
        f"{OWN}year": years,
    }
    for key in ("model_version", "checkpoint_sha256", "precision", "hardware_class"):
        values = sorted({v for v in release[key].to_pylist() if v is not None})
        if values:
            summaries[f"{OWN}{key}"] = values
    assets: dict[str, Any] = {
        "items": {"href": f"./{ITEMS_FILE}", "type": PARQUET_MEDIA_TYPE, "roles": ["stac-items"],
                  "title": "One STAC Item per tile (stac-geoparquet)"},
        "store": {"href": _href(store_url, ""), "type": ZARR_MEDIA_TYPE, "roles": ["data"],
                  "title": "The tile store (tessera-store/1, Zarr v3)",
                  "description": f"Each item's `zarr` asset is a version group of this store; the release "
                                 f"`_releases/{release_name}.parquet` pins those versions."},
    }
    if zones:
        assets["zones"] = {"href": f"./{ZONES_FILE}", "type": PARQUET_MEDIA_TYPE, "roles": ["stac-items"],
                           "title": "One STAC Item per UTM-zone mosaic group (stac-geoparquet)"}
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(EXTENSIONS),
        "id": collection_id,
        "title": f"Tessera embeddings {model.get('model_version', '')}, release {release_name}".replace("  ", " "),
        "description": (f"Tessera {model.get('model_version', '')} annual embeddings: 128-d int8 vectors with one "
                        f"float32 scale per 10 m pixel, one item per 0.1 degree tile (release {release_name}, "
                        f"{release.num_rows} tiles)."),
        "license": license,
        "keywords": ["embeddings", "tessera", "sentinel-2", "sentinel-1"],
        "extent": {"spatial": {"bbox": [extent_box]}, "temporal": {"interval": [[start, end]]}},
        "summaries": summaries,
        "links": [license_link, *_links(root, model)],
        "assets": assets,
        **_emb_fields(dims[0]),
        f"{OWN}release": release_name,
        f"{OWN}model": model,
    }


def tile_items(release: pa.Table, *, collection_id: str, store_url: str) -> Iterator[dict[str, Any]]:
    """One STAC Item (a JSON-ready dict) per release row, in row order."""
    import shapely

    columns = ["year", "tile", "version", "path", "bbox", "geometry", "epsg", "transform", "height", "width",
               "dims", "raw_bytes", "embeddings_sha256", "scales_sha256", "committed_at", *RUNTIME_COLUMNS]
    for batch in release.select(columns).to_batches(CHUNK_ITEMS):
        rows = batch.to_pylist()
        shapes = shapely.from_wkb([r["geometry"] for r in rows]) if rows else []
        for row, geom in zip(rows, shapes):
            yield _tile_item(row, shapely.geometry.mapping(geom), collection_id=collection_id, store_url=store_url)


def _tile_item(row: dict[str, Any], geometry: Mapping[str, Any], *, collection_id: str,
               store_url: str) -> dict[str, Any]:
    """One tile's Item from its release row and its cell polygon."""
    b = row["bbox"]
    start, end = year_interval(row["year"], row["year"])
    runtime = {k: row[k] for k in RUNTIME_COLUMNS if row.get(k) is not None}
    description = (f"Zarr v3 group of tile {row['tile']} ({row['year']}), version {row['version']}: arrays "
                   f"`embeddings` int8 (h, w, {row['dims']}) and `scales` float32 (h, w); dequantise as "
                   f"embeddings * scales[..., None], NaN scale = no data. The {OWN}*_sha256 fields are sha256 "
                   f"digests of the decoded arrays (C-order bytes), not of any file or object.")
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(EXTENSIONS),
        "id": item_id(row["year"], row["tile"]),
        "collection": collection_id,
        "geometry": _geometry_lists(geometry),
        "bbox": [b["xmin"], b["ymin"], b["xmax"], b["ymax"]],
        "properties": {
            "datetime": None,
            "start_datetime": start,
            "end_datetime": end,
            "proj:code": f"EPSG:{row['epsg']}",
            "proj:shape": [row["height"], row["width"]],
            "proj:transform": [float(v) for v in row["transform"]],
            **_emb_fields(row["dims"]),
            "emb:runtime_parameters": runtime,
            f"{OWN}tile": row["tile"],
            f"{OWN}year": row["year"],
            f"{OWN}version": row["version"],
        },
        "links": [{"rel": "collection", "href": f"./{COLLECTION_FILE}", "type": "application/json"}],
        "assets": {
            "zarr": {
                "href": _href(store_url, row["path"]),
                "type": ZARR_MEDIA_TYPE,
                "roles": ["data"],
                "title": f"Embeddings of {row['tile']} ({row['year']})",
                "description": description,
                "created": _rfc3339(row["committed_at"]),
                f"{OWN}embeddings_sha256": row["embeddings_sha256"],
                f"{OWN}scales_sha256": row["scales_sha256"],
                f"{OWN}raw_bytes": row["raw_bytes"],
            },
        },
    }


def _geometry_lists(geometry: Mapping[str, Any]) -> dict[str, Any]:
    """A GeoJSON geometry with lists for coordinates (shapely's mapping gives tuples)."""
    return json.loads(json.dumps(geometry))


def zone_item(zone: ZoneMosaic, *, collection_id: str, dims: int = 128) -> dict[str, Any]:
    """One zone mosaic group's Item: its lon/lat footprint, years, canonical CRS, grid and href."""
    from pyproj import Transformer

    h, w = zone.shape
    a, _, c, _, e, f = zone.transform
    xs, ys = (c, c + a * w), (f, f + e * h)
    west, south, east, north = Transformer.from_crs(zone.epsg, 4326, always_xy=True).transform_bounds(
        min(xs), min(ys), max(xs), max(ys), densify_pts=64)
    south, north = max(-90.0, south), min(90.0, north)
    if west > east:  # across the antimeridian: two boxes (GeoJSON's rule), a bbox with west > east (STAC's)
        parts = [[west, south, 180.0, north], [-180.0, south, east, north]]
        geometry = {"type": "MultiPolygon", "coordinates": [[_ring(*p)] for p in parts]}
    else:
        geometry = {"type": "Polygon", "coordinates": [_ring(west, south, east, north)]}
    start, end = year_interval(min(zone.years), max(zone.years))
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(EXTENSIONS),
        "id": zone.group,
        "collection": collection_id,
        "geometry": geometry,
        "bbox": [west, south, east, north],
        "properties": {
            "datetime": None,
            "start_datetime": start,
            "end_datetime": end,
            "proj:code": f"EPSG:{zone.epsg}",
            "proj:shape": [int(h), int(w)],
            "proj:transform": [float(v) for v in zone.transform],
            **_emb_fields(dims),
            f"{OWN}zone": zone.zone,
            f"{OWN}years": list(zone.years),
        },
        "links": [{"rel": "collection", "href": f"./{COLLECTION_FILE}", "type": "application/json"}],
        "assets": {
            "zarr": {
                "href": zone.href,
                "type": ZARR_MEDIA_TYPE,
                "roles": ["data"],
                "title": f"UTM zone {zone.zone} mosaic ({zone.group})",
                "description": ("geotessera's zone layout: `embeddings` int8 (time, band, y, x), `scales` float32 "
                                "(time, y, x); NaN scale = water, +inf = land not yet filled; southern rows at "
                                "negative northings of the canonical EPSG:326zz."),
            },
        },
    }


def _ring(west: float, south: float, east: float, north: float) -> list[list[float]]:
    """A box's exterior ring, counter-clockwise (RFC 7946)."""
    return [[west, south], [east, south], [east, north], [west, north], [west, south]]


def zone_mosaics(zones_url: str, default_years: Iterable[int]) -> list[ZoneMosaic]:
    """The `utm{zz}` groups of a zone store with their grid (`spatial:transform`, `spatial:shape`); a group
    without them is skipped with a warning. Years come from its `time` array, else `default_years`."""
    import zarr

    try:
        root = zarr.open_group(store=zones_url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise PublishError(f"no zone store at {zones_url}: {exc}") from exc
    fallback = tuple(sorted(set(default_years)))
    found: list[ZoneMosaic] = []
    for name in sorted(root.group_keys()):
        match = ZONE_GROUP.match(name)
        if not match:
            continue
        group = root[name]
        attrs = dict(group.attrs)
        transform, shape = attrs.get("spatial:transform"), attrs.get("spatial:shape")
        if not (isinstance(transform, list) and len(transform) == 6 and isinstance(shape, list) and len(shape) == 2):
            log.warning("zone group %s of %s has no spatial:transform / spatial:shape: no zone item", name, zones_url)
            continue
        zone = int(match.group(1))
        epsg = _epsg(attrs.get("proj:code"), 32600 + zone)
        years = fallback
        if "time" in group.array_keys():
            years = tuple(sorted({int(y) for y in group["time"][:].tolist()})) or fallback
        found.append(ZoneMosaic(zone, years, epsg, tuple(float(v) for v in transform),  # type: ignore[arg-type]
                                (int(shape[0]), int(shape[1])), _href(zones_url, name)))
    return found


def _epsg(code: Any, default: int) -> int:
    """The EPSG number of a `proj:code` such as "EPSG:32630" (the default when absent or not EPSG)."""
    if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].isdigit():
        return int(code[5:])
    return default


def publish(release: pa.Table, out: Path, *, store_url: str, root: Mapping[str, Any], release_name: str,
            collection_id: str, license: str, license_url: str | None = None, href_base: str | None = None,
            zones: list[ZoneMosaic] | None = None) -> dict[str, Any]:
    """Write `collection.json`, `items.parquet` (one item per tile) and, given zones, `zones.parquet` into `out`.

    Hrefs use `href_base` (the address readers use, e.g. https://) instead of `store_url` when given.
    Returns a summary (paths and counts).
    """
    base = href_base or store_url
    collection = build_collection(release, collection_id=collection_id, store_url=base, root=root,
                                  release_name=release_name, license=license, license_url=license_url,
                                  zones=zones is not None)
    n_tiles = write_items(tile_items(release, collection_id=collection_id, store_url=base), out / ITEMS_FILE,
                          collection=collection)
    n_zones = None
    if zones is not None:
        dims = int(collection["emb:dimensions"])
        n_zones = write_items((zone_item(z, collection_id=collection_id, dims=dims) for z in zones),
                              out / ZONES_FILE, collection=collection)
    (out / COLLECTION_FILE).write_text(json.dumps(collection, indent=2, sort_keys=False) + "\n")
    return {"collection": str(out / COLLECTION_FILE), "items": str(out / ITEMS_FILE), "tiles": n_tiles,
            "zones_file": None if zones is None else str(out / ZONES_FILE), "zones": n_zones,
            "collection_id": collection_id, "release": release_name}


def default_collection_id(root: Mapping[str, Any], release_name: str) -> str:
    """`tessera-{model_version}-{release}` (model version from the store root), e.g. tessera-v1.1-2024-v1."""
    version = str(model_of(root).get("model_version") or "embeddings")
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"tessera-{version}-{release_name}")

