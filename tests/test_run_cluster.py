"""The run on a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`): nodes advertising T4 and
L4 accelerators and a CPU node each get their pool at their class's precision (T4 fp32, L4 bf16), and a node removed
mid-run loses no tile. The GPUs are simulated: the config injects device "cpu" for the cuda classes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera_pipeline.run.progress import RunProgress
from tessera_pipeline.run.session import start
from tessera_pipeline.run.policy import builtin_policy
from tessera_pipeline.store import TileStore
from run_support import YEAR, assert_complete_once, config, make_inputs, small_checkpoint, tileset, with_tests_on_path

pytestmark = pytest.mark.slow

NINE = [f"grid_{lon}_{lat}" for lat in ("53.25", "53.35", "53.45") for lon in ("-1.65", "-1.55", "-1.45")]
SIMULATED_GPUS = {"cuda-T4": {"device": "cpu"}, "cuda-L4": {"device": "cpu"}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head with no CPUs, one CPU node, one T4 node and one L4 node."""
    import ray
    from ray.cluster_utils import Cluster

    with_tests_on_path()
    c = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1})
    c.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:L4": 1})
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine small tiles and a small random checkpoint, shared by the module's runs."""
    root = tmp_path_factory.mktemp("cluster")
    make_inputs(root / "inputs", NINE)
    small_checkpoint(root / "ckpt.pt")
    return root


def _config(root: Path, store: str, **extra: Any) -> Any:
    extra.setdefault("node_types", SIMULATED_GPUS)
    return config(root, store=str(root / store), region={"tiles": "unused"}, **extra)


def test_each_hardware_class_gets_its_pool_and_precision(cluster: Any, inputs: Path) -> None:
    report = start(_config(inputs, "routed.zarr"), tileset(NINE), processor="encode",
                   processor_options={"delay_s": 1.0})
    assert report.outcome is not None and report.outcome.progress.complete == 9
    store = TileStore(str(inputs / "routed.zarr"))
    seen: Counter[tuple[str, str]] = Counter()
    for tile in NINE:
        prov = store.marker(YEAR, tile)["provenance"]
        seen[(prov["hardware_class"], prov["precision"])] += 1
    classes = {cls for cls, _ in seen}
    assert {"cuda-T4", "cuda-L4"} <= classes and any(c.startswith("cpu-") for c in classes), seen
    for cls, precision in seen:
        assert precision == builtin_policy(cls).precision, (cls, precision)
    assert dict(seen).get(("cuda-T4", "fp32")) and dict(seen).get(("cuda-L4", "bf16"))
    assert_complete_once(str(inputs / "routed.zarr"), NINE)


def test_a_node_removed_mid_run_loses_no_tile(cluster: Any, inputs: Path) -> None:
    extra = cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:A10G": 1})
    cluster.wait_for_nodes()
    removed: list[int] = []

    def remove_when_busy(p: RunProgress) -> None:
        if not removed and p.by_class.get("cuda-A10G", {}).get("inflight", 0) >= 1:
            removed.append(p.complete)
            cluster.remove_node(extra, allow_graceful=False)

    node_types = {**SIMULATED_GPUS, "cuda-A10G": {"device": "cpu"}}
    report = start(_config(inputs, "node-loss.zarr", refresh_s=0.5, node_types=node_types), tileset(NINE),
                   on_progress=remove_when_busy, processor_options={"delay_s": 1.0})
    assert removed, "the node was never removed"
    assert report.outcome is not None and report.outcome.progress.complete == 9
    assert report.outcome.progress.failed == 0
    assert report.outcome.progress.retries_by_reason.get("actor-lost", 0) >= 1, report.outcome.progress
    assert_complete_once(str(inputs / "node-loss.zarr"), NINE)


