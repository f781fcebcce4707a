"""Synthetic tiles look like the seeds' real ones, are reproducible, and pass input validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tessera_pipeline.cli.main import cli
from tessera_pipeline.grid import tile_geometry
from tessera_pipeline.inputs.dpixel import open_tile_at
from tessera_pipeline.inputs.synthetic import make_synthetic_tile, parse_size, synthetic_arrays

TILE = "grid_-1.55_53.25"


def test_arrays_have_upstream_dtypes_and_shapes() -> None:
    a = synthetic_arrays(20, 30, seed=1)
    assert (a["bands"].dtype, a["bands"].shape) == (np.uint16, (91, 20, 30, 10))
    assert (a["masks"].dtype, a["masks"].shape) == (np.uint8, (91, 20, 30))
    assert (a["doys"].dtype, a["doys"].shape) == (np.uint16, (91,))
    assert (a["sar_ascending"].dtype, a["sar_ascending"].shape) == (np.int16, (31, 20, 30, 2))
    assert (a["sar_descending_doy"].dtype, a["sar_descending_doy"].shape) == (np.int16, (30,))
    for key in ("doys", "sar_ascending_doy", "sar_descending_doy"):
        assert np.all(np.diff(a[key].astype(int)) > 0) and 1 <= a[key].min() and a[key].max() <= 366


def test_observation_counts_like_the_seeds() -> None:
    valid = [synthetic_arrays(48, 48, seed=s)["masks"].sum(axis=0).mean() for s in range(12)]
    assert 48 < np.mean(valid) < 62  # real tiles: ~55 clear of 91 dates
    a = synthetic_arrays(48, 48, seed=0)
    per_pixel = a["masks"].sum(axis=0)
    assert per_pixel.min() < per_pixel.max()  # clouds vary across the tile


def test_clouds_and_gaps_are_masked_and_look_like_it() -> None:
    a = synthetic_arrays(48, 48, seed=2)
    bands, masks = a["bands"], a["masks"]
    gaps = (bands == 0).all(axis=-1)
    assert gaps.any() and not masks[gaps].any()  # swath gaps: no data, masked
    cloudy = (masks == 0) & ~gaps
    assert bands[cloudy][:, 1].mean() > 2 * bands[masks == 1][:, 1].mean()  # clouds are bright in blue
    # Clouds are coherent blobs, not salt and pepper: neighbours agree far more than chance.
    agree = (masks[:, 1:, :] == masks[:, :-1, :]).mean()
    assert agree > 0.9
    sar = a["sar_ascending"]
    assert sar.min() >= 0 and (sar == 0).all(-1).any()  # 0 only as nodata


def test_reproducible_and_distinct_per_seed() -> None:
    a, b, c = (synthetic_arrays(16, 16, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["bands"], c["bands"])


def test_reduced_tile_validates_against_its_roi(tmp_path: Path) -> None:
    path = make_synthetic_tile(tmp_path, 2024, TILE, size=(40, 24))
    assert path == tmp_path / "2024" / TILE and (path / "roi.tiff").is_file()
    tile = open_tile_at(tmp_path, 2024, TILE)
    grid = tile_geometry(TILE)
    assert (tile.height, tile.width) == (40, 24)
    assert tile.geometry.epsg == grid.epsg and tile.geometry.transform == pytest.approx(grid.transform)


def test_same_tile_and_year_give_the_same_bytes(tmp_path: Path) -> None:
    one = make_synthetic_tile(tmp_path / "a", 2024, TILE, size=(20, 20))
    two = make_synthetic_tile(tmp_path / "b", 2024, TILE, size=(20, 20))
    other = make_synthetic_tile(tmp_path / "c", 2025, TILE, size=(20, 20))
    assert (one / "bands.npy").read_bytes() == (two / "bands.npy").read_bytes()
    assert (one / "bands.npy").read_bytes() != (other / "bands.npy").read_bytes()


def test_on_disk_and_in_memory_generation_agree(tmp_path: Path) -> None:
    path = make_synthetic_tile(tmp_path, 2024, TILE, size=(40, 8), seed=9)
    tile = open_tile_at(tmp_path, 2024, TILE)
    n = (tile.doys.size, tile.sar_ascending_doy.size, tile.sar_descending_doy.size)
    mem = synthetic_arrays(40, 8, seed=9, n_s2=n[0], n_s1_asc=n[1], n_s1_desc=n[2])
    assert np.array_equal(np.asarray(tile.bands), mem["bands"]) and path.is_dir()


def test_some_tiles_miss_an_orbit(tmp_path: Path) -> None:
    names = [f"grid_{10.05 + 0.1 * i:.2f}_45.05" for i in range(40)]
    empty = 0
    for name in names:
        make_synthetic_tile(tmp_path, 2024, name, size=(2, 2))
        tile = open_tile_at(tmp_path, 2024, name)  # a missing orbit is valid input
        empty += int(tile.sar_ascending.shape[0] == 0) + int(tile.sar_descending.shape[0] == 0)
    assert 0 < empty < 20


def test_parse_size() -> None:
    assert parse_size("64x32") == (64, 32)
    with pytest.raises(ValueError):
        parse_size("64")


def test_synth_cli_writes_valid_tiles_for_a_region(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["synth", "--out", str(tmp_path), "--year", "2023", "--bbox", "-1.6,53.2,-1.4,53.3", "--size", "8x8"]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "2023").iterdir())
    assert names == ["grid_-1.45_53.25", "grid_-1.55_53.25"]
    for name in names:
        assert open_tile_at(tmp_path, 2023, name).height == 8


def test_synth_cli_rejects_a_bad_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path), "--year", "2023", "--global", "--size", "big"])
    assert result.exit_code == 2 and "HxW" in result.output
