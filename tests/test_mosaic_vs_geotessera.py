"""`mosaic` against geotessera 0.11.0's own zone-store writer, array for array.

The same tiles (three overlapping tiles of the Svalbard block in UTM 33N, with no-data patches in their overlaps,
and a southern-hemisphere tile in UTM 19S) go two ways: `run_mosaic` on our store; and our NPY export
(`export_tiles(npy_dir=...)`: int8 + scales NPY and a landmask GeoTIFF per tile, 1 where the scale is finite),
with a local `manifest.parquet` (the tiles, in (lon, lat) order) and `landmasks.parquet` (the cells of our land
mask), through geotessera's own `geotessera-registry zarr-init` + `zarr-fill`, entirely offline. Then:

- root attributes are equal but for `geoemb:build_version` and our `tessera-pipeline:` provenance; each zone
  group's attributes (`proj:code`, `spatial:` transform, bbox, shape, ...) are equal, as are the metadata of
  `embeddings`, `scales`, `x`, `y`, `time`, `band` (shape, chunks, shards, codecs, fill values, dimension names)
  and the values of `x`, `y`, `time`, `band`; both wrote the same shard objects;
- in every shard, over the bounding box of the tiles' windows plus a 96-pixel margin (geotessera writes nothing
  outside its tiles' windows; the windows are placed by geotessera's own `project_tile` and `_tile_pixel_offset`):
  wherever geotessera's scale is data (finite, positive, below 1.0) ours is data with the same scale; wherever a
  tile covers the pixel and we have no data, both scales are NaN; all 128 int8 embeddings are equal at every
  pixel of the box except those of the first exception below.

The only differences allowed, and asserted to be exactly these:

- the documented deliberate one (docs/reading.md): geotessera pastes each tile's whole window, no-data
  included, so in an overlap a later tile's empty pixels erase an earlier tile's data, which we keep. So pixels
  with data in ours and not in geotessera's must be covered by two or more tiles and NaN in geotessera's; the
  test asserts there are such pixels (with no-data pasted over data as geotessera does, `mosaic` gives exactly
  geotessera's arrays, and only this count fails);
- pixels no tile covers: geotessera leaves them +inf (it paints water only inside tiles, from each tile's
  landmask); we store NaN where the cell is not land and +inf on land nobody filled. There geotessera's scale
  must be +inf and ours NaN or +inf (embeddings 0 in both).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from read_support import SOUTH, YEAR, south_landmask, write_block, write_south
from tessera_pipeline.grid import parse_tile_name
from tessera_pipeline.publish.mosaic_run import run_mosaic
from tessera_pipeline.store.records import PREFIX
from tessera_pipeline.read.lattice import SHARD_SIZE
from tessera_pipeline.read.tiles import valid_scale
from tessera_pipeline.store.export import export_tiles

pytestmark = pytest.mark.slow
gt_zarr = pytest.importorskip("geotessera.zarr", reason="geotessera 0.11.0 (make install) writes zone stores")

#: Three tiles of the block in one shard (a 54-column and a 9-row overlap, with no-data patches in both) and a
#: southern tile: one shard per zone, each writer's dominant cost.
BLOCK_TILES = ["grid_17.75_79.65", "grid_17.75_79.75", "grid_17.85_79.65"]
TILES = [*BLOCK_TILES, SOUTH]
#: Pixels compared around the tiles' box in each shard.
MARGIN = 96
ARRAYS = ("embeddings", "scales", "x", "y", "time", "band")


def _mirror(store_url: str, out: Path) -> Path:
    """Our NPY export of TILES, with the registries geotessera's zarr-init/zarr-fill read: the manifest (tiles in
    (lon, lat) order, the order our mosaic overlays them) and the land cells of our land mask."""
    from tessera_pipeline.store import TileStore

    export_tiles(TileStore(store_url), YEAR, TILES, npy_dir=out)
    lon, lat = np.array(sorted(parse_tile_name(t) for t in TILES)).T
    pd.DataFrame({"year": YEAR, "lon": lon, "lat": lat, "grid_size": 1, "scales_size": 1}).to_parquet(
        out / "manifest.parquet")
    iy, ix = np.nonzero(south_landmask().grid)
    pd.DataFrame({"lon": np.round(ix / 10 - 180 + 0.05, 2), "lat": np.round(iy / 10 - 90 + 0.05, 2),
                  "file_size": 1}).to_parquet(out / "landmasks.parquet")
    return out


def _geotessera_build(mirror: Path, out: Path, cache: Path) -> subprocess.Popen:
    """geotessera-registry zarr-init then zarr-fill (one worker) on the mirror, started in the background."""
    version = ["--dataset-version", "v1.1"]  # the model our store's root names (geoemb:model .../model/1.1)
    runs = [["zarr-init", str(mirror), "--years", str(YEAR), "--output", str(out), *version],
            ["zarr-fill", str(mirror), str(out), "--year", str(YEAR), "--workers", "1", "--no-stretch-stats", *version]]
    # Both through the console script's entry point (`main`, which exits with the command's status), in one process.
    script = ("import sys\nfrom geotessera.registry_cli import main\n"
              f"for argv in {runs!r}:\n"
              "    sys.argv = ['geotessera-registry', *argv]\n"
              "    try:\n        main()\n"
              "    except SystemExit as e:\n        if e.code:\n            raise\n")
    # XDG_CACHE_HOME: geotessera's Registry makes its registry cache there; nothing is fetched (all local).
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _shards(zarr_dir: Path, zone: str) -> dict[str, set[str]]:
    """The shard objects of a zone's embeddings and scales."""
    return {name: {str(p.relative_to(zarr_dir / zone / name / "c")) for p in (zarr_dir / zone / name / "c").rglob("*")
                   if p.is_file()} for name in ("embeddings", "scales")}


