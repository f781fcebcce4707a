"""`tessera-pipeline export`: GeoTIFF through rasterio and geotessera's NPY layout, georeferenced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_store import EPSG, TILE, TRANSFORM, make_tile, store_url, write  # noqa: F401  (fixtures)

from tessera_pipeline.cli.main import cli
from tessera_pipeline.store import dequantise


def run(*args: str) -> str:
    """Invoke the CLI and return its output, failing on a non-zero exit."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_geotiff_int8_and_dequantised(store_url: str, tmp_path: Path) -> None:  # noqa: F811
    import rasterio

    emb, scales = make_tile(1)
    write(store_url, 2024, TILE, 1)
    run("export", "--store", store_url, "--year", "2024", "--tile", TILE, "--geotiff", str(tmp_path / "q.tif"))
    with rasterio.open(tmp_path / "q.tif") as src:
        assert src.crs.to_epsg() == EPSG and tuple(src.transform)[:6] == TRANSFORM
        assert src.count == 128 and src.dtypes[0] == "int8"
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, 2), emb)
    with rasterio.open(tmp_path / "q_scales.tif") as src:
        assert src.crs.to_epsg() == EPSG
        np.testing.assert_array_equal(src.read(1), scales)
    run(
        "export",
        "--store",
        store_url,
        "--year",
        "2024",
        "--tile",
        TILE,
        "--geotiff",
        str(tmp_path / "f.tif"),
        "--dequantise",
    )
    with rasterio.open(tmp_path / "f.tif") as src:
        assert src.crs.to_epsg() == EPSG and tuple(src.transform)[:6] == TRANSFORM and src.dtypes[0] == "float32"
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, 2), dequantise(emb, scales))


def test_npy_layout_opens_in_geotessera(store_url: str, tmp_path: Path) -> None:  # noqa: F811
    tiles = pytest.importorskip("geotessera.tiles")
    emb, scales = make_tile(2)
    write(store_url, 2024, TILE, 2)
    out = tmp_path / "mirror"
    run("export", "--store", store_url, "--year", "2024", "--tile", TILE, "--npy", str(out))
    rep = out / "global_0.1_degree_representation" / "2024" / TILE
    np.testing.assert_array_equal(np.load(rep / f"{TILE}.npy"), emb)
    np.testing.assert_array_equal(np.load(rep / f"{TILE}_scales.npy"), scales)
    (found,) = tiles.discover_tiles(out)
    assert (found.lon, found.lat, found.year) == (-1.55, 53.25, 2024)
    assert found.crs.to_epsg() == EPSG and tuple(found.transform)[:6] == TRANSFORM
    assert (found.height, found.width) == scales.shape
    np.testing.assert_array_equal(found.load_embedding(), dequantise(emb, scales))


def test_export_by_region_and_usage_errors(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    write(url, 2024, TILE, 3)
    write(url, 2024, "grid_0.15_52.05", 4)
    out = run(
        "export", "--store", url, "--year", "2024", "--bbox=-1.6,53.2,-1.5,53.3", "--geotiff", str(tmp_path / "r.tif")
    )
    assert "exported 1 tile(s)" in out and (tmp_path / "r.tif").exists()
    several = run(
        "export",
        "--store",
        url,
        "--year",
        "2024",
        "--tile",
        TILE,
        "--tile",
        "grid_0.15_52.05",
        "--geotiff",
        str(tmp_path / "m.tif"),
    )
    assert "exported 2 tile(s)" in several
    assert (tmp_path / f"m_{TILE}.tif").exists() and (tmp_path / "m_grid_0.15_52.05_scales.tif").exists()
    runner = CliRunner()
    neither = runner.invoke(cli, ["export", "--store", url, "--year", "2024", "--tile", TILE])
    assert neither.exit_code == 2 and "--geotiff" in neither.output
    no_tiles = runner.invoke(cli, ["export", "--store", url, "--year", "2024", "--npy", str(tmp_path / "n")])
    assert no_tiles.exit_code == 2
    missing = runner.invoke(
        cli, ["export", "--store", url, "--year", "2023", "--tile", TILE, "--npy", str(tmp_path / "n")]
    )
    assert missing.exit_code == 2 and "not complete" in missing.output
