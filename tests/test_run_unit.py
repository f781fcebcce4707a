"""The run layer's decisions without a cluster: config validation, routing policy, actor placement,
plan order and bookkeeping, failure classification, and the commands' one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tessera_pipeline.cli.main import cli
from tessera_pipeline.errors import (
    CheckpointError,
    ConfigError,
    MissingFileError,
    RemoteInputError,
    ShapeMismatchError,
    StoreError,
)
from tessera_pipeline.run.config import build_config
from tessera_pipeline.run.failures import classify
from tessera_pipeline.run.placement import actor_memory, plan_node
from tessera_pipeline.run.policy import builtin_policy, class_policy, declared_class
from tessera_pipeline.run.messages import WorkerSpec
from tessera_pipeline.run.completion import plan_mask
from tessera_pipeline.run.workplan import plan_tiles, split_plan
from tessera_pipeline.store.backend import LocalBackend
from tessera_pipeline.store.runlog import FailedTile, RunLog, decode_plan, encode_plan
from run_support import BBOX, TILES, YEAR, make_inputs, tileset

BASE = dict(input="in", store="s", checkpoint="c.pt", year=2024)
SPEC = WorkerSpec("", "", "fp32", 1, "cpu", (), 1, "s", "in", "c.pt", "0" * 64)


def test_config_rejects_unknown_keys_and_bad_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'windw'"):
        build_config({**BASE, "windw": 3})
    with pytest.raises(ConfigError, match="node_types.cuda-T4.precison"):
        build_config({**BASE, "node_types": {"cuda-T4": {"precison": "fp16"}}})
    with pytest.raises(ConfigError, match="window"):
        build_config({**BASE, "window": 0})
    with pytest.raises(ConfigError, match="unknown hardware class 'gpu-T4'"):
        build_config({**BASE, "node_types": {"gpu-T4": {"precision": "fp32"}}})
    with pytest.raises(ConfigError, match="choose one region selector"):
        build_config({**BASE, "region": {"bbox": BBOX, "global": True}})


def test_precision_policy_per_class_and_overrides() -> None:
    assert builtin_policy("cuda-T4").precision == "fp32"  # fp16 is a run-config option, unmeasured on a T4
    assert builtin_policy("cuda-P100").precision == "fp32"
    for gpu in ("L4", "A10G", "L40S", "A100", "H100"):
        assert builtin_policy(f"cuda-{gpu}").precision == "bf16"
    assert builtin_policy("cpu-amx").precision == "bf16"
    assert builtin_policy("cpu-avx512bf16").precision == "bf16"
    assert builtin_policy("cpu-avx512").precision == "fp32"
    assert builtin_policy("cpu-x86_64").precision == "fp32"
    cfg = build_config({**BASE, "node_types": {"cuda-T4": {"precision": "fp16", "batch_size": 4096},
                                               "cpu-amx": {"cores_per_actor": 4}}})
    t4 = class_policy("cuda-T4", cfg)
    assert (t4.precision, t4.batch_size) == ("fp16", 4096)
    assert class_policy("cpu-amx", cfg).cores_per_actor == 4
    assert class_policy("cpu-amx", cfg).precision == "bf16"


def test_nodes_are_classed_by_declared_class_then_accelerator_then_probe() -> None:
    assert declared_class({"CPU": 16, "tessera_class:cpu-amx": 1}, {}) == "cpu-amx"
    assert declared_class({"CPU": 16}, {"tessera/class": "cpu-amx"}) == "cpu-amx"
    assert declared_class({"CPU": 8, "GPU": 1, "accelerator_type:T4": 1}, {}) == "cuda-T4"
    assert declared_class({"CPU": 8, "GPU": 1}, {"ray.io/accelerator-type": "L4"}) == "cuda-L4"
    assert declared_class({"CPU": 8}, {}) is None


def _node(cpus: float, gpus: int = 0, memory: float = 64e9, **extra: float) -> dict:
    return {"NodeID": "n" * 56, "Resources": {"CPU": cpus, "GPU": gpus, "memory": memory, **extra}, "Labels": {}}


def test_cpu_nodes_get_one_actor_per_whole_group_of_physical_cores_pinned_without_siblings() -> None:
    cfg = build_config(BASE)
    # 32 logical CPUs, 16 physical cores (siblings left out): two actors of 8 cores each.
    probe = {"kind": "cpu-amx", "physical_cores": list(range(16)), "logical_cpus": 32}
    plan = plan_node(_node(32), probe, cfg, SPEC, actor_memory(776_940, 2, 230_000_000))
    assert plan is not None and len(plan.specs) == 2
    assert [s.cores for s in plan.specs] == [tuple(range(8)), tuple(range(8, 16))]
    assert all(s.threads == 8 and s.precision == "bf16" for s in plan.specs)
    assert plan.num_cpus == 16
    # A smaller node: one actor on all its physical cores.
    small = plan_node(_node(8), {"kind": "cpu-x86_64", "physical_cores": [0, 1, 2, 3], "logical_cpus": 8}, cfg, SPEC, 2**30)
    assert small is not None and [s.cores for s in small.specs] == [(0, 1, 2, 3)]
    assert small.specs[0].precision == "fp32"


def test_memory_per_actor_limits_actors_per_node() -> None:
    cfg = build_config(BASE)
    per_actor = actor_memory(776_940, 2, 230_000_000)
    assert 3 * 2**30 < per_actor < 4 * 2**30
    probe = {"kind": "cpu-amx", "physical_cores": list(range(32)), "logical_cpus": 64}
    plan = plan_node(_node(64, memory=per_actor * 2.5), probe, cfg, SPEC, per_actor)
    assert plan is not None and len(plan.specs) == 2


def test_gpu_nodes_get_one_actor_per_gpu_at_their_class_precision() -> None:
    cfg = build_config({**BASE, "node_types": {"cuda-L4": {"device": "cpu"}}})
    t4 = plan_node(_node(8, 1, **{"accelerator_type:T4": 1}), None, cfg, SPEC, 2**30)
    assert t4 is not None and t4.hw_class == "cuda-T4" and t4.num_gpus == 1
    assert [s.precision for s in t4.specs] == ["fp32"] and t4.specs[0].device == "cuda"
    l4 = plan_node(_node(16, 2, **{"accelerator_type:L4": 1}), None, cfg, SPEC, 2**30)
    assert l4 is not None and len(l4.specs) == 2 and l4.num_cpus == 8
    assert {s.precision for s in l4.specs} == {"bf16"} and l4.specs[0].device == "cpu"
    off = build_config({**BASE, "node_types": {"cuda-T4": {"enabled": False}}})
    assert plan_node(_node(8, 1, **{"accelerator_type:T4": 1}), None, off, SPEC, 2**30) is None


def test_plan_is_largest_first_and_leaves_out_complete_and_failed_tiles() -> None:
    ts = tileset(["grid_-1.55_53.25", "grid_-1.55_70.05", "grid_10.05_0.05"])
    plan = plan_tiles(ts, YEAR)
    assert list(plan.pixels) == sorted(plan.pixels, reverse=True)
    assert plan.tiles[0] == "grid_10.05_0.05" and plan.tiles[-1] == "grid_-1.55_70.05"
    complete = plan_mask(plan, {(YEAR, "grid_10.05_0.05")})
    split = split_plan(plan, complete, plan_mask(plan, {(YEAR, "grid_-1.55_53.25")}))
    assert split.todo.tiles == ["grid_-1.55_70.05"] and (split.complete, split.failed) == (1, 1)
    again = split_plan(plan, complete, plan_mask(plan, set()))
    assert again.todo.tiles == ["grid_-1.55_53.25", "grid_-1.55_70.05"]
    round_trip = decode_plan(encode_plan(plan))
    assert round_trip.tiles == plan.tiles and np.array_equal(round_trip.pixels, plan.pixels)


def test_failure_records_live_in_the_store_and_clear(tmp_path: Path) -> None:
    log = RunLog(LocalBackend(tmp_path / "s.zarr"))
    log.record_failure(YEAR, TILES[0], {"reason": "bad-input:MissingFileError", "message": "x"})
    log.record_failure(YEAR, TILES[1], {"reason": "io-error", "kind": "exhausted", "message": "503"})
    assert set(log.failed_tiles(YEAR)) == {FailedTile(YEAR, TILES[0], "permanent"), FailedTile(YEAR, TILES[1], "exhausted")}
    assert log.failure(YEAR, TILES[0])["reason"] == "bad-input:MissingFileError"
    log.record_failure(YEAR, TILES[1], {"reason": "bad-input:CorruptFileError", "message": "y"})
    assert FailedTile(YEAR, TILES[1], "permanent") in log.failed_tiles(YEAR)
    assert len(log.failed_tiles(YEAR)) == 2, "a tile has one record at a time"
    log.clear_failure(YEAR, TILES[0])
    log.clear_failure(YEAR, TILES[1])
    assert log.failed_tiles() == []


def test_bad_input_and_checkpoints_are_permanent_cloud_trouble_is_transient() -> None:
    assert classify(MissingFileError("gone", tile="t")).kind == "permanent"
    assert classify(ShapeMismatchError("bad", tile="t")).reason == "bad-input:ShapeMismatchError"
    assert classify(CheckpointError("bad")).kind == "permanent"
    assert classify(RemoteInputError("503", tile="t")).kind == "transient"
    assert classify(StoreError("503 SlowDown")).kind == "transient"
    assert classify(ConnectionResetError("reset")).reason == "io-error"


def test_run_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "run.yaml"
    bad.write_text("input: in\nstore: s\ncheckpoint: c\nyear: 2024\nwindo: 3\n")
    cases = [
        (["run", "--config", str(bad), "--bbox", BBOX], "unknown key 'windo'"),
        (["run", "--store", "s", "--checkpoint", "c", "--year", "2024", "--bbox", BBOX], "missing --input"),
        (["run", "--input", "i", "--store", "s", "--checkpoint", "c", "--year", "2024"], "no region"),
        (["status", "--store", str(tmp_path / "nothing.zarr")], "nothing.zarr does not exist"),
        (["resume", "--store", str(tmp_path / "nothing.zarr")], "nothing.zarr does not exist"),
        (["reprocess", "--store", str(tmp_path / "nothing.zarr"), "--bbox", BBOX], "nothing.zarr does not exist"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_dry_run_plans_and_writes_nothing(tmp_path: Path) -> None:
    from run_support import small_checkpoint

    ckpt = small_checkpoint(tmp_path / "ckpt.pt")
    store = tmp_path / "store.zarr"
    make_inputs(tmp_path / "in", TILES[:3])
    out = subprocess.run(
        [sys.executable, "-m", "tessera_pipeline.cli", "run", "--input", str(tmp_path / "in"), "--store", str(store),
         "--checkpoint", str(ckpt), "--year", "2024", "--bbox", BBOX, "--dry-run", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["tiles"] == 4 and doc["todo_tiles"] == 3 and doc["pixels"] > 3_000_000
    assert {e["hw_class"] for e in doc["estimates"]} >= {"cpu-amx", "cuda-T4"}
    assert doc["missing_inputs"] == doc["awaiting_input"] == 1, "one of the four planned tiles has no inputs yet"
    assert not store.exists()


class _FakeHandle:
    """Stands in for an actor handle: `process.remote(req)` records the request and returns a token."""

    def __init__(self, sent: list[tuple[str, str]], key: str) -> None:
        self.process = self
        self.sent, self.key = sent, key

    def remote(self, req: Any) -> tuple[str, str]:
        self.sent.append((self.key, req.tile))
        return (self.key, req.tile)


class _FakePool:
    def __init__(self, slots: list[Any]) -> None:
        self.slots = slots

    def ready(self) -> list[Any]:
        return [s for s in self.slots if s.state == "ready"]

    def live(self) -> list[Any]:
        return list(self.slots)


def test_a_due_retry_avoided_by_the_first_actor_goes_to_the_next_idle_one(tmp_path: Path) -> None:
    """The end-of-run stall: the first actor must not take the retry (it timed out on it) and has nothing
    else; the loop must go on to the other idle actor instead of returning for all of them."""
    from tessera_pipeline.run.actors import ActorSlot
    from tessera_pipeline.run.progress import RecordWriter
    from tessera_pipeline.run.scheduler import Scheduler

    sent: list[tuple[str, str]] = []
    policy = builtin_policy("cpu-x86_64")
    slots = [ActorSlot(key, "node", policy, SPEC, _FakeHandle(sent, key), None, state="ready") for key in ("A", "B")]
    plan = plan_tiles(tileset(TILES[:1]), YEAR)
    runlog = RunLog(LocalBackend(tmp_path / "s.zarr"))
    records = RecordWriter(runlog, "r")
    try:
        sched = Scheduler(run_id="r", todo=plan, already_complete=0, pool=_FakePool(slots), records=records,  # type: ignore[arg-type]
                          known_failures=set(), config=build_config({**BASE, "window": 1}))
        sched.queue.clear()
        sched.retry_heap.append((0.0, 0))
        sched.avoid[0].add("A")
        sched._assign(now=1.0)
    finally:
        records.flush(1.0)
    assert sent == [("B", TILES[0])]


def test_tiles_lost_to_spot_preemption_are_retried_uncharged_without_quarantine_or_pause(tmp_path: Path) -> None:
    """A spot fleet loses nodes all day: a tile lost with a preempted node (Ray's ActorDiedError with
    `preempted`) is requeued without spending an attempt, however often it happens, and neither the actor
    nor the fleet is judged by it (no quarantine streak, no circuit-breaker pause)."""
    from ray.exceptions import ActorDiedError

    from tessera_pipeline.run.failures import classify
    from tessera_pipeline.run.actors import ActorSlot
    from tessera_pipeline.run.progress import RecordWriter
    from tessera_pipeline.run.scheduler import Scheduler

    preempted = ActorDiedError()
    preempted._preempted = True  # what Ray sets when the node died as AUTOSCALER_DRAIN_PREEMPTED
    info = classify(preempted)
    assert (info.kind, info.reason) == ("transient", "preempted")
    assert classify(ActorDiedError()).reason == "actor-lost"

    policy = builtin_policy("cpu-x86_64")
    slots = [ActorSlot(key, "node", policy, SPEC, _FakeHandle([], key), None, state="ready") for key in ("A", "B")]
    plan = plan_tiles(tileset(TILES[:1]), YEAR)
    records = RecordWriter(RunLog(LocalBackend(tmp_path / "s.zarr")), "r")
    try:
        sched = Scheduler(run_id="r", todo=plan, already_complete=0, pool=_FakePool(slots), records=records,  # type: ignore[arg-type]
                          known_failures=set(), config=build_config({**BASE, "max_attempts": 2}))
        for n in range(10):
            sched._fail(0, info, slots[n % 2], now=float(n))
    finally:
        records.flush(1.0)
    assert int(sched.attempts[0]) == 0 and not sched.final[0] and sched.progress.failed == 0
    assert len(sched.retry_heap) == 10 and sched.retries_by_reason["preempted"] == 10
    assert not sched.evidence.tiles and not sched.outage.paused and all(s.state == "ready" for s in slots)
