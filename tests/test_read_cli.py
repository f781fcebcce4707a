"""The reader's command-line faces: `sample` a points file, `export --mosaic` a box as one GeoTIFF; and a large
region read chunk by chunk stays in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from read_support import YEAR, points, write_block
from tessera_pipeline.bench.store_bench import MODEL_ATTRS
from tessera_pipeline.grid import tile_geometry
from tessera_pipeline.read import open_reader
from tessera_pipeline.store import TileStore

TWO = ["grid_17.75_79.65", "grid_17.85_79.65"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera_pipeline.cli", *args], capture_output=True, text=True,
                           timeout=300)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> TileStore:
    """Two neighbouring tiles of the block (compressible content)."""
    return write_block(str(tmp_path_factory.mktemp("cli") / "store.zarr"), TWO, compressible=True)


def test_sample_writes_the_points_with_their_embeddings_and_statuses(two: TileStore, tmp_path: Path) -> None:
    pts = points(300, seed=3)
    pts_file = tmp_path / "points.csv"
    pq.write_table(pa.table({"id": np.arange(len(pts)), "lon": pts[:, 0], "lat": pts[:, 1]}), tmp_path / "p.parquet")
    pts_file.write_text("id,lon,lat\n" + "".join(f"{i},{x!r},{y!r}\n" for i, (x, y) in enumerate(pts.tolist())))
    out = tmp_path / "out.parquet"
    done = _cli("sample", "--store", two.url, "--points", str(pts_file), "--year", str(YEAR), "--out", str(out),
                "--landmask", "none", "--json")
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "lon", "lat", "status", "tile", "version", "embedding"]
    want = open_reader(two, landmask="none").sample_points(pts, YEAR)
    got = np.asarray(table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)).reshape(-1, 128)
    np.testing.assert_array_equal(got, want.embeddings)
    assert table["status"].to_pylist() == want.status.tolist()
    assert json.loads(done.stdout)["statuses"]["valid"] == int((want.status == "valid").sum())
    again = _cli("sample", "--store", two.url, "--points", str(tmp_path / "p.parquet"), "--year", str(YEAR),
                 "--out", str(out), "--landmask", "none")
    assert again.returncode == 2 and again.stderr.startswith("error:") and "--overwrite" in again.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    refused = _cli("sample", "--store", two.url, "--points", str(bad), "--year", str(YEAR), "--out",
                   str(tmp_path / "x.parquet"))
    assert refused.returncode != 0 and "lon and lat columns" in refused.stderr


def test_sample_of_a_year_the_release_does_not_hold_is_an_error(two: TileStore, tmp_path: Path) -> None:
    """Not `pending` for every point: one line naming the year and the release."""
    from tessera_pipeline.store.manifest import build_manifest
    from tessera_pipeline.store.releases import write_release

    write_release(two, "year-check", build_manifest(two, YEAR), settle_s=0)
    pts_file = tmp_path / "points.csv"
    pts_file.write_text("lon,lat\n17.8,79.65\n")
    done = _cli("sample", "--store", two.url, "--points", str(pts_file), "--year", str(YEAR - 1), "--out",
                str(tmp_path / "out.parquet"), "--release", "year-check")
    assert done.returncode == 2 and done.stderr.startswith("error:"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(YEAR - 1) in done.stderr and "year-check" in done.stderr and str(YEAR) in done.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_export_mosaic_is_one_georeferenced_geotiff_of_the_region(two: TileStore, tmp_path: Path) -> None:
    import rasterio

    out = tmp_path / "mosaic.tif"
    bbox = "17.80,79.63,17.84,79.655"
    done = _cli("export", "--store", two.url, "--year", str(YEAR), "--bbox", bbox, "--geotiff", str(out), "--mosaic",
                "--dequantise")
    assert done.returncode == 0, done.stderr
    want = open_reader(two).read_region((17.80, 79.63, 17.84, 79.655), YEAR)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32633 and src.count == 128 and src.res == (10.0, 10.0)
        assert src.transform.c == float(want.x[0]) - 5 and src.transform.f == float(want.y[0]) + 5
        np.testing.assert_array_equal(src.read(), want.values)
    quantised = _cli("export", "--store", two.url, "--year", str(YEAR), "--bbox", bbox, "--geotiff",
                     str(tmp_path / "q.tif"), "--mosaic")
    assert quantised.returncode == 0, quantised.stderr
    with rasterio.open(tmp_path / "q.tif") as q, rasterio.open(tmp_path / "q_scales.tif") as s:
        np.testing.assert_array_equal(q.read().astype(np.float32) * s.read(1)[None], want.values)


def test_a_20_by_20_tile_region_reads_in_bounded_memory(tmp_path: Path) -> None:
    """A region of 20 x 20 tiles (5,000 x 22,000 pixels; 14 GB of int8 materialised) with 40 of them committed (true
    geometry, a 16 x 16 corner of data each) on its edges and diagonal: read chunk by chunk, peak traced memory
    stays under 1 GB."""
    store = TileStore(str(tmp_path / "big.zarr"))
    store.create(MODEL_ATTRS)
    lons = [round(16.05 + 0.1 * i, 2) for i in range(20)]
    lats = [round(78.05 + 0.1 * j, 2) for j in range(20)]
    emb = np.full((16, 16, 128), 127, np.int8)
    scales = np.full((16, 16), 0.01, np.float32)
    committed = {(i, j) for i in range(20) for j in range(20) if j in (0, 19) or i == j}
    for i, j in sorted(committed):
        g = tile_geometry((lons[i], lats[j]))
        store.write_tile(YEAR, g.name, emb, scales, epsg=g.epsg, transform=g.transform, provenance={})
    da = open_reader(store, landmask="none").read_region((16.0, 78.0, 18.0, 80.0), YEAR, dequantise=False, chunk=1024)
    assert da.nbytes > 10e9
    tracemalloc.start()
    valid = int((~np.isnan(da.scales.data)).sum().compute(scheduler="threads", num_workers=2))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert valid == len(committed) * 16 * 16
    assert peak < 1e9, f"peak {peak / 1e6:.0f} MB"


def _sampled(base: np.ndarray, overview: np.ndarray, factor: int) -> np.ndarray:
    """Per overview pixel: True where its vector (all bands; NaN equal to NaN) is one of the base pixels of its
    factor x factor footprint, i.e. the overview samples pixels rather than averaging them."""
    height, width = overview.shape[1:]
    found = np.zeros((height, width), bool)
    for dr in range(factor):
        for dc in range(factor):
            rows = np.minimum(np.arange(height) * factor + dr, base.shape[1] - 1)
            cols = np.minimum(np.arange(width) * factor + dc, base.shape[2] - 1)
            cand = base[:, rows][:, :, cols]
            found |= ((cand == overview) | (np.isnan(cand) & np.isnan(overview))).all(axis=0)
    return found


def test_export_cog_is_cloud_optimised_and_equals_the_region(two: TileStore, tmp_path: Path) -> None:
    """A valid COG (rio-cogeo's strict validation) of the region's values, whose overviews sample pixels: a mean
    of embeddings is not an embedding."""
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    from tessera_pipeline.read.geotiff import is_cog

    out = tmp_path / "box.tif"
    done = _cli("export", "--store", two.url, "--year", str(YEAR), "--bbox", "17.78,79.60,17.88,79.70", "--cog",
                str(out), "--bands", "0:3")
    assert done.returncode == 0, done.stderr
    assert is_cog(out) == []
    valid, errors, warnings = cog_validate(str(out), strict=True)
    assert valid and not errors and not warnings, (errors, warnings)
    want = open_reader(two).read_region((17.78, 79.60, 17.88, 79.70), YEAR).isel(band=slice(0, 3))
    with rasterio.open(out) as src:
        assert src.count == 3 and src.crs.to_epsg() == 32633 and src.overviews(1)
        assert src.descriptions == ("embedding_000", "embedding_001", "embedding_002")
        base = src.read()
        np.testing.assert_array_equal(base, want.values)
        factors = src.overviews(1)
    for level, factor in enumerate(factors):
        with rasterio.open(out, overview_level=level) as ov:
            overview = ov.read()
        assert (~np.isnan(overview[0])).sum() > 100
        assert _sampled(base, overview, factor).all(), f"overview 1/{factor} averages pixels"
    again = _cli("export", "--store", two.url, "--year", str(YEAR), "--bbox", "17.78,79.60,17.88,79.70", "--cog",
                 str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
