"""Issue 18, item 3: `stac` publishes a release as a STAC Collection plus stac-geoparquet items, and it validates.

Core validation uses the official STAC 1.1.0 JSON schemas (item, collection, and the GeoJSON schemas they
reference) that pystac ships inside its wheel, offline. No installable package ships the projection
extension's schema, so its v2.0.0 field rules are checked with PROJ_FIELDS below, written here from the
extension's field table (not the published schema file). The `emb:` fields are checked against the
requirements of the proposed Embedding extension (no schema file of it is available offline).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import zarr
from pyproj import Transformer
from jsonschema import Draft7Validator
from pystac.extensions.projection import ProjectionExtension
from pystac.validation.local_validator import get_local_schema_cache
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from test_store import MODEL

from tessera_pipeline.errors import PublishError
from tessera_pipeline.grid import tile_geometry
from tessera_pipeline.publish.stac import (
    EMBEDDINGS_EXTENSION,
    PROJECTION_EXTENSION,
    ZoneMosaic,
    build_collection,
    read_items,
    zone_item,
)
from tessera_pipeline.store import TileStore, write_encoded_tile
from tessera_pipeline.store.checksums import array_sha256
from tessera_pipeline.store.manifest import build_manifest
from tessera_pipeline.store.releases import read_release, write_release

REPO = Path(__file__).resolve().parents[1]
YEAR = 2024
#: Two neighbours near Manchester and one tile in the southern hemisphere, each with its true CRS and transform.
TILES = ["grid_-1.55_53.25", "grid_-1.45_53.25", "grid_10.05_-3.95"]
STAC_SCHEMAS = "https://schemas.stacspec.org/v1.1.0"
#: The projection extension v2.0.0's fields (its README's table): proj:code a string "AUTHORITY:CODE" or null,
#: proj:shape [rows, cols] integers, proj:transform 6 or 9 numbers, proj:bbox 4 or 6 numbers.
PROJ_FIELDS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "proj:code": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9-]+:[A-Za-z0-9.-]+$"},
        "proj:shape": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 0}},
        "proj:transform": {"type": "array", "oneOf": [{"minItems": 6, "maxItems": 6}, {"minItems": 9, "maxItems": 9}],
                           "items": {"type": "number"}},
        "proj:bbox": {"type": "array", "oneOf": [{"minItems": 4, "maxItems": 4}, {"minItems": 6, "maxItems": 6}],
                      "items": {"type": "number"}},
    },
    "patternProperties": {"^(?!proj:)": {}},
    "additionalProperties": False,
}


def validator(kind: str) -> Draft7Validator:
    """A validator of the official STAC 1.1.0 `item` or `collection` schema, its references resolved offline."""
    cache = get_local_schema_cache()
    registry: Registry = Registry().with_resources(
        (url, Resource.from_contents(schema, default_specification=DRAFT7)) for url, schema in cache.items())
    return Draft7Validator(cache[f"{STAC_SCHEMAS}/{kind}-spec/json-schema/{kind}.json"], registry=registry)


def check_item(item: dict[str, Any], items: Draft7Validator) -> None:
    """Core STAC item schema, projection fields (properties and assets) and the emb: fields an item carries."""
    items.validate(item)
    Draft7Validator(PROJ_FIELDS).validate(item["properties"])
    for asset in item["assets"].values():
        Draft7Validator(PROJ_FIELDS).validate(asset)
    assert {PROJECTION_EXTENSION, EMBEDDINGS_EXTENSION} <= set(item["stac_extensions"])
    props = item["properties"]
    assert props["emb:type"] == "pixel" and props["emb:dimensions"] == 128 and props["data_type"] == "int8"
    assert props["emb:quantization"]["method"] and props["emb:quantization"]["original_dtype"] == "float32"


def make_store(url: str) -> TileStore:
    """Three committed tiles with their true geometry (small arrays: only the markers matter here), one release."""
    for i, tile in enumerate(TILES):
        g = tile_geometry(tile)
        emb, scales = patterned(i)
        write_encoded_tile(url, YEAR, tile, emb, scales, epsg=g.epsg, transform=g.transform, model_attrs=MODEL,
                           provenance={"model_version": "1.1", "checkpoint_sha256": "ab" * 32, "precision": "bf16",
                                       "device_kind": "cpu", "data_source": "mpc"})
    store = TileStore(url)
    write_release(store, "r1", build_manifest(store, YEAR), settle_s=0)
    return store


def patterned(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small int8 embeddings and scales, distinct per seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(-127, 128, (12, 9, 128), dtype=np.int8), rng.uniform(0.01, 0.02, (12, 9)).astype(np.float32)


def run_stac(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "tessera_pipeline.cli", "stac", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_stac_of_a_release_validates_and_matches_its_rows(tmp_path: Path) -> None:
    url = str(tmp_path / "store.zarr")
    store = make_store(url)
    zones_url = str(tmp_path / "zones.zarr")
    zroot = zarr.open_group(zones_url, mode="w")
    zroot.create_group("utm30", attributes={"spatial:transform": [10.0, 0.0, 300000.0, 0.0, -10.0, 6000000.0],
                                            "spatial:shape": [40960, 40960], "proj:code": "EPSG:32630"})
    zroot.create_group("utm32")  # no grid attributes: skipped with a warning
    out = tmp_path / "catalog"
    done = run_stac("--store", url, "--release", "r1", "--out", str(out), "--zones-store", zones_url, "--json",
                    "--license", "cc-by-4.0")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tiles"] == 3 and summary["zones"] == 1 and summary["collection_id"] == "tessera-1.1-r1"
    assert "utm32" in done.stderr and "spatial:transform" in done.stderr

    collection = json.loads((out / "collection.json").read_text())
    validator("collection").validate(collection)
    Draft7Validator(PROJ_FIELDS).validate({k: v for k, v in collection["summaries"].items() if k != "proj:code"})
    assert collection["emb:type"] == "pixel" and collection["emb:dimensions"] == 128
    assert collection["data_type"] == "int8" and collection["license"] == "CC-BY-4.0"
    rels = {link["rel"] for link in collection["links"]}
    assert {"emb:model", "emb:source-data", "license"} <= rels
    assert [x["href"] for x in collection["links"] if x["rel"] == "license"] == \
        ["https://spdx.org/licenses/CC-BY-4.0.html"]
    assert collection["extent"]["temporal"]["interval"] == [["2024-01-01T00:00:00Z", "2024-12-31T23:59:59Z"]]
    assert collection["summaries"]["proj:code"] == ["EPSG:32630", "EPSG:32732"]

    rows = {f"{r['year']}-{r['tile']}": r for r in read_release(store, "r1").to_pylist()}
    items = read_items(out / "items.parquet")
    assert sorted(i["id"] for i in items) == sorted(rows) and len(items) == 3
    meta = json.loads(pq.read_schema(out / "items.parquet").metadata[b"stac-geoparquet"])
    assert collection["id"] in meta["collections"]
    item_schema = validator("item")
    for item in items:
        check_item(item, item_schema)
        row = rows[item["id"]]
        props, asset = item["properties"], item["assets"]["zarr"]
        assert shapely.equals(shapely.geometry.shape(item["geometry"]), shapely.from_wkb(row["geometry"]))
        assert item["bbox"] == [row["bbox"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
        assert props["proj:code"] == f"EPSG:{row['epsg']}" and props["proj:shape"] == [row["height"], row["width"]]
        assert props["proj:transform"] == list(row["transform"])
        assert ProjectionExtension.ext(_pystac_item(item)).epsg == row["epsg"]
        assert instant(props["start_datetime"]) == instant("2024-01-01T00:00:00Z") and props["datetime"] is None
        assert instant(props["end_datetime"]) == instant("2024-12-31T23:59:59Z")
        assert instant(asset["created"]) == row["committed_at"]
        assert asset["tessera-pipeline:embeddings_sha256"] == row["embeddings_sha256"]
        assert asset["tessera-pipeline:scales_sha256"] == row["scales_sha256"]
        assert asset["href"] == f"{Path(url).resolve()}/{row['path']}" and asset["type"] == "application/vnd+zarr"
        assert props["emb:runtime_parameters"]["checkpoint_sha256"] == "ab" * 32
        assert props["emb:runtime_parameters"]["precision"] == "bf16"
    emb, scales = patterned(0)
    first = next(i for i in items if i["id"] == f"{YEAR}-{TILES[0]}")
    assert first["assets"]["zarr"]["tessera-pipeline:embeddings_sha256"] == array_sha256(emb)
    assert first["assets"]["zarr"]["tessera-pipeline:scales_sha256"] == array_sha256(scales)

    (zone,) = read_items(out / "zones.parquet")
    check_item(zone, item_schema)
    assert zone["id"] == "utm30" and zone["properties"]["proj:shape"] == [40960, 40960]
    assert zone["assets"]["zarr"]["href"] == f"{Path(zones_url).resolve()}/utm30"

    again = run_stac("--store", url, "--release", "r1", "--out", str(out), "--license", "CC-BY-4.0")
    assert again.returncode == 2 and again.stderr.count("error:") == 1 and "--overwrite" in again.stderr
    replaced = run_stac("--store", url, "--release", "r1", "--out", str(out), "--overwrite",
                        "--href-base", "https://example.org/emb.zarr", "--license", "other",
                        "--license-url", "https://example.org/terms.html")
    assert replaced.returncode == 0, replaced.stderr
    collection = json.loads((out / "collection.json").read_text())
    validator("collection").validate(collection)
    assert collection["license"] == "other"
    assert [x["href"] for x in collection["links"] if x["rel"] == "license"] == ["https://example.org/terms.html"]
    assert not (out / "zones.parquet").exists()
    hrefs = {i["assets"]["zarr"]["href"] for i in read_items(out / "items.parquet")}
    assert all(h.startswith("https://example.org/emb.zarr/2024/") for h in hrefs)
    missing = run_stac("--store", url, "--release", "nope", "--out", str(tmp_path / "c2"), "--license", "MIT")
    assert missing.returncode == 2 and "no release nope" in missing.stderr
    for license, says in ((["--license", "other"], "--license-url"), (["--license", "Tessera-1"], "SPDX"),
                          (["--license", "MIT OR CC0-1.0"], "one identifier")):
        refused = run_stac("--store", url, "--release", "r1", "--out", str(tmp_path / "c3"), *license)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert says in refused.stderr and not (tmp_path / "c3").exists(), refused.stderr


def instant(text: str) -> datetime:
    """An RFC 3339 timestamp (stac-geoparquet writes them back with microseconds)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _pystac_item(item: dict[str, Any]) -> Any:
    """The item as a pystac Item (its projection extension reads proj:code back)."""
    import pystac

    return pystac.Item.from_dict(item)


