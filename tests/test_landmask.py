"""Land tiles: the embedded global count, known land and sea, user lists and GeoTIFF masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio

from tessera_pipeline.errors import LandMaskError
from tessera_pipeline.grid import index_from_name, tile_geometry
from tessera_pipeline.landmask import globe_landmask, load_landmask

PUBLISHED_LAND_TILES = 1_593_480


def is_land(mask: object, name: str) -> bool:
    ix, iy = index_from_name(name)
    return bool(mask.contains(np.array([ix]), np.array([iy]))[0])  # type: ignore[attr-defined]


@pytest.mark.slow
def test_global_count_within_one_percent_of_published() -> None:
    count = globe_landmask().count()
    assert abs(count - PUBLISHED_LAND_TILES) / PUBLISHED_LAND_TILES < 0.01


@pytest.mark.parametrize(
    ("name", "land"),
    [
        ("grid_-1.55_53.25", True),  # Manchester
        ("grid_-150.05_-20.05", False),  # mid Pacific
        ("grid_-30.05_40.05", False),  # mid Atlantic
        ("grid_20.05_-75.05", False),  # Antarctica: outside 60 S .. 84 N
        ("grid_-34.95_83.65", True),  # north Greenland, the northernmost land row (83.65 N)
        ("grid_-33.05_83.95", False),  # beyond 84 N: nothing
        ("grid_-68.05_-55.05", True),  # Tierra del Fuego
    ],
)
def test_known_land_and_sea(name: str, land: bool) -> None:
    assert is_land(globe_landmask(), name) is land


def test_coastal_tile_with_little_land_counts_as_land() -> None:
    # Any land cell makes a tile land, so a tile that is mostly sea but touches the coast is kept.
    mask = globe_landmask()
    assert is_land(mask, "grid_-4.55_53.85") is False  # Irish Sea
    assert is_land(mask, "grid_-4.55_50.05") is False  # open sea off Cornwall
    assert is_land(mask, "grid_-5.65_50.05") is True  # Land's End, a mostly-sea tile


def test_none_mask_is_every_cell() -> None:
    assert load_landmask("none").count() == 3600 * 1800


def test_csv_list_of_points(tmp_path: Path) -> None:
    path = tmp_path / "tiles.csv"
    path.write_text("lon,lat\n-1.55,53.25\n0.17,52.23\n0.17,52.23\n")
    mask = load_landmask(path)
    assert mask.tiles().names() == ["grid_0.15_52.25", "grid_-1.55_53.25"]


def test_parquet_list_of_names(tmp_path: Path) -> None:
    path = tmp_path / "tiles.parquet"
    pq.write_table(pa.table({"name": ["grid_-1.55_53.25", "grid_-150.05_-20.05"]}), path)
    assert load_landmask(path).count() == 2


def test_text_list_of_names(tmp_path: Path) -> None:
    path = tmp_path / "tiles.txt"
    path.write_text("# my tiles\ngrid_-1.55_53.25\n\ngrid_0.15_52.05\n")
    assert load_landmask(path).count() == 2


@pytest.mark.parametrize(
    ("content", "match"),
    [("x,y\n1,2\n", "lon,lat"), ("name\nnot_a_tile\n", "not a tile name"), ("lon,lat\n200,0\n", "within")],
)
def test_bad_lists_are_typed_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "tiles.csv"
    path.write_text(content)
    with pytest.raises(LandMaskError, match=match):
        load_landmask(path)


def test_missing_mask_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(LandMaskError, match="not found"):
        load_landmask(tmp_path / "nope.tif")


def write_tif(path: Path, data: np.ndarray, crs: str, transform: object) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", dtype="uint8", count=1, height=data.shape[0], width=data.shape[1],
        crs=crs, transform=transform,
    ) as dst:
        dst.write(data[None])
    return path


def test_geotiff_mask_in_lonlat(tmp_path: Path) -> None:
    # 0.025 degree pixels over lon 10..11, lat 45..46; one land pixel and one 2x2 patch.
    data = np.zeros((40, 40), np.uint8)
    data[0, 0] = 1  # lon 10.000-10.025, lat 45.975-46.000 -> grid_10.05_45.95
    data[20:22, 20:22] = 7  # lon 10.5-10.55, lat 45.45-45.5 -> grid_10.55_45.45
    path = write_tif(tmp_path / "mask.tif", data, "EPSG:4326", rasterio.Affine(0.025, 0.0, 10.0, 0.0, -0.025, 46.0))
    assert load_landmask(path).tiles().names() == ["grid_10.55_45.45", "grid_10.05_45.95"]


def test_geotiff_mask_with_coarse_pixels_marks_every_cell_they_cover(tmp_path: Path) -> None:
    data = np.array([[1, 0], [0, 0]], np.uint8)  # one 0.2 degree pixel covers 2 x 2 cells
    path = write_tif(tmp_path / "coarse.tif", data, "EPSG:4326", rasterio.Affine(0.2, 0.0, 10.0, 0.0, -0.2, 46.0))
    assert sorted(load_landmask(path).tiles().names()) == [
        "grid_10.05_45.85", "grid_10.05_45.95", "grid_10.15_45.85", "grid_10.15_45.95",
    ]


def test_geotiff_mask_in_utm_like_a_geotessera_landmask_tile(tmp_path: Path) -> None:
    geom = tile_geometry("grid_-1.55_53.25")
    data = np.zeros((geom.height, geom.width), np.uint8)
    data[400:700, 200:500] = 1  # land well inside the tile
    path = write_tif(tmp_path / "grid.tiff", data, geom.crs, rasterio.Affine(*geom.transform))
    assert load_landmask(path).tiles().names() == ["grid_-1.55_53.25"]
