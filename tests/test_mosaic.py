"""`mosaic`: our tiles as geotessera's zone store. geotessera 0.11.0's own reader gives our reader's values at every
point (seams, overlaps and a southern tile included); a reprocessed tile rewrites only its shards; a killed build,
run again, gives the same bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from read_support import (SOUTH, YEAR, edge_points, points, south_landmask, south_points, write_block,
                          write_south)
from tessera_pipeline.publish.mosaic_run import STATE_SUFFIX, run_mosaic
from tessera_pipeline.read import open_reader

pytestmark = pytest.mark.slow
geotessera_store = pytest.importorskip("geotessera.store", reason="geotessera 0.11.0 (make install) reads zone stores")
#: Our statuses as geotessera's probe reports the same pixel (its NaN is "water", its +inf "nodata").
AS_GEOTESSERA = {"valid": "valid", "water": "water", "no-observations": "water", "pending": "nodata"}


def _objects(root: Path) -> dict[str, str]:
    """sha256 of every file under a folder, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module's in-process mosaics (each would otherwise start and stop its own)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, local_ray: None) -> tuple[Path, Path]:
    """Our store (the 3 x 3 block, one tile pending, and a southern tile) and its zone store, built once."""
    root = tmp_path_factory.mktemp("mosaic")
    store = write_block(str(root / "store.zarr"), compressible=True)
    write_south(store.url)
    report = run_mosaic(store.url, YEAR, str(root / "zones.zarr"), landmask=south_landmask())
    assert report.zones == [19, 33] and report.shards == len(report.rebuilt) == 3
    return root / "store.zarr", root / "zones.zarr"


def test_geotessera_reads_our_values_at_every_point(built: tuple[Path, Path]) -> None:
    store, zones = built
    pts = np.concatenate([points(8000, seed=11), south_points(2000)])
    ours = open_reader(str(store), landmask=south_landmask()).sample_points(pts, YEAR)
    theirs = geotessera_store.GeoTesseraZarr(str(zones)).sample_points([tuple(p) for p in pts], YEAR, search_px=0)
    np.testing.assert_array_equal(theirs, ours.embeddings)
    counts = ours.counts()
    assert min(counts["valid"], counts["water"], counts["no-observations"], counts["pending"]) > 50, counts
    assert (ours.tile == SOUTH).sum() > 500


def test_geotessera_probe_agrees_with_ours(built: tuple[Path, Path]) -> None:
    store, zones = built
    pts = np.concatenate([points(3000, seed=12), south_points(500, seed=5)])
    ours = open_reader(str(store), landmask=south_landmask()).sample_points(pts, YEAR)
    reader = geotessera_store.GeoTesseraZarr(str(zones))
    for status in AS_GEOTESSERA:
        for i in np.flatnonzero(ours.status == status)[:15]:
            assert reader.probe(pts[i, 0], pts[i, 1], YEAR, search_px=0)[1] == AS_GEOTESSERA[status], (status, pts[i])


def test_points_on_pixel_edges_read_what_geotessera_reads(built: tuple[Path, Path]) -> None:
    """A point exactly on a 10 m pixel edge: geotessera breaks the tie west / north, and so does our reader."""
    store, zones = built
    pts = edge_points(1500)
    ours = open_reader(str(store), landmask=south_landmask()).sample_points(pts, YEAR)
    theirs = geotessera_store.GeoTesseraZarr(str(zones)).sample_points([tuple(p) for p in pts], YEAR, search_px=0)
    np.testing.assert_array_equal(theirs, ours.embeddings)
    assert (ours.status == "valid").sum() > 500


def test_a_point_at_sea_reads_water_where_its_shard_was_written_and_nodata_where_none_was(
        built: tuple[Path, Path]) -> None:
    """Sea inside a zone grid: our reader says `water` (the land mask). geotessera reads the zone store's scale:
    NaN (`water`) in a shard a tile touches, the +inf fill (`nodata`) in a shard no tile touches, which is never
    written, as geotessera's own writer leaves it (docs/reading.md says so)."""
    store, zones = built
    in_written = [(17.5, 79.3), (17.85, 79.45), (-70.65, -33.6)]  # sea beside the tiles, in their shards
    unwritten = [(15.0, 75.0), (13.0, 70.0), (-70.0, -35.0)]  # open sea, far from any tile, inside the zone grids
    ours = open_reader(str(store), landmask=south_landmask()).sample_points(in_written + unwritten, YEAR)
    assert list(ours.status) == ["water"] * 6
    reader = geotessera_store.GeoTesseraZarr(str(zones))
    assert [reader.probe(lon, lat, YEAR, search_px=0)[1] for lon, lat in in_written] == ["water"] * 3
    assert [reader.probe(lon, lat, YEAR, search_px=0)[1] for lon, lat in unwritten] == ["nodata"] * 3


