"""Shared set-up for the run tests: a small random checkpoint, synthetic tiles, config building, checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tessera_pipeline.grid import TileSet
from tessera_pipeline.inputs.synthetic import make_synthetic_tile
from tessera_pipeline.model.architecture import v1_1_config
from tessera_pipeline.model.random_checkpoint import save_random_checkpoint
from tessera_pipeline.run.config import build_config
from tessera_pipeline.store import TileStore
from tessera_pipeline.store import layout

YEAR = 2024
#: Four neighbouring land tiles near Manchester; a 0.2 x 0.2 degree box selects exactly these.
TILES = ["grid_-1.55_53.25", "grid_-1.45_53.25", "grid_-1.55_53.35", "grid_-1.45_53.35"]
BBOX = "-1.6,53.2,-1.4,53.4"
SIZE = (12, 10)
TESTS_DIR = str(Path(__file__).resolve().parent)


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    """A v1.1 checkpoint in upstream's format with RANDOM weights and tiny dimensions (fast on 2 cores)."""
    return save_random_checkpoint(path, config=v1_1_config(latent_dim=16, n_layers=1, d_ff=64), seed=seed)


def make_inputs(root: Path, tiles: list[str] = TILES, size: tuple[int, int] = SIZE) -> Path:
    """Synthetic d-pixel tiles in upstream's layout ROOT/YEAR/TILE/."""
    for tile in tiles:
        make_synthetic_tile(root, YEAR, tile, size=size)
    return root


def config(tmp: Path, **overrides: Any) -> Any:
    """A run config over tmp/inputs, tmp/store.zarr and tmp/ckpt.pt, with fast test timings."""
    values: dict[str, Any] = {
        "input": str(tmp / "inputs"), "store": str(tmp / "store.zarr"), "checkpoint": str(tmp / "ckpt.pt"),
        "year": YEAR, "region": {"bbox": BBOX}, "retry_backoff_s": 0.2, "refresh_s": 1.0, "progress_every_s": 1.0,
    }
    values.update(overrides)
    return build_config(values)


def tileset(tiles: list[str] = TILES) -> TileSet:
    """The tiles as a TileSet."""
    return TileSet.from_names(tiles)


def with_tests_on_path() -> None:
    """Let Ray workers started from here import the tests' processors (run_faults)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if TESTS_DIR not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, *paths])


def assert_complete_once(store_url: str, tiles: list[str] = TILES, *, debris: bool = False) -> int:
    """Every tile committed once, its marker naming a version that verifies clean; returns the debris count.

    Without `debris`, exactly one version group per tile is left. With it (runs whose writers were killed
    mid-write), other version groups may remain: a killed writer's uncommitted arrays, which no marker names
    and which cleanup keeps until they are older than its grace period.
    """
    store = TileStore(store_url)
    assert sorted(k.tile for k in store.list_complete(YEAR)) == sorted(tiles)
    left = 0
    for tile in tiles:
        result = store.verify_tile(YEAR, tile)
        assert result.ok, result.problems
        versions = [n for n in store.backend.list_children(layout.tile_key(YEAR, tile)) if layout.is_version(n)]
        assert result.version in versions, (tile, versions)
        if not debris:
            assert versions == [result.version], (tile, versions)
        left += len(versions) - 1
    return left
