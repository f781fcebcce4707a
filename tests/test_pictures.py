"""Pictures where people would rather look than read: `status --map` draws a run's tiles by state for a county
and for the whole globe (1.6 M tiles, from a store's run records: no Ray, no run), the demo's picture of its
region shows each tile outlined, named and with its data, and a run's summary says the pixels it encoded."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from tessera_pipeline.cli.demo_pictures import draw_region_tiles
from tessera_pipeline.cli.main import cli
from tessera_pipeline.cli.run_display import print_summary
from tessera_pipeline.grid import TileSet, index_from_name, tile_centre, tile_geometry
from tessera_pipeline.landmask import globe_land_grid
from tessera_pipeline.run.progress import RunOutcome, RunProgress
from tessera_pipeline.run.session import RunReport
from tessera_pipeline.run.status_map import FAILED_COLOURS, LAND, MARGINS, SEA, MapFrame, draw_status_map, state_colours
from tessera_pipeline.run.workplan import plan_tiles
from tessera_pipeline.store.backend import LocalBackend
from tessera_pipeline.store.layout import COMMIT_FORMAT, marker_key
from tessera_pipeline.store.results import TileData
from tessera_pipeline.store.runlog import PlannedTiles, encode_plan, failure_key, run_key

YEAR = 2024
RUN_ID = "r20261207T100000Z-map000"
GREEN, GREY, BLUE = (0x1A, 0x98, 0x50), (0x9E, 0x9E, 0x9E), (0x3A, 0x7D, 0xD8)


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _store(root: Path, plan: PlannedTiles, done: list[str], failed: dict[str, str]) -> str:
    """A local store holding a run's records as a driver leaves them: plan, markers, failure records."""
    backend = LocalBackend(str(root))
    now = datetime.now(timezone.utc).isoformat()
    backend.put_atomic(run_key(RUN_ID, "plan.tsv.gz"), encode_plan(plan))
    backend.put_atomic(run_key(RUN_ID, "run.json"), json.dumps({
        "format": "tessera-run/1", "run_id": RUN_ID, "kind": "run", "created_at": now, "config": {},
        "checkpoint": {"sha256": "a" * 64}}).encode())
    backend.put_atomic("_run/current.json", json.dumps({"run_id": RUN_ID}).encode())
    for tile in done:
        backend.put_atomic(marker_key(YEAR, tile), json.dumps({
            "format": COMMIT_FORMAT, "tile": tile, "year": YEAR, "committed_at": now,
            "provenance": {"checkpoint_sha256": "a" * 64}}).encode())
    for tile, reason in failed.items():
        backend.put_atomic(failure_key(YEAR, tile), json.dumps({"reason": reason, "message": "x"}).encode())
    return str(root)


def _status_map(store: str, png: Path) -> tuple[float, str]:
    """Run `status --map`, return its seconds and output (exit 1: the run has failed tiles)."""
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["status", "--store", store, "--map", str(png)])
    took = time.perf_counter() - start
    assert result.exit_code == 1, result.output
    assert png.is_file()
    return took, result.output


def _colour_at(picture: np.ndarray, frame: MapFrame, tile: str) -> tuple[int, int, int]:
    """The commonest colour in a small window around a tile's centre, a quarter tile south-west of it
    (clear of its name)."""
    lon, lat = tile_centre(tile)
    col, row = frame.pixel(lon - 0.025, lat - 0.025)
    window = picture[row - 1:row + 2, col - 1:col + 2, :3].reshape(-1, 3)
    values, counts = np.unique(window, axis=0, return_counts=True)
    return tuple(int(v) for v in values[counts.argmax()])  # type: ignore[return-value]


def _frame_of(png: Path, west: float, south: float, east: float, north: float) -> MapFrame:
    """Where the map lies in a status PNG: the picture less its margins."""
    width, height = Image.open(png).size
    left, right, top, bottom = MARGINS
    return MapFrame(west, south, east, north, left, top, width - left - right, height - top - bottom)


def test_status_map_of_a_county_shows_each_tile_by_state_outlined_and_named(tmp_path: Path) -> None:
    """A 4 x 3 tile run with complete, pending and two reasons of failure: each tile is filled with its state's
    colour (one colour per reason), and the legend shows every colour."""
    tiles = TileSet.from_indices(np.repeat(np.arange(1774, 1778), 3), np.tile(np.arange(1432, 1435), 4))
    plan = plan_tiles(tiles, YEAR)
    names = sorted(plan.tiles)
    done, missing, broken = names[:5], names[5:7], names[7:8]
    store = _store(tmp_path / "store", plan, done,
                   {**{t: "bad-input:MissingFileError" for t in missing}, **{t: "bad-input:CorruptArray" for t in broken}})
    png = tmp_path / "county.png"
    _seconds, output = _status_map(store, png)
    assert "county.png" in output
    picture = np.asarray(Image.open(png).convert("RGB"))
    ix, iy = zip(*(index_from_name(t) for t in names))
    margin = 2
    frame = _frame_of(png, (min(ix) - margin) / 10 - 180, (min(iy) - margin) / 10 - 90,
                      (max(ix) + 1 + margin) / 10 - 180, (max(iy) + 1 + margin) / 10 - 90)
    reasons = {c: [t for t in names if t in group] for c, group in
               ((_rgb(FAILED_COLOURS[0]), missing), (_rgb(FAILED_COLOURS[1]), broken))}
    for tile in names:
        expected = GREEN if tile in done else next((c for c, group in reasons.items() if tile in group), GREY)
        assert _colour_at(picture, frame, tile) == expected, tile
        col, row = frame.pixel(*tile_centre(tile))
        window = picture[row - 8:row + 9, col - 20:col + 21].astype(int)
        assert (np.abs(window - expected).sum(axis=2) > 150).sum() > 50, f"{tile}: no name drawn"
    legend = picture[:, frame.left + frame.width + 10:].reshape(-1, 3)
    for colour in (GREEN, GREY, _rgb(FAILED_COLOURS[0]), _rgb(FAILED_COLOURS[1]), _rgb(LAND), _rgb(SEA)):
        assert (legend == colour).all(axis=1).any(), colour
    again = CliRunner().invoke(cli, ["status", "--store", store, "--map", str(png)])
    assert again.exit_code == 2 and "--overwrite" in again.output, again.output
    assert CliRunner().invoke(cli, ["status", "--store", store, "--map", str(png), "--overwrite"]).exit_code == 1


