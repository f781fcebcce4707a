"""The reader: points and regions across tiles on geotessera's zone grid equal a brute-force lookup of the tiles'
own pixels (floor snapping, later tile with data wins), statuses tell water, no data, pending and outside apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from read_support import (BLOCK, BOX, COMMITTED, PENDING_TILE, YEAR, brute_force, edge_points, landmask, points,
                          write_block)
from tessera_pipeline.errors import StoreIntegrityError
from tessera_pipeline.grid import tile_geometry
from tessera_pipeline.read import open_reader
from tessera_pipeline.store import TileStore


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> TileStore:
    """The 3 x 3 block (one tile pending), written once for the module."""
    return write_block(str(tmp_path_factory.mktemp("read") / "store.zarr"))


@pytest.fixture(scope="module")
def truth(block: TileStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10,000 points and their brute-force embeddings and source tiles."""
    pts = points(10_000)
    values, src = brute_force(block, pts)
    return pts, values, src


def test_points_equal_a_brute_force_lookup_of_the_tiles(block: TileStore, truth: tuple) -> None:
    pts, values, src = truth
    got = open_reader(block, landmask=landmask()).sample_points(pts, YEAR)
    np.testing.assert_array_equal(got.embeddings, values)  # NaN-aware, exact
    assert (got.tile[src != ""] == src[src != ""]).all()
    assert (got.status == "valid").sum() == (src != "").sum()
    # the block exercises what the rule decides: overlaps, later tiles winning, and no-data never hiding data
    owner = np.array([f"grid_{np.floor(lon * 10) / 10 + 0.05:.2f}_{np.floor(lat * 10) / 10 + 0.05:.2f}" for lon, lat in pts])
    read_elsewhere = (src != "") & (src != owner)
    assert read_elsewhere.sum() > 200, "points read from a neighbour's overlapping raster"
    counts = got.counts()
    assert min(counts["water"], counts["pending"], counts["no-observations"]) > 50, counts


