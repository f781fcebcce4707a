"""Issue 17, part 1: the manifest from commit markers, and releases that pin the versions they name."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import shapely
from click.testing import CliRunner, Result
from test_store import EPSG, MODEL, TILE, TRANSFORM, make_tile, store_url, version_dirs, write  # noqa: F401

from tessera_pipeline.cli.main import cli
from tessera_pipeline.errors import ReleaseError, ReleaseExistsError, ReleaseNotFoundError, StoreError
from tessera_pipeline.store import TileStore, layout, releases
from tessera_pipeline.store.checksums import array_sha256
from tessera_pipeline.store.manifest import build_manifest
from tessera_pipeline.store.pins import pinned
from tessera_pipeline.store.releases import drop_release, read_release, verify_release, write_release

TILES = ["grid_0.15_52.05", "grid_-1.55_53.25", "grid_10.05_-3.95"]


def invoke(*args: str) -> Result:
    """Run the CLI in this process."""
    return CliRunner().invoke(cli, list(args))


def one_line_error(result: Result, needle: str) -> None:
    """Exit code 2 and exactly one `error:` line holding `needle`."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output


def three_tiles(url: str) -> None:
    """Two years of tiles, with provenance the manifest copies."""
    for i, tile in enumerate(TILES):
        write(url, 2024, tile, i)
    write(url, 2023, TILES[0], 9)