def test_awaiting_input_tiles_are_drawn_in_their_own_colour_when_the_status_has_them(tmp_path: Path) -> None:
    """The map takes plain arrays: a state named `awaiting-input` gets its own colour, distinct from the others."""
    lon = np.array([-1.55, -1.45, -1.35])
    lat = np.array([53.25, 53.25, 53.25])
    states = ["pending", "complete", "awaiting-input"]
    frame = draw_status_map(lon, lat, np.array([0, 1, 2]), states, tmp_path / "m.png", title="t", land=globe_land_grid())
    picture = np.asarray(Image.open(tmp_path / "m.png").convert("RGB"))
    got = [_colour_at(picture, frame, f"grid_{x:.2f}_{y:.2f}") for x, y in zip(lon, lat)]
    assert got == [GREY, GREEN, BLUE] and len(set(state_colours(states))) == 3


@pytest.mark.slow
def test_status_map_of_the_whole_globe_draws_1_6_million_tiles_from_the_store(tmp_path: Path) -> None:
    """A 1.6 M-tile plan (every land tile) with a complete block in Africa, two failed blocks with different
    reasons and the rest pending: `status --map` draws the world with each block in its state's colour."""
    grid = globe_land_grid()
    iy, ix = np.nonzero(grid)
    plan = PlannedTiles(np.full(len(ix), YEAR, np.int32), TileSet(ix, iy).names(), np.full(len(ix), 10**6, np.int64))
    assert len(plan) > 1_500_000

    def block(lon: float, lat: float) -> list[str]:
        x0, y0 = int((lon + 180) * 10), int((lat + 90) * 10)
        return [f"grid_{(x + 0.5) / 10 - 180:.2f}_{(y + 0.5) / 10 - 90:.2f}" for x in range(x0, x0 + 10)
                for y in range(y0, y0 + 10) if grid[y, x]]

    africa, brazil, siberia = block(20.0, 0.0), block(-55.0, -10.0), block(100.0, 62.0)[:70]
    assert (len(africa), len(brazil), len(siberia)) == (100, 100, 70)
    store = _store(tmp_path / "store", plan, africa,
                   {**{t: "bad-input:MissingFileError" for t in brazil}, **{t: "exhausted:S3Timeout" for t in siberia}})
    png = tmp_path / "globe.png"
    seconds, _ = _status_map(store, png)
    print(f"status --map of {len(plan):,} tiles: {seconds:.1f} s")
    frame = _frame_of(png, -180.0, -60.0, 180.0, 85.0)
    picture = np.asarray(Image.open(png).convert("RGB"))
    colour = {name: _colour_at(picture, frame, tile) for name, tile in
              (("africa", "grid_20.55_0.55"), ("brazil", "grid_-54.45_-9.45"), ("siberia", "grid_100.55_62.55"),
               ("australia", "grid_134.05_-25.05"), ("pacific", "grid_-140.05_-35.05"))}
    assert colour == {"africa": GREEN, "brazil": _rgb(FAILED_COLOURS[0]), "siberia": _rgb(FAILED_COLOURS[1]),
                      "australia": GREY, "pacific": _rgb(SEA)}


def test_the_demo_picture_outlines_names_and_shows_each_tiles_data(tmp_path: Path) -> None:
    """Four 16 x 16 px tiles of 1126 x 690: the picture is not mostly black, and shows each tile's data enlarged."""
    rng = np.random.default_rng(0)
    tiles = []
    for name in ("grid_-1.55_53.25", "grid_-1.45_53.25", "grid_-1.55_53.35", "grid_-1.45_53.35"):
        geo = tile_geometry(name)
        emb = rng.normal(size=(16, 16, 128)).astype(np.float32)
        emb[:4, :4] = np.nan
        tiles.append(TileData(YEAR, name, "v", emb, np.ones((16, 16), np.float32), geo.epsg, geo.transform, marker={}))
    png = tmp_path / "region.png"
    draw_region_tiles(tiles, png, title="demo")
    picture = np.asarray(Image.open(png).convert("RGB")).astype(int)
    black = (picture.sum(axis=2) < 30).mean()
    colourful = (picture.max(axis=2) - picture.min(axis=2) > 60).mean()
    assert black < 0.05 and colourful > 0.1, (black, colourful)


def test_the_run_summary_says_the_pixels_it_encoded() -> None:
    """The demo's tiles are 16 x 16 corners of tiles the plan counts at full size: the summary says 1,024 px
    were encoded, not only the plan's 3,108,015."""
    progress = RunProgress("r1", 4, 0, complete=4, pixels_total=3_108_015, pixels_done=1024,
                           planned_pixels_done=3_108_015, elapsed_s=12.0)
    report = RunReport("r1", "run", 4, 3_108_015, 0, 0, 4, 3_108_015, outcome=RunOutcome(progress, {}))
    out = io.StringIO()
    print_summary(Console(file=out, width=300), report, "store.zarr")
    assert "4 tiles committed, 0 failed, in 0:12: 1,024 px encoded" in out.getvalue()