def test_the_cli_joins_a_running_cluster_with_address(cluster: Any, inputs: Path) -> None:
    import json
    import subprocess
    import sys

    store = inputs / "joined.zarr"
    cfg = inputs / "joined.json"
    cfg.write_text(json.dumps({"node_types": {**SIMULATED_GPUS, "cuda-A10G": {"enabled": False}}}))
    cmd = [sys.executable, "-m", "tessera_pipeline.cli", "-v", "run", "--config", str(cfg), "--input", str(inputs / "inputs"),
           "--store", str(store), "--checkpoint", str(inputs / "ckpt.pt"), "--year", str(YEAR),
           "--bbox", "-1.6,53.2,-1.4,53.3", "--address", cluster.address, "--json"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        err = (exc.stderr or b"").decode()
        ours = [ln for ln in err.splitlines() if "tessera_pipeline" in ln and ("WARNING" in ln or "ERROR" in ln)]
        raise AssertionError("run did not finish:\n" + "\n".join(ours[-20:] or [err[-3000:]])) from exc
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["progress"]["complete"] == 2
    # Only the joined cluster has these nodes: a fresh local Ray (--address ignored) has one CPU node.
    store_ = TileStore(str(store))
    nodes = {store_.marker(YEAR, t)["provenance"]["node_id"] for t in ["grid_-1.55_53.25", "grid_-1.45_53.25"]}
    cluster_nodes = {n.node_id for n in cluster.list_all_nodes()}
    assert nodes <= cluster_nodes, (nodes, cluster_nodes)
    assert set(doc["progress"]["by_class"]) & {"cuda-T4", "cuda-L4"}, doc["progress"]["by_class"]
    assert_complete_once(str(store), ["grid_-1.55_53.25", "grid_-1.45_53.25"])


def test_a_declared_cpu_node_uses_every_core_and_the_checkpoint_crosses_once(cluster: Any, inputs: Path) -> None:
    import ray

    amx = cluster.add_node(num_cpus=2, resources={"tessera_class:cpu-amx": 1})
    cluster.wait_for_nodes()
    node_types = {"cuda-T4": {"enabled": False}, "cuda-L4": {"enabled": False}}
    try:
        report = start(_config(inputs, "declared.zarr", node_types=node_types, refresh_s=0.5), tileset(NINE),
                       processor_options={"delay_s": 0.5})
        cpus = {n["NodeID"]: int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")}
    finally:
        cluster.remove_node(amx)
    assert report.outcome is not None and report.outcome.progress.complete == 9
    store = TileStore(str(inputs / "declared.zarr"))
    on_amx = 0
    for tile in NINE:
        prov = store.marker(YEAR, tile)["provenance"]
        assert prov["threads"] == cpus.get(prov["node_id"], prov["threads"]), prov
        if prov["node_id"] == amx.node_id:
            on_amx += 1
            assert prov["hardware_class"] == "cpu-amx" and prov["threads"] == 2 and prov["cores"] == [0, 1], prov
    assert on_amx >= 1, "no tile ran on the declared AMX node"
    progress = report.outcome.progress
    assert progress.checkpoint_loads >= progress.actors >= 2, progress.to_dict()
    assert progress.checkpoint_transfers <= 1, "the checkpoint crossed to this machine more than once"


def test_a_restarted_actor_loads_the_checkpoint_from_its_node_not_over_ray(cluster: Any, tmp_path: Path) -> None:
    import hashlib
    import os
    import time

    import ray

    from tessera_pipeline.run.messages import WorkerSpec
    from tessera_pipeline.run.worker import TileWorker

    blob = os.urandom(1 << 20)  # a checkpoint no node has cached yet (the noop processor does not parse it)
    spec = WorkerSpec("cpu-x86_64", "any", "fp32", 1, "cpu", (), 1, str(tmp_path / "s.zarr"), "in", "c.pt",
                      hashlib.sha256(blob).hexdigest(), processor="noop")
    ref = [ray.put(blob)]
    actor = ray.remote(TileWorker).options(num_cpus=0, max_restarts=1).remote(spec)
    first = ray.get(actor.load.remote(ref), timeout=120)
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 120
    again = first
    while again["pid"] == first["pid"] and time.monotonic() < deadline:
        try:
            again = ray.get(actor.load.remote(ref), timeout=30)
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError):
            time.sleep(0.5)
    ray.kill(actor, no_restart=True)
    assert first["checkpoint_fetched_bytes"] == len(blob), first
    assert again["pid"] != first["pid"] and again["checkpoint_fetched_bytes"] == 0, again