def test_a_reprocess_rewrites_only_its_shards_and_a_killed_build_resumes_to_the_same_bytes(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    """The southern tile reprocessed: `mosaic` again rewrites only its zone's shard. Then a build from scratch of
    the updated store, SIGKILLed after its first shard and run again, gives exactly the bytes of both the
    incremental update and the first, uninterrupted build (for the shards the reprocess did not touch)."""
    store_dir, zones_dir = built
    for name in ("store.zarr", "zones.zarr", f"zones.zarr{STATE_SUFFIX}"):
        shutil.copytree(store_dir.parent / name, tmp_path / name)
    before = _objects(tmp_path / "zones.zarr")
    write_south(str(tmp_path / "store.zarr"), seed=99)
    report = run_mosaic(str(tmp_path / "store.zarr"), YEAR, str(tmp_path / "zones.zarr"), landmask=south_landmask())
    assert len(report.rebuilt) == 1 and "utm19" in report.rebuilt[0]
    updated = _objects(tmp_path / "zones.zarr")
    changed = {k for k in updated if updated[k] != before.get(k)}
    assert any(k.startswith("utm19/embeddings/c/") for k in changed), changed
    assert all(k.startswith("utm19/") or k.endswith("zarr.json") for k in changed), changed

    out = tmp_path / "scratch.zarr"
    mask = south_landmask()
    iy, ix = np.nonzero(mask.grid)
    (tmp_path / "land.csv").write_text("tile\n" + "".join(f"grid_{x / 10 - 180 + 0.05:.2f}_{y / 10 - 90 + 0.05:.2f}\n"
                                                          for x, y in zip(ix, iy)))
    args = [sys.executable, "-m", "tessera_pipeline.cli", "mosaic", "--store", str(tmp_path / "store.zarr"), "--year",
            str(YEAR), "--out", str(out), "--landmask", str(tmp_path / "land.csv"), "--local-cpus", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    state = Path(f"{out}{STATE_SUFFIX}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(state.rglob("*.json")) and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= len(list(state.rglob("*.json"))) < 3, "killed after its first shard, before its last"
    done = subprocess.run([*args[:-1], "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    scratch, first = _objects(out), _objects(zones_dir)
    shards = [k for k in scratch if "/c/" in k]
    assert shards and all(scratch[k] == updated[k] for k in shards)
    assert all(scratch[k] == first[k] for k in shards if k.startswith("utm33/"))


def test_mosaic_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    """A bad zone list, or a store that is not there, costs one `error:` line, before Ray starts."""
    base = [sys.executable, "-m", "tessera_pipeline.cli", "mosaic", "--year", str(YEAR), "--out", str(tmp_path / "z.zarr")]
    bad_zone = subprocess.run([*base, "--store", str(tmp_path), "--zones", "30,61"], capture_output=True, text=True)
    assert bad_zone.returncode == 2 and "UTM zones are 1 to 60" in bad_zone.stderr
    assert len(bad_zone.stderr.strip().splitlines()) == 1
    missing = subprocess.run([*base, "--store", str(tmp_path / "nothing.zarr")], capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stderr.startswith("error:") and "no store at" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "z.zarr").exists()


def test_a_damaged_tile_left_out_of_a_mosaic_is_listed_and_fails_it(tmp_path: Path) -> None:
    """A tile whose scales fail their checksum, and one whose embeddings object is garbage: `mosaic --release` (and
    without a release) builds the rest, lists them (`left_out` in --json) and exits 1; no traceback on stderr."""
    import json

    from tessera_pipeline.bench.store_bench import MODEL_ATTRS
    from tessera_pipeline.grid import tile_geometry
    from tessera_pipeline.read.lattice import unproject
    from tessera_pipeline.store import TileStore
    from tessera_pipeline.store.manifest import build_manifest
    from tessera_pipeline.store.releases import write_release

    good, damaged, garbled = "grid_15.05_40.05", "grid_15.15_40.05", "grid_15.25_40.05"
    store = TileStore(str(tmp_path / "store.zarr"))
    store.create(MODEL_ATTRS)
    for i, tile in enumerate((good, damaged, garbled)):
        g = tile_geometry(tile)
        store.write_tile(YEAR, tile, np.full((16, 16, 128), 127 - i, np.int8), np.full((16, 16), 0.01 * (i + 1), np.float32),
                         epsg=g.epsg, transform=g.transform, provenance={})
    write_release(store, "r1", build_manifest(store, YEAR), settle_s=0)
    objects = {t: next((tmp_path / "store.zarr" / str(YEAR) / t).glob("v*/scales/c/0/0")) for t in (good, damaged)}
    objects[damaged].write_bytes(objects[good].read_bytes())  # a readable object holding other values
    next((tmp_path / "store.zarr" / str(YEAR) / garbled).glob("v*/embeddings/c/0/0/0")).write_bytes(os.urandom(5000))
    (tmp_path / "land.csv").write_text(f"tile\n{good}\n{damaged}\n{garbled}\n")
    args = [sys.executable, "-m", "tessera_pipeline.cli", "mosaic", "--store", str(tmp_path / "store.zarr"), "--year",
            str(YEAR), "--out", str(tmp_path / "zones.zarr"), "--landmask", str(tmp_path / "land.csv"),
            "--local-cpus", "1"]
    released = subprocess.run([*args, "--release", "r1", "--json"], capture_output=True, text=True, timeout=600)
    assert released.returncode == 1, released.stderr
    assert "Traceback" not in released.stderr and all(len(line) < 400 for line in released.stderr.splitlines())
    left = json.loads(released.stdout)["left_out"]
    assert [x["tile"] for x in left] == [damaged, garbled], left
    assert "sha256" in left[0]["cause"] and "embeddings" in left[1]["cause"], left
    assert damaged in released.stderr and garbled in released.stderr
    theirs = geotessera_store.GeoTesseraZarr(str(tmp_path / "zones.zarr"))
    for tile, status in ((good, "valid"), (damaged, "nodata"), (garbled, "nodata")):
        g = tile_geometry(tile)
        lon, lat = unproject(np.array([g.transform[2] + 85.0]), np.array([g.transform[5] - 85.0]), 33)  # pixel (8, 8)
        assert theirs.probe(float(lon[0]), float(lat[0]), YEAR, search_px=0)[1] == status, tile
    current = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert current.returncode == 1 and damaged in current.stderr and "left out" in current.stderr, current.stderr


def test_a_tile_outside_an_existing_zone_grid_is_refused_by_name(built: tuple[Path, Path], tmp_path: Path) -> None:
    """A zone grid is laid over its land mask's tiles once; a later tile outside it is an error naming the tile,
    never a shard written at a wrong place."""
    from tessera_pipeline.errors import PublishError
    from tessera_pipeline.grid import tile_geometry
    from tessera_pipeline.store import TileStore

    store_dir, _zones = built
    shutil.copytree(store_dir.parent / "store.zarr", tmp_path / "store.zarr")
    shutil.copytree(store_dir.parent / "zones.zarr", tmp_path / "zones.zarr")
    outside = "grid_15.05_40.05"
    g = tile_geometry(outside)
    TileStore(str(tmp_path / "store.zarr")).write_tile(YEAR, outside, np.full((16, 16, 128), 127, np.int8),
                                                         np.full((16, 16), 0.01, np.float32), epsg=g.epsg,
                                                         transform=g.transform, provenance={})
    with pytest.raises(PublishError, match=outside):
        run_mosaic(str(tmp_path / "store.zarr"), YEAR, str(tmp_path / "zones.zarr"), zones=[33],
                   landmask=south_landmask())


def test_years_are_only_appended_to_a_zone_time_axis(tmp_path: Path) -> None:
    """geotessera's rule: a later year grows the axis; an earlier one is refused, never appended out of order."""
    import zarr

    from tessera_pipeline.errors import PublishError
    from tessera_pipeline.publish import zone_store
    from tessera_pipeline.read.lattice import ZoneGrid

    root = zarr.open_group(str(tmp_path / "zones.zarr"), mode="w-", zarr_format=3)
    zone_store.create_zone(root, ZoneGrid(zone=33, origin_x=500000.0, origin_y=8840000.0, width=64, height=64), [YEAR])
    group = zarr.open_group(str(tmp_path / "zones.zarr"), mode="r+", use_consolidated=False)["utm33"]  # as mosaic opens it
    with pytest.raises(PublishError, match=f"cannot add {YEAR - 1} to a time axis ending at {YEAR}"):
        zone_store.add_year(group, YEAR - 1)
    assert zone_store.add_year(group, YEAR) == 0
    assert zone_store.add_year(group, YEAR + 1) == 1
    assert list(group["time"][:]) == [YEAR, YEAR + 1]
    assert group["embeddings"].shape[0] == group["scales"].shape[0] == 2