def _windows(group: Any, zone: int, sr: int, sc: int) -> list[tuple[int, int, int, int]]:
    """Row/column windows (in the shard) of the tiles touching it, placed by geotessera's own code."""
    _a, _b, c, _d, _e, f = group.attrs["spatial:transform"]
    height, width = group.attrs["spatial:shape"]
    grid = gt_zarr.UnifiedZoneGrid(zone=zone, years=[YEAR], canonical_epsg=32600 + zone, origin_x=c, origin_y=f,
                                   width_px=width, height_px=height)
    out = []
    for tile in TILES:
        lon, lat = parse_tile_name(tile)
        if gt_zarr.tile_zone(lon) != zone:
            continue
        info = gt_zarr.project_tile(lon, lat, YEAR)
        row, col = gt_zarr._tile_pixel_offset(info, grid)
        r0, c0 = row - sr * SHARD_SIZE, col - sc * SHARD_SIZE
        r0, r1 = max(r0, 0), min(r0 + info.height, SHARD_SIZE)
        c0, c1 = max(c0, 0), min(c0 + info.width, SHARD_SIZE)
        if r0 < r1 and c0 < c1:
            out.append((r0, r1, c0, c1))
    return out


def test_mosaic_equals_geotessera_zarr_fill(tmp_path: Path) -> None:
    import zarr

    store = write_block(str(tmp_path / "store.zarr"), BLOCK_TILES, compressible=True)
    write_south(store.url)
    theirs_dir, ours_dir = tmp_path / "geotessera.zarr", tmp_path / "ours.zarr"
    proc = _geotessera_build(_mirror(store.url, tmp_path / "mirror"), theirs_dir, tmp_path / "cache")
    try:
        report = run_mosaic(store.url, YEAR, str(ours_dir), landmask=south_landmask(), local_cpus=2)
    finally:
        log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert report.zones == [19, 33] and report.shards == 2

    theirs, ours = zarr.open_group(str(theirs_dir), mode="r"), zarr.open_group(str(ours_dir), mode="r")
    mine = {k: v for k, v in ours.attrs.items() if not k.startswith(PREFIX)}
    assert {k: v for k, v in mine.items() if k != "geoemb:build_version"} == \
        {k: v for k, v in theirs.attrs.items() if k != "geoemb:build_version"}
    assert sorted(ours.group_keys()) == sorted(theirs.group_keys()) == ["utm19", "utm33"]

    totals = {"data": 0, "kept over erased": 0, "both no-data": 0, "uncovered": 0}
    for zone in (19, 33):
        name = f"utm{zone:02d}"
        g_t, g_o = theirs[name], ours[name]
        assert dict(g_o.attrs) == dict(g_t.attrs), name
        for array in ARRAYS:
            assert g_o[array].metadata.to_dict() == g_t[array].metadata.to_dict(), (name, array)
        for array in ("x", "y", "time", "band"):
            np.testing.assert_array_equal(g_o[array][:], g_t[array][:], err_msg=f"{name}/{array}")
        assert list(g_o["time"][:]) == [YEAR]
        shards = _shards(theirs_dir, name)
        assert _shards(ours_dir, name) == shards and shards["scales"], name

        for key in sorted(shards["scales"]):
            t, sr, sc = (int(v) for v in key.split("/"))
            windows = _windows(g_t, zone, sr, sc)
            # The tiles' box in the shard, with a margin (geotessera writes nothing outside its tiles' windows).
            r0, r1 = max(min(w[0] for w in windows) - MARGIN, 0), min(max(w[1] for w in windows) + MARGIN, SHARD_SIZE)
            c0, c1 = max(min(w[2] for w in windows) - MARGIN, 0), min(max(w[3] for w in windows) + MARGIN, SHARD_SIZE)
            cover = np.zeros((r1 - r0, c1 - c0), np.int8)
            for w0, w1, w2, w3 in windows:
                cover[w0 - r0:w1 - r0, w2 - c0:w3 - c0] += 1
            box = (slice(sr * SHARD_SIZE + r0, sr * SHARD_SIZE + r1), slice(sc * SHARD_SIZE + c0, sc * SHARD_SIZE + c1))
            s_t, s_o = g_t["scales"][t, box[0], box[1]], g_o["scales"][t, box[0], box[1]]
            v_t, v_o = valid_scale(s_t), valid_scale(s_o)
            # Where geotessera has data, so do we, with its scale.
            assert not (v_t & ~v_o).any(), (name, key)
            np.testing.assert_array_equal(s_o[v_t], s_t[v_t], err_msg=f"{name} {key} scales")
            # Data we keep that geotessera erased: only in overlaps, over its NaN.
            kept = v_o & ~v_t
            assert (cover[kept] >= 2).all() and np.isnan(s_t[kept]).all(), (name, key)
            # Covered, no data either side: NaN both. Uncovered: its +inf, our NaN (water) or +inf (land unfilled).
            covered_empty = (cover > 0) & ~v_o
            assert np.isnan(s_t[covered_empty]).all() and np.isnan(s_o[covered_empty]).all(), (name, key)
            assert np.isposinf(s_t[cover == 0]).all(), (name, key)
            assert (np.isnan(s_o) | np.isposinf(s_o))[cover == 0].all(), (name, key)
            # All 128 bands equal at every pixel but `kept` (both 0 where neither has data).
            e_t, e_o = g_t["embeddings"][t, :, box[0], box[1]], g_o["embeddings"][t, :, box[0], box[1]]
            differ = (e_o != e_t).any(axis=0) & ~kept
            assert not differ.any(), (name, key, "embeddings differ", differ.sum(), np.argwhere(differ)[:3] + (r0, c0))
            totals["data"] += int(v_t.sum())
            totals["kept over erased"] += int(kept.sum())
            totals["both no-data"] += int(covered_empty.sum())
            totals["uncovered"] += int((cover == 0).sum())
    assert min(totals.values()) > 1000, totals
