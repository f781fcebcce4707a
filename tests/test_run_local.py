"""The run on a local Ray cluster: every tile committed once, bad input failing one tile with its reason,
`--retry-failed`, reprocess of part of a store, and actors that crash or hang mid-tile."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tessera_pipeline.cli.main import cli
from tessera_pipeline.run.session import start
from tessera_pipeline.store import TileStore
from run_support import TILES, YEAR, assert_complete_once, config, make_inputs, small_checkpoint, tileset, with_tests_on_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance for the module (the run joins it instead of starting its own)."""
    import ray

    with_tests_on_path()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Inputs for the four tiles and a small random checkpoint."""
    make_inputs(tmp_path / "inputs")
    small_checkpoint(tmp_path / "ckpt.pt")
    return tmp_path


def _status(store: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["status", "--store", str(store), "--json"])
    return result.exit_code, result.output


def test_run_commits_every_tile_once_with_its_class_precision(local_ray: None, work: Path) -> None:
    report = start(config(work), tileset())
    assert report.outcome is not None and report.outcome.progress.complete == 4
    assert_complete_once(str(work / "store.zarr"))
    store = TileStore(str(work / "store.zarr"))
    prov = store.marker(YEAR, TILES[0])["provenance"]
    assert prov["run_id"] == report.run_id and prov["hardware_class"].startswith("cpu-")
    assert prov["precision"] in ("bf16", "fp32")
    code, out = _status(work / "store.zarr")
    assert code == 0 and '"complete": 4' in out and '"pending": 0' in out
    again = start(config(work), tileset())
    assert (again.already_complete, again.todo, again.outcome) == (4, 0, None)


def test_bad_input_fails_only_its_tile_and_retry_failed_completes_it(local_ray: None, work: Path) -> None:
    broken = work / "inputs" / str(YEAR) / TILES[2] / "bands.npy"
    good = broken.read_bytes()
    broken.write_bytes(good[:200])
    report = start(config(work), tileset())
    assert report.outcome is not None
    assert (report.outcome.progress.complete, report.outcome.progress.failed) == (3, 1)
    code, out = _status(work / "store.zarr")
    assert code == 1 and '"failed": 1' in out and "bad-input:CorruptFileError" in out and TILES[2] in out
    # Without --retry-failed a new run leaves the failed tile out; after the fix, --retry-failed completes it.
    assert start(config(work), tileset()).skipped_failed == 1
    broken.write_bytes(good)
    fixed = start(config(work), tileset(), retry_failed=True)
    assert fixed.todo == 1 and fixed.outcome is not None and fixed.outcome.progress.complete == 1
    assert_complete_once(str(work / "store.zarr"))
    code, out = _status(work / "store.zarr")
    assert code == 0 and '"failed": 0' in out


def test_tiles_whose_inputs_arrive_later_await_them_and_resume_picks_them_up(local_ray: None, tmp_path: Path) -> None:
    """Inputs still being prepared: tiles with no input folder are neither failed nor recorded one by one; they
    are counted as awaiting input, and once their inputs exist `resume` completes them."""
    from tessera_pipeline.run.session import resume

    make_inputs(tmp_path / "inputs", TILES[:2])
    small_checkpoint(tmp_path / "ckpt.pt")
    report = start(config(tmp_path), tileset())
    assert report.outcome is not None and report.outcome.progress.complete == 2
    assert (report.missing_inputs, report.outcome.progress.failed, report.failed_in_plan) == (2, 0, 0)
    code, out = _status(tmp_path / "store.zarr")
    assert code == 0 and '"awaiting_input": 2' in out and '"failed": 0' in out and '"pending": 0' in out, out
    assert '"state": "awaiting-input"' in out, out
    assert not (tmp_path / "store.zarr" / "_run" / "failures").exists()
    make_inputs(tmp_path / "inputs", TILES[2:])
    again = resume(str(tmp_path / "store.zarr"))
    assert again.outcome is not None and again.outcome.progress.complete == 2 and again.missing_inputs == 0
    assert_complete_once(str(tmp_path / "store.zarr"))
    code, out = _status(tmp_path / "store.zarr")
    assert code == 0 and '"awaiting_input": 0' in out and '"complete": 4' in out, out


def test_exhausted_tiles_are_retried_by_default_permanent_ones_on_request(local_ray: None, work: Path) -> None:
    from tessera_pipeline.store.runlog import RunLog

    start(config(work), tileset())
    store = TileStore(str(work / "store.zarr"))
    runlog = RunLog(store.backend)
    for tile, kind in ((TILES[0], "exhausted"), (TILES[1], "permanent")):
        store.backend.delete(f"_commits/{YEAR}/{tile}.json")
        runlog.record_failure(YEAR, tile, {"reason": "io-error" if kind == "exhausted" else "bad-input:DtypeError",
                                           "kind": kind, "message": "from an earlier session"})
    again = start(config(work), tileset())
    assert (again.todo, again.skipped_failed, again.failed_in_plan) == (1, 1, 1)
    assert store.is_complete(YEAR, TILES[0]) and not store.is_complete(YEAR, TILES[1])
    assert [f.tile for f in runlog.failed_tiles()] == [TILES[1]], "a committed tile's record is cleared"
    other = start(config(work), tileset(), retry_failed=True, retry_reason="bad-input:CorruptFileError")
    assert (other.todo, other.skipped_failed) == (0, 1), "--reason picks which permanent failures to retry"
    chosen = start(config(work), tileset(), retry_failed=True, retry_reason="bad-input")
    assert chosen.todo == 1 and chosen.outcome is not None and chosen.outcome.progress.complete == 1
    assert runlog.failed_tiles() == []


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_reprocess_replaces_exactly_its_tiles_with_the_new_checkpoint(local_ray: None, work: Path) -> None:
    from tessera_pipeline.encode.setup import build_encoder
    from tessera_pipeline.inputs.dpixel import open_tile_at

    start(config(work), tileset())
    store_dir = work / "store.zarr"
    untouched = TILES[2:]
    before = {t: _files(store_dir / str(YEAR) / t) for t in untouched}
    markers = {t: (store_dir / "_commits" / str(YEAR) / f"{t}.json").read_bytes() for t in untouched}
    new_ckpt = small_checkpoint(work / "ckpt2.pt", seed=7)
    report = start(config(work, checkpoint=str(new_ckpt)), tileset(TILES[:2]), kind="reprocess")
    assert report.outcome is not None and report.outcome.progress.complete == 2
    store = TileStore(str(store_dir))
    encoder, _ = build_encoder(str(new_ckpt), threads=2)
    for tile in TILES[:2]:
        marker = store.marker(YEAR, tile)
        assert marker["provenance"]["checkpoint_sha256"] == encoder.loaded.checkpoint_sha256
        data = store.read_tile(YEAR, tile)
        expected = encoder.encode(open_tile_at(work / "inputs", YEAR, tile))
        assert np.array_equal(data.embeddings, expected.embeddings)
        assert np.array_equal(data.scales, expected.scales, equal_nan=True)
    for tile in untouched:
        assert _files(store_dir / str(YEAR) / tile) == before[tile]
        assert (store_dir / "_commits" / str(YEAR) / f"{tile}.json").read_bytes() == markers[tile]
    code, out = _status(store_dir)
    assert code == 0 and '"kind": "reprocess"' in out and '"complete": 2' in out


def test_an_actor_killed_mid_tile_loses_nothing(local_ray: None, work: Path) -> None:
    flag = work / "crashed"
    report = start(config(work), tileset(), processor="run_faults:CrashOnce",
                   processor_options={"tile": TILES[1], "flag": str(flag)})
    assert flag.exists(), "the fault never fired"
    assert report.outcome is not None and report.outcome.progress.complete == 4
    assert report.outcome.progress.retries_by_reason.get("actor-lost", 0) >= 1
    assert_complete_once(str(work / "store.zarr"))


def test_a_hung_tile_is_killed_at_the_time_limit_and_retried(local_ray: None, work: Path) -> None:
    flag = work / "hung"
    report = start(config(work, tile_timeout_s=6.0), tileset(), processor="run_faults:HangOnce",
                   processor_options={"tile": TILES[0], "flag": str(flag)})
    assert flag.exists()
    assert report.outcome is not None and report.outcome.progress.complete == 4
    assert report.outcome.progress.retries_by_reason.get("timeout", 0) == 1
    assert_complete_once(str(work / "store.zarr"))
    shutil.rmtree(work / "store.zarr")


def test_workers_that_cannot_start_end_the_run_with_their_cause(local_ray: None, work: Path) -> None:
    from tessera_pipeline.errors import RunError

    with pytest.raises(RunError, match="no worker could start.*CUDA driver version is insufficient"):
        start(config(work), tileset(), processor="run_faults:NeverStarts")
    assert TileStore(str(work / "store.zarr")).list_complete(YEAR) == []