def test_manifest_rows_equal_list_complete_and_are_geoparquet(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    three_tiles(url)
    store = TileStore(url)
    built = build_manifest(store)
    assert built.keys() == store.list_complete() and built.left_out == []
    assert build_manifest(store, 2024).keys() == store.list_complete(2024)

    out = tmp_path / "m.parquet"
    result = invoke("manifest", "--store", url, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "4 tile(s) in the manifest" in result.output
    table = pq.read_table(out)
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "OGC", "code": "CRS84"}
    rows = table.to_pylist()
    row = next(r for r in rows if r["year"] == 2024 and r["tile"] == TILE)
    marker = store.marker(2024, TILE)
    assert marker is not None
    emb, scales = make_tile(1)
    assert row["version"] == marker["version"] and row["path"] == marker["path"]
    assert row["embeddings_sha256"] == array_sha256(emb) and row["scales_sha256"] == array_sha256(scales)
    assert shapely.from_wkb(row["geometry"]).bounds == (-1.6, 53.2, -1.5, 53.3)
    assert row["bbox"] == {"xmin": -1.6, "ymin": 53.2, "xmax": -1.5, "ymax": 53.3}
    assert row["epsg"] == EPSG and tuple(row["transform"]) == TRANSFORM
    assert (row["height"], row["width"], row["dims"]) == tuple(marker["shape"])
    assert row["raw_bytes"] == emb.nbytes + scales.nbytes
    assert row["model_version"] == MODEL["model_version"] and row["checkpoint_sha256"] == MODEL["checkpoint_sha256"]
    assert row["precision"] == "bf16" and row["device_kind"] == "cpu" and row["hardware_class"] is None
    assert row["committed_at"].isoformat() == marker["committed_at"]
    again = invoke("manifest", "--store", url, "--out", str(out))
    one_line_error(again, "--overwrite")


def test_a_tile_with_a_deleted_scales_object_is_left_out_and_reported(store_url: str, tmp_path: Path) -> None:  # noqa: F811
    url = store_url
    three_tiles(url)
    store = TileStore(url)
    path = str((store.marker(2024, TILE) or {})["path"])
    store.backend.delete(f"{path}/scales/c/0/0")
    built = build_manifest(store)
    assert (2024, TILE) not in built.keys() and len(built) == 3
    (gone,) = built.left_out
    assert (gone.year, gone.tile) == (2024, TILE) and gone.problem == f"missing object {path}/scales/c/0/0"
    result = invoke("manifest", "--store", url, "--year", "2024", "--out", str(tmp_path / "m.parquet"), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["tiles"] == 2 and doc["left_out"][0]["tile"] == TILE
    assert TILE not in pq.read_table(tmp_path / "m.parquet")["tile"].to_pylist()


def test_unreadable_markers_are_left_out_and_odd_provenance_types_kept(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    three_tiles(url)
    store = TileStore(url)
    store.backend.put_atomic(layout.marker_key(2024, TILES[0]), b"{not json")
    odd = store.marker(2024, TILES[2]) or {}
    odd["provenance"]["precision"] = 16
    store.backend.put_atomic(layout.marker_key(2024, TILES[2]), json.dumps(odd, indent=1).encode())
    built = build_manifest(store, 2024)
    assert [(t.tile, t.problem) for t in built.left_out] == [(TILES[0], "unreadable commit marker")]
    assert built.keys() == [(2024, TILE), (2024, TILES[2])]
    assert built.table["precision"].to_pylist() == ["bf16", "16"]


def test_a_release_survives_reprocess_until_dropped(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(releases, "RELEASE_SETTLE_S", 0.0)
    three_tiles(store_url)
    store = TileStore(store_url, cleanup_grace_s=0)
    old = store.marker(2024, TILE) or {}
    made = invoke("manifest", "--store", store_url, "--release", "paper-2024")
    assert made.exit_code == 0, made.output
    assert store.backend.get(layout.release_key("paper-2024")) is not None

    write(store_url, 2024, TILE, 77)  # the reprocess of one tile: different data, a new version
    new = store.marker(2024, TILE) or {}
    assert new["version"] != old["version"]
    assert sorted(version_dirs(store, 2024, TILE)) == sorted([old["version"], new["version"]])
    checked = invoke("verify", "--store", store_url, "--release", "paper-2024", "--json")
    assert checked.exit_code == 0, checked.output
    doc = json.loads(checked.output)
    assert doc["checked"] == 4 and doc["failed"] == 0
    assert {t["version"] for t in doc["tiles"] if t["tile"] == TILE and t["year"] == 2024} == {old["version"]}
    row = next(r for r in read_release(store, "paper-2024").to_pylist() if r["tile"] == TILE and r["year"] == 2024)
    emb, _ = make_tile(1)
    assert row["embeddings_sha256"] == array_sha256(emb) != new["arrays"]["embeddings"]["sha256"]
    write(store_url, 2024, TILE, 78)  # a later commit's cleanup keeps it too
    assert old["version"] in version_dirs(store, 2024, TILE)

    dropped = drop_release(store, "paper-2024")
    assert dropped == [layout.version_key(2024, TILE, old["version"])]
    assert old["version"] not in version_dirs(store, 2024, TILE)
    assert pinned(store.backend, [old["path"]]) == set()
    with pytest.raises(ReleaseNotFoundError, match="paper-2024"):
        verify_release(store, "paper-2024")


def test_a_damaged_released_version_fails_verify_release(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    three_tiles(url)
    store = TileStore(url)
    write_release(store, "r1", build_manifest(store, 2024), settle_s=0)
    path = str((store.marker(2024, TILE) or {})["path"])
    store.backend.delete(f"{path}/embeddings/c/0/0/0")
    (bad,) = [r for r in verify_release(store, "r1") if not r.ok]
    assert bad.tile == TILE and bad.problems == (f"missing object {path}/embeddings/c/0/0/0",)
    result = invoke("verify", "--store", url, "--release", "r1")
    assert result.exit_code == 1 and f"FAILED 2024/{TILE}" in result.output


def test_releases_are_immutable_and_never_name_a_deleted_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "store")
    three_tiles(url)
    store = TileStore(url)
    built = build_manifest(store)
    write_release(store, "r1", built, settle_s=0)
    with pytest.raises(ReleaseExistsError, match="r1"):
        write_release(store, "r1", build_manifest(store), settle_s=0)
    monkeypatch.setattr(releases, "RELEASE_SETTLE_S", 0.0)
    one_line_error(invoke("manifest", "--store", url, "--release", "r1"), "release r1 exists")
    # a reprocess that listed _releases/ before a new release landed deletes a version it names
    marker = store.marker(2024, TILE) or {}
    racing = build_manifest(store)
    store.backend.delete_tree(marker["path"])
    with pytest.raises(ReleaseError, match=f"release r2: {marker['path']}/zarr.json was deleted"):
        write_release(store, "r2", racing, settle_s=0)
    assert store.backend.get(layout.release_key("r2")) is None


def test_bad_release_usage_is_one_line(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    write(url, 2024, TILE, 1)
    one_line_error(invoke("manifest", "--store", url), "choose an output")
    one_line_error(invoke("manifest", "--store", url, "--release", "../x"), "not a release name")
    one_line_error(invoke("manifest", "--store", url, "--drop-release", "nope"), "no release nope")
    one_line_error(invoke("manifest", "--store", url, "--drop-release", "a", "--release", "b"), "goes alone")
    one_line_error(invoke("manifest", "--store", str(tmp_path / "none"), "--release", "a"), "no store")
    one_line_error(invoke("manifest", "--store", url, "--out", "s3://b/m.parquet"), "local path")
    one_line_error(invoke("verify", "--store", url, "--release", "nope"), "no release nope")
    with pytest.raises(StoreError, match="not a release name"):
        layout.release_key("a/b")
