"""Failures charged to their cause on evidence, on a real local Ray: poison tiles at the tail of a run end the
run with their reason (no pause, no endless refunds), poison tiles never quarantine healthy actors nor give
up their node, and a tile that kills its worker process is failed for good as `worker-killed` without
charging the tiles prefetched beside it, the same way on every run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tessera_pipeline.cli.main import cli
from tessera_pipeline.run.session import start
from tessera_pipeline.store import TileStore
from run_support import YEAR, config, make_inputs, small_checkpoint, tileset, with_tests_on_path

pytestmark = pytest.mark.slow

CLASS = "cpu-x86_64"
#: Twelve land tiles near Manchester: the first seven good, the last five poison (smaller, so scheduled last).
TWELVE = [f"grid_{lon:.2f}_{lat}" for lat in ("53.25", "53.35") for lon in [-1.95 + 0.1 * i for i in range(6)]]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray whose node declares the class (so actors are placed per node or by demand, as configured)."""
    import ray

    with_tests_on_path()
    ray.init(address="local", num_cpus=4, resources={f"tessera_class:{CLASS}": 4}, include_dashboard=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


def _inputs(work: Path, good: list[str], bad: list[str]) -> None:
    make_inputs(work / "inputs", good, size=(12, 10))
    make_inputs(work / "inputs", bad, size=(8, 8))
    small_checkpoint(work / "ckpt.pt")


def _actors(n: int, *, per_node: bool) -> dict[str, Any]:
    """Run-config overrides for `n` actors: per node (two, one per physical core), or asked of Ray by demand."""
    if per_node:
        return {CLASS: {"cores_per_actor": 1}}
    return {CLASS: {"max_actors": n, "cores_per_actor": 1, "cpus_per_actor": 1}}


def _watchdog(seconds: float, seen: dict[str, bool] | None = None) -> Any:
    """A progress callback that ends a run still going after `seconds` (a stall fails the test, never hangs it)."""
    deadline = time.monotonic() + seconds

    def check(p: Any) -> None:
        if seen is not None:
            seen["paused"] = seen.get("paused", False) or p.paused
        if time.monotonic() > deadline:
            raise RuntimeError(f"still running after {seconds:.0f} s: {p.complete}/{p.total} complete, "
                               f"{p.failed} failed, paused {p.paused}, retries {p.retries_by_reason}")

    return check


def _status(store: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["status", "--store", str(store), "--json"])
    return result.exit_code, result.output


@pytest.mark.parametrize("actors", [2, 4])
def test_poison_tiles_at_the_tail_end_the_run_failed_for_good(local_ray: None, tmp_path: Path, actors: int) -> None:
    good, bad = TWELVE[:2], TWELVE[2:5]
    _inputs(tmp_path, good, bad)
    seen = {"paused": False}
    t0 = time.monotonic()
    report = start(config(tmp_path, region={"tiles": "x"}, max_attempts=2, window=1,
                          node_types=_actors(actors, per_node=actors == 2)),
                   tileset(good + bad), processor="run_faults:RaiseOn", processor_options={"tiles": bad},
                   on_progress=_watchdog(90, seen))
    took = time.monotonic() - t0
    assert report.outcome is not None
    p = report.outcome.progress
    assert (p.complete, p.failed, p.finished) == (2, 3, True), p.to_dict()
    assert p.failed_by_reason == {"error:RuntimeError": 3}, p.to_dict()
    assert not seen["paused"] and p.quarantined == 0, p.to_dict()
    assert took < 60, took
    code, out = _status(tmp_path / "store.zarr")
    assert code == 1 and '"failed": 3' in out and all(t in out for t in bad), out
    assert "unexpected failure on" in out


def test_poison_tiles_never_quarantine_a_healthy_actor_nor_give_up_its_node(local_ray: None, tmp_path: Path) -> None:
    good, bad = TWELVE[:7], TWELVE[7:]
    _inputs(tmp_path, good, bad)
    # Two actors asked of Ray, two CPUs each from Ray but one physical core each: torch must run one thread.
    node_types = {CLASS: {"max_actors": 2, "cores_per_actor": 1, "cpus_per_actor": 2}}
    report = start(config(tmp_path, region={"tiles": "x"}, max_attempts=3, node_types=node_types),
                   tileset(good + bad), processor="run_faults:RaiseOn", processor_options={"tiles": bad},
                   on_progress=_watchdog(120))
    assert report.outcome is not None
    p = report.outcome.progress
    assert (p.complete, p.failed) == (7, 5), p.to_dict()
    assert p.quarantined == 0 and p.given_up_nodes == [], p.to_dict()
    store = TileStore(str(tmp_path / "store.zarr"))
    assert sorted(k.tile for k in store.list_complete(YEAR)) == sorted(good)
    # Each actor claimed one of the node's two cores: one torch thread each, not the two CPUs Ray gave it.
    assert {store.marker(YEAR, t)["provenance"]["threads"] for t in good} == {1}


def _killing_run(work: Path, tiles: list[str], poison: str) -> tuple[int, int, dict[str, int], int, list[str]]:
    report = start(config(work, region={"tiles": "x"}, max_attempts=2, window=2, node_types=_actors(2, per_node=True)),
                   tileset(tiles), processor="run_faults:KillOn", processor_options={"tile": poison},
                   on_progress=_watchdog(120))
    assert report.outcome is not None
    p = report.outcome.progress
    store = TileStore(str(work / "store.zarr"))
    attempts = sorted({int(store.marker(YEAR, t)["provenance"]["attempt"]) for t in tiles if t != poison
                       and store.marker(YEAR, t) is not None})
    return p.complete, p.failed, dict(p.failed_by_reason), p.quarantined, [str(a) for a in attempts]


def test_a_tile_that_kills_its_worker_fails_for_good_alone_the_same_every_run(local_ray: None,
                                                                              tmp_path: Path) -> None:
    tiles = TWELVE[:6]
    poison = tiles[0]
    outcomes = []
    for run in range(5):
        work = tmp_path / f"run{run}"
        _inputs(work, tiles, [])
        outcomes.append(_killing_run(work, tiles, poison))
        code, out = _status(work / "store.zarr")
        assert code == 1 and "worker-killed" in out and poison in out, out
    assert outcomes == [(5, 1, {"worker-killed": 1}, 0, ["1"])] * 5, outcomes