def test_a_point_on_a_pixel_edge_reads_the_pixel_geotessera_reads() -> None:
    """geotessera 0.11.0 reads the pixel whose centre is nearest, a tie going west and north: so does ours."""
    from tessera_pipeline.read import lattice

    geotessera_store = pytest.importorskip("geotessera.store", reason="geotessera 0.11.0 (make install)")
    pts = edge_points(2000)
    x, y = lattice.project(pts[:, 0], pts[:, 1], 33)
    rows, cols = lattice.pixel_of(x, y)
    row0, col0 = int(rows.min()) - 2, int(cols.min()) - 2
    xs = (np.arange(col0, int(cols.max()) + 3) + 0.5) * 10.0  # a zone axis of pixel centres, as geotessera's x
    ys = -(np.arange(row0, int(rows.max()) + 3) + 0.5) * 10.0  # north first, as geotessera's y
    np.testing.assert_array_equal(cols, geotessera_store._nearest_indices(xs, x) + col0)
    np.testing.assert_array_equal(rows, geotessera_store._nearest_indices(ys, y) + row0)
    on_x, on_y = x % 10 == 0, y % 10 == 0
    assert on_x.sum() > 500 and on_y.sum() > 500
    np.testing.assert_array_equal(cols[on_x], x[on_x] // 10 - 1)  # west of an edge
    np.testing.assert_array_equal(rows[on_y], -y[on_y] // 10 - 1)  # north of an edge


def test_statuses_tell_water_no_data_pending_and_outside_apart(block: TileStore, truth: tuple) -> None:
    pts, values, src = truth
    reader = open_reader(block, landmask=landmask())
    got = reader.sample_points(pts, YEAR)
    owner = np.array([f"grid_{np.floor(lon * 10) / 10 + 0.05:.2f}_{np.floor(lat * 10) / 10 + 0.05:.2f}" for lon, lat in pts])
    nodata = src == ""
    assert set(got.status[nodata & (owner == PENDING_TILE)]) == {"pending"}
    assert set(got.status[nodata & np.isin(owner, COMMITTED)]) == {"no-observations"}
    assert set(got.status[nodata & ~np.isin(owner, BLOCK)]) == {"water"}
    assert np.isnan(got.embeddings[nodata]).all() and np.isnan(got.scales[nodata]).all()
    edge = reader.sample_points([(np.nan, 79.6), (17.8, 95.0)], YEAR)
    assert list(edge.status) == ["outside", "outside"]
    i = int(np.flatnonzero(got.status == "valid")[0])
    assert reader.probe(*pts[i], YEAR) == "valid"
    assert reader.probe(17.97, 79.78, YEAR) in ("pending", "valid")


def test_int8_points_carry_their_scales(block: TileStore, truth: tuple) -> None:
    pts, values, _src = truth
    got = open_reader(block, landmask=landmask()).sample_points(pts[:500], YEAR, dequantise=False)
    assert got.embeddings.dtype == np.int8
    np.testing.assert_array_equal(got.embeddings.astype(np.float32) * got.scales[:, None], values[:500])


def test_region_is_one_grid_of_the_tiles_own_pixels(block: TileStore, truth: tuple) -> None:
    box = (17.78, 79.58, 17.92, 79.72)  # 2 x 2 tiles' meeting corner and their overlaps
    da = open_reader(block, landmask=landmask()).read_region(box, YEAR, chunk=256)
    assert da.dims == ("band", "y", "x") and da.chunks is not None
    assert np.unique(np.diff(da.x.values)).tolist() == [10.0]
    assert np.unique(np.diff(da.y.values)).tolist() == [-10.0]
    assert da.rio.crs.to_epsg() == 32633
    # every pixel centre, looked up the brute-force way, reads the same
    xx, yy = np.meshgrid(da.x.values[::7], da.y.values[::7])
    from pyproj import Transformer

    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(xx.ravel(), yy.ravel())
    want, _ = brute_force(block, np.stack([lon, lat], axis=1))
    got = da.values[:, ::7, ::7].transpose(1, 2, 0).reshape(-1, 128)
    np.testing.assert_array_equal(got, want)
    assert (~np.isnan(got[:, 0])).sum() > 1000


def test_int8_region_has_lazy_scales(block: TileStore) -> None:
    box = (17.80, 79.60, 17.86, 79.64)
    reader = open_reader(block, landmask=landmask())
    q = reader.read_region(box, YEAR, dequantise=False)
    f = reader.read_region(box, YEAR)
    assert q.dtype == np.int8 and q.scales.dims == ("y", "x")
    np.testing.assert_array_equal(q.values.astype(np.float32) * q.scales.values[None], f.values)


def test_a_region_in_another_crs_is_resampled_and_says_so(block: TileStore) -> None:
    box = (17.80, 79.60, 17.86, 79.64)
    da = open_reader(block, landmask=landmask()).read_region(box, YEAR, crs="EPSG:4326", res=0.001)
    assert da.rio.crs.to_epsg() == 4326 and "nearest neighbour" in da.attrs["tessera-pipeline:resampled"]
    lon, lat = np.meshgrid(da.x.values, da.y.values)
    want, _ = brute_force(block, np.stack([lon.ravel(), lat.ravel()], axis=1))
    np.testing.assert_array_equal(da.values.transpose(1, 2, 0).reshape(-1, 128), want)


def test_a_release_reads_its_versions_after_a_reprocess(block: TileStore, tmp_path: Path, truth: tuple) -> None:
    import shutil

    from tessera_pipeline.store.manifest import build_manifest
    from tessera_pipeline.store.releases import write_release

    root = tmp_path / "copy.zarr"
    shutil.copytree(block.url, root)
    store = TileStore(str(root))
    write_release(store, "r1", build_manifest(store, YEAR), settle_s=0)
    pts, values, _src = truth
    g = tile_geometry(COMMITTED[0])
    emb, scales = np.full((g.height, g.width, 128), 127, np.int8), np.full((g.height, g.width), 0.5, np.float32)
    store.write_tile(YEAR, COMMITTED[0], emb, scales, epsg=g.epsg, transform=g.transform, provenance={})
    pinned = open_reader(store, release="r1", landmask=landmask()).sample_points(pts[:2000], YEAR)
    np.testing.assert_array_equal(pinned.embeddings, values[:2000])
    current = open_reader(store, landmask=landmask()).sample_points(pts[:2000], YEAR)
    assert (current.embeddings == 63.5).all(axis=1).any()


def test_a_missing_embeddings_object_is_an_error_not_zeros(block: TileStore, tmp_path: Path, truth: tuple) -> None:
    import shutil

    root = tmp_path / "broken.zarr"
    shutil.copytree(block.url, root)
    store = TileStore(str(root))
    marker = store.marker(YEAR, COMMITTED[4])
    assert marker is not None
    (root / marker["path"] / "embeddings" / "c" / "0" / "0" / "0").unlink()
    pts, _values, src = truth
    with pytest.raises(StoreIntegrityError, match="embeddings"):
        open_reader(store, landmask=landmask()).sample_points(pts[src == COMMITTED[4]], YEAR)