@pytest.mark.parametrize(("zone", "transform"), [
    (30, (10.0, 0.0, 300000.0, 0.0, -10.0, 6000000.0)),
    (33, (10.0, 0.0, 400000.0, 0.0, -10.0, -500000.0)),  # southern rows: negative canonical northings
    (60, (10.0, 0.0, 100000.0, 0.0, -10.0, 7000000.0)),  # its eastern columns lie across the antimeridian
])
def test_zone_item_is_valid_stac_with_the_zone_grid(zone: int, transform: tuple[float, ...]) -> None:
    shape = (81920, 65536)
    mosaic = ZoneMosaic(zone, (2023, 2024), 32600 + zone, transform, shape, f"s3://b/z.zarr/utm{zone:02d}")
    item = zone_item(mosaic, collection_id="c")
    check_item(item, validator("item"))
    west, south, east, north = item["bbox"]
    to_lonlat = Transformer.from_crs(32600 + zone, 4326, always_xy=True)
    top, bottom = transform[5], transform[5] - 10.0 * shape[0]
    assert north == pytest.approx(to_lonlat.transform(500000.0, top)[1], abs=0.05)
    corners = [to_lonlat.transform(x, bottom)[1] for x in (transform[2], transform[2] + 10.0 * shape[1])]
    assert south == pytest.approx(min(corners), abs=0.05)
    assert item["id"] == f"utm{zone:02d}" and item["properties"]["proj:code"] == f"EPSG:{32600 + zone}"
    assert item["properties"]["proj:transform"] == list(transform)
    assert item["properties"]["proj:shape"] == list(shape)
    assert item["properties"]["start_datetime"] == "2023-01-01T00:00:00Z"
    assert item["properties"]["end_datetime"] == "2024-12-31T23:59:59Z"
    assert (item["geometry"]["type"] == "MultiPolygon") == (zone == 60) == (west > east)


def test_an_empty_release_is_refused_with_its_name(tmp_path: Path) -> None:
    store = make_store(str(tmp_path / "store.zarr"))
    empty = read_release(store, "r1").slice(0, 0)
    with pytest.raises(PublishError, match="release r1 names no tile"):
        build_collection(empty, collection_id="c", store_url=store.url, root={}, release_name="r1", license="MIT")
