"""The tile grid matches geotessera: names, lookup, UTM zone and each tile's 10 m raster."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Transformer

from tessera_pipeline.errors import RegionError, TileNameError
from tessera_pipeline.grid import (
    N_LAT,
    N_LON,
    TileSet,
    geometries,
    index_from_name,
    names_from_index,
    parse_tile_name,
    tile_bounds,
    tile_from_point,
    tile_geometry,
    tile_name,
    utm_epsg,
)


def reference_geometry(lon: float, lat: float) -> tuple[int, int, int, tuple[float, ...]]:
    """geotessera's project_tile, written out independently with scalar pyproj calls."""
    zone = min(max(int(np.floor((lon + 180) / 6)) + 1, 1), 60)
    epsg = (32600 if lat >= 0 else 32700) + zone
    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    ul = tr.transform(lon - 0.05, lat + 0.05)
    ur = tr.transform(lon + 0.05, lat + 0.05)
    ll = tr.transform(lon - 0.05, lat - 0.05)
    lr = tr.transform(lon + 0.05, lat - 0.05)
    origin_e = min(ul[0], ll[0])
    origin_n = max(ul[1], ur[1])
    height = round((origin_n - min(ll[1], lr[1])) / 10)
    width = round((max(ur[0], lr[0]) - origin_e) / 10)
    return epsg, height, width, (10.0, 0.0, origin_e, 0.0, -10.0, origin_n)


@pytest.mark.parametrize(
    ("name", "height", "width"),
    [
        ("grid_-99.95_80.05", 1119, 211),  # real NPY shape (tunbury, 2025-11-30)
        ("grid_-1.55_53.25", 1126, 690),  # the "Manchester tile", 776,940 px
        ("grid_0.15_52.05", 1139, 729),
        ("grid_0.05_0.05", 1107, 1114),
    ],
)
def test_known_tile_sizes(name: str, height: int, width: int) -> None:
    geom = tile_geometry(name)
    assert (geom.height, geom.width) == (height, width)
    assert geom.name == name


def test_geometry_matches_independent_pyproj_computation() -> None:
    rng = np.random.default_rng(7)
    ix = rng.integers(0, N_LON, 60)
    iy = rng.integers(300, 1740, 60)  # 60 S .. 84 N
    # Zone edges, both hemispheres and the antimeridian.
    ix = np.concatenate([ix, [0, 59, 60, 1799, 1800, 3599]])
    iy = np.concatenate([iy, [900, 899, 1500, 300, 1739, 1000]])
    for geom in geometries(ix, iy):
        epsg, height, width, transform = reference_geometry(geom.lon, geom.lat)
        assert geom.epsg == epsg
        assert (geom.height, geom.width) == (height, width)
        assert geom.transform == pytest.approx(transform, abs=1e-6)


def test_vectorised_and_single_geometry_agree() -> None:
    names = ["grid_-1.55_53.25", "grid_151.25_-33.85", "grid_-179.95_65.05"]
    ix, iy = zip(*(index_from_name(n) for n in names))
    assert geometries(np.array(ix), np.array(iy)) == [tile_geometry(n) for n in names]


def test_transform_is_gdal_order_north_up() -> None:
    a, b, c, d, e, f = tile_geometry("grid_-1.55_53.25").transform
    assert (a, b, d, e) == (10.0, 0.0, 0.0, -10.0)
    assert 500_000 < c < 700_000 and 5_900_000 < f < 5_910_000


@pytest.mark.parametrize(
    ("lon", "lat", "tile"),
    [
        (0.17, 52.23, "grid_0.15_52.25"),
        (-0.12, -0.03, "grid_-0.15_-0.05"),
        (0.3, 0.3, "grid_0.35_0.35"),  # on a cell edge: the cell to the north-east
        (-180.0, -90.0, "grid_-179.95_-89.95"),
        (180.0, 90.0, "grid_-179.95_89.95"),  # 180 wraps to -180
    ],
)
def test_point_to_tile(lon: float, lat: float, tile: str) -> None:
    assert tile_from_point(lon, lat) == tile


def test_names_format_like_geotessera_everywhere() -> None:
    rng = np.random.default_rng(1)
    ix = rng.integers(0, N_LON, 20_000)
    iy = rng.integers(0, N_LAT, 20_000)
    lon = -180 + (ix + 0.5) / 10
    lat = -90 + (iy + 0.5) / 10
    expected = [f"grid_{x:.2f}_{y:.2f}" for x, y in zip(lon, lat)]
    assert names_from_index(ix, iy) == expected
    assert all(index_from_name(n) == (int(x), int(y)) for n, x, y in zip(expected[:500], ix, iy))


def test_tile_name_round_trip_and_bounds() -> None:
    assert tile_name(-1.55, 53.25) == "grid_-1.55_53.25"
    assert parse_tile_name("grid_-1.55_53.25") == (-1.55, 53.25)
    assert tile_bounds("grid_-0.05_-0.05") == (-0.1, -0.1, 0.0, 0.0)
    assert tile_bounds((0.15, 52.05)) == (0.1, 52.0, 0.2, 52.1)


@pytest.mark.parametrize("bad", ["grid_0.10_52.05", "tile_a", "grid_0.15", "grid_180.05_0.05", "grid_0.15_90.05"])
def test_bad_tile_names_are_typed_errors(bad: str) -> None:
    with pytest.raises(TileNameError, match="grid|centre"):
        tile_geometry(bad)
    assert issubclass(TileNameError, RegionError)


def test_utm_zone_rule() -> None:
    assert utm_epsg(-1.55, 53.25) == 32630
    assert utm_epsg(151.25, -33.85) == 32756
    assert utm_epsg(-179.95, 10.0) == 32601
    assert utm_epsg(179.95, -10.0) == 32760
    assert utm_epsg(5.05, 60.05) == 32631  # no Norway exception on the tile grid


def test_no_tile_straddles_a_zone() -> None:
    ix = np.arange(N_LON)
    west = utm_epsg(-180 + ix / 10 + 1e-9, 10.0)
    east = utm_epsg(-180 + (ix + 1) / 10 - 1e-9, 10.0)
    assert np.array_equal(west, east)


def test_tileset_sorted_unique_and_named() -> None:
    tiles = TileSet.from_names(["grid_0.15_52.05", "grid_-1.55_53.25", "grid_0.15_52.05"])
    assert len(tiles) == 2
    assert tiles.names() == ["grid_0.15_52.05", "grid_-1.55_53.25"]  # south to north
    assert "grid_-1.55_53.25" in tiles
    assert tiles.to_grid().sum() == 2
