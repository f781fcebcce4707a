"""The run's promise under the faults a review reproduced, each as its scenario on a real Ray cluster of two
one-CPU nodes (so there are always two actors): a timed-out tile handed to the other idle actor (and the hung
actor restarted, not killed for good), an actor that fails every tile quarantined without failing good tiles,
and a store whose run record names code or trust flags that `resume` must not honour."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera_pipeline.errors import CheckpointError
from tessera_pipeline.run.session import resume, start
from tessera_pipeline.store import TileStore
from tessera_pipeline.store import layout
from run_support import TILES, YEAR, assert_complete_once, config, make_inputs, small_checkpoint, tileset, with_tests_on_path

pytestmark = pytest.mark.slow

TWENTY = [f"grid_{lon:.2f}_{lat}" for lat in ("53.25", "53.35") for lon in [-1.95 + 0.1 * i for i in range(10)]]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Any]:
    """A head with no CPUs and two worker nodes of one CPU each: one actor per node."""
    import ray
    from ray.cluster_utils import Cluster

    with_tests_on_path()
    c = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _watchdog(seconds: float) -> Any:
    """A progress callback that ends a stalled run with the state it stalled in."""
    deadline = time.monotonic() + seconds

    def check(p: Any) -> None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"stalled: {p.complete}/{p.total} complete, {p.inflight} in flight, "
                               f"{p.retrying} retrying after {seconds:.0f} s")

    return check


@pytest.fixture(scope="module")
def hung_run(two_nodes: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tile hangs on the first actor until the time limit; the retry is due only after that actor is back."""
    work = tmp_path_factory.mktemp("hung")
    make_inputs(work / "inputs")
    small_checkpoint(work / "ckpt.pt")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.INFO)
    run_logger = logging.getLogger("tessera_pipeline.run")
    old_level = run_logger.level
    run_logger.addHandler(handler)
    run_logger.setLevel(logging.INFO)
    try:
        report = start(config(work, window=1, tile_timeout_s=5.0, retry_backoff_s=6.0), tileset(),
                       processor="run_faults:HangOnce", processor_options={"tile": TILES[0], "flag": str(work / "hung")},
                       on_progress=_watchdog(120))
    finally:
        run_logger.removeHandler(handler)
        run_logger.setLevel(old_level)
    return {"work": work, "report": report, "records": records}


def test_a_timed_out_tile_is_retried_on_the_other_idle_actor(hung_run: dict[str, Any]) -> None:
    report, work = hung_run["report"], hung_run["work"]
    assert (work / "hung").exists(), "the fault never fired"
    assert report.outcome is not None and report.outcome.progress.complete == 4
    assert report.outcome.progress.retries_by_reason.get("timeout", 0) == 1
    assert TileStore(str(work / "store.zarr")).marker(YEAR, TILES[0])["provenance"]["attempt"] == 2
    assert_complete_once(str(work / "store.zarr"))


def test_a_restarting_actor_is_waited_for_not_killed_for_good(hung_run: dict[str, Any]) -> None:
    messages = [r.getMessage() for r in hung_run["records"]]
    assert not [m for m in messages if "is dead" in m or "replacing a lost" in m or "quarantin" in m], messages


def test_an_actor_failing_every_tile_is_quarantined_and_no_good_tile_fails(two_nodes: Any, tmp_path: Path) -> None:
    make_inputs(tmp_path / "inputs", TWENTY)
    small_checkpoint(tmp_path / "ckpt.pt")
    failed_there = tmp_path / "failed-on-broken.txt"
    report = start(config(tmp_path, region={"tiles": "unused"}, retry_backoff_s=0.5), tileset(TWENTY),
                   processor="run_faults:BrokenActor",
                   processor_options={"flag": str(tmp_path / "broken"), "delay_s": 0.5, "record": str(failed_there)},
                   on_progress=_watchdog(180))
    assert (tmp_path / "broken").exists(), "no actor was broken"
    assert report.outcome is not None
    progress = report.outcome.progress
    assert (progress.complete, progress.failed) == (20, 0), progress.to_dict()
    assert progress.quarantined >= 1, progress.to_dict()
    assert_complete_once(str(tmp_path / "store.zarr"), TWENTY)
    # Once found, the broken actor is out: it fails its tiles only until three of them succeed elsewhere (left
    # running, or never quarantined, it fails its whole share of the twenty).
    wasted = failed_there.read_text().split()
    assert len(wasted) <= 8, wasted


def _pickled_checkpoint(path: Path) -> Path:
    """A small checkpoint that also pickles a Python object (as some training scripts save their args)."""
    import argparse

    import torch

    small_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    payload["args"] = argparse.Namespace(lr=1e-4)
    torch.save(payload, path)
    return path


def test_resume_takes_no_code_and_no_trust_from_the_store(two_nodes: Any, tmp_path: Path) -> None:
    make_inputs(tmp_path / "inputs")
    _pickled_checkpoint(tmp_path / "ckpt.pt")
    store_dir = tmp_path / "store.zarr"
    first = start(config(tmp_path, trust_checkpoint=True), tileset())
    assert first.outcome is not None and first.outcome.progress.complete == 4
    # Someone with write access to the store edits the run record and drops a tile so resume has work.
    record_key = store_dir / "_run" / "runs" / first.run_id / "run.json"
    record = json.loads(record_key.read_text())
    assert not {"processor", "processor_options", "trust_checkpoint"} & set(record["config"]), record["config"]
    record["config"].update(processor="store_evil:Boom", processor_options={}, trust_checkpoint=True)
    record_key.write_text(json.dumps(record))
    (store_dir / layout.marker_key(YEAR, TILES[3])).unlink()
    flag = Path(tempfile.gettempdir()) / "tessera_store_evil.flag"
    flag.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        resume(str(store_dir))
    report = resume(str(store_dir), trust_checkpoint=True)
    assert not flag.exists(), "code named in the store ran on the cluster"
    assert report.outcome is not None and report.outcome.progress.complete == 1
