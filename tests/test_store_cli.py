"""`tessera-pipeline verify`: every complete tile checked, non-zero exit on any mismatch."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from test_store import TILE, store_url, write  # noqa: F401  (fixtures)

from tessera_pipeline.cli.main import cli
from tessera_pipeline.store import TileStore


def test_verify_passes_then_fails_on_corruption(store_url: str) -> None:  # noqa: F811
    import zarr

    write(store_url, 2024, TILE, 1)
    write(store_url, 2024, "grid_0.15_52.05", 2)
    write(store_url, 2023, TILE, 3)
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", "--store", store_url])
    assert ok.exit_code == 0, ok.output
    assert "3 tile(s) checked, 3 ok, 0 failed" in ok.output
    year = runner.invoke(cli, ["verify", "--store", store_url, "--year", "2023", "--json"])
    assert year.exit_code == 0 and json.loads(year.output)["checked"] == 1

    store = TileStore(store_url)
    marker = store.marker(2024, TILE)
    assert marker is not None
    scales = zarr.open_array(store.backend.zarr_store(f"{marker['path']}/scales"), mode="r+")
    scales[1, 1] = np.float32(scales[1, 1]) * 2
    bad = runner.invoke(cli, ["verify", "--store", store_url, "--json"])
    assert bad.exit_code == 1
    doc = json.loads(bad.output)
    assert doc["checked"] == 3 and doc["failed"] == 1
    (failed,) = [t for t in doc["tiles"] if not t["ok"]]
    assert (failed["year"], failed["tile"]) == (2024, TILE) and any(p.startswith("scales: sha256 mismatch") for p in failed["problems"])
    text = runner.invoke(cli, ["verify", "--store", store_url])
    assert text.exit_code == 1 and f"FAILED 2024/{TILE}" in text.output


def test_verify_of_missing_store_is_an_error(tmp_path: object) -> None:
    result = CliRunner().invoke(cli, ["verify", "--store", f"{tmp_path}/nothing"])
    assert result.exit_code == 2 and "no store" in result.output
