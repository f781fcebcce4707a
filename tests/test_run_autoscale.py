"""Ray-native placement on an autoscaling cluster (`ray.cluster_utils.AutoscalingCluster`, Ray's fake multi-node
provider on this machine): the cluster starts with no worker node and two worker node types, a CPU class and a
simulated `cuda-L4` class declared by resources. The run's pending actors make the autoscaler start nodes of
both types, the run completes on them, and the idle nodes are released after it."""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera_pipeline.run.session import start
from tessera_pipeline.store import TileStore
from run_support import YEAR, assert_complete_once, config, make_inputs, small_checkpoint, tileset, with_tests_on_path

pytestmark = pytest.mark.slow

SIX = ["grid_-1.55_53.25", "grid_-1.45_53.25", "grid_-1.55_53.35", "grid_-1.45_53.35", "grid_-1.65_53.25",
       "grid_-1.65_53.35"]
#: The fake multi-node provider's cluster config (Ray's wheel does not ship the example file it reads).
BASE = {
    "cluster_name": "fake_multinode", "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {"ssh_user": "ubuntu"}, "docker": {}, "head_node_type": "ray.head.default",
    "upscaling_speed": 1.0, "idle_timeout_minutes": 0.05,
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [],
}
WORKER_TYPES = {
    "cpu": {"resources": {"CPU": 1, "tessera_class:cpu-x86_64": 1}, "node_config": {}, "min_workers": 0,
            "max_workers": 2},
    "l4": {"resources": {"CPU": 1, "GPU": 1, "tessera_class:cuda-L4": 1, "accelerator_type:L4": 1}, "node_config": {},
           "min_workers": 0, "max_workers": 1},
}
NODE_TYPES = {
    "cpu-x86_64": {"max_actors": 2, "cores_per_actor": 1, "cpus_per_actor": 1},
    "cuda-L4": {"max_actors": 1, "device": "cpu", "cpus_per_actor": 1},
}


def _alive_workers() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]


@pytest.fixture(scope="module")
def autoscaling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A head with no CPUs and an autoscaler that may start up to two CPU nodes and one L4 node."""
    import ray
    from ray.cluster_utils import AutoscalingCluster

    class Fake(AutoscalingCluster):
        def _generate_config(self, head_resources: dict, worker_node_types: dict, autoscaler_v2: bool = False,
                             **kwargs: Any) -> dict:
            generated = copy.deepcopy(BASE)
            generated["available_node_types"] = {
                **worker_node_types, "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0}}
            generated.update(kwargs)
            return generated

    with_tests_on_path()
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    cluster = Fake(head_resources={"CPU": 0}, worker_node_types=copy.deepcopy(WORKER_TYPES))
    cluster.start()
    ray.init("auto", logging_level="WARNING")
    work = tmp_path_factory.mktemp("autoscale")
    make_inputs(work / "inputs", SIX)
    small_checkpoint(work / "ckpt.pt")
    try:
        yield work
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_pending_actors_make_the_autoscaler_start_nodes_of_both_types_then_release_them(autoscaling: Path) -> None:
    work = autoscaling
    assert _alive_workers() == [], "the cluster must start with no worker node"
    seen: dict[str, int] = {}

    def count_nodes(_: Any) -> None:
        for node in _alive_workers():
            kind = "l4" if node["Resources"].get("GPU") else "cpu"
            seen[node["NodeID"]] = 1 if kind == "cpu" else 2

    # The fake provider's node types cannot declare memory, so the actors do not ask for it here.
    report = start(config(work, region={"tiles": "x"}, node_types=NODE_TYPES, demand_memory=False), tileset(SIX),
                   processor_options={"delay_s": 0.5}, on_progress=count_nodes)
    assert report.outcome is not None and report.outcome.progress.complete == len(SIX)
    assert sorted(set(seen.values())) == [1, 2], f"the autoscaler started no node of some type: {seen}"
    store = TileStore(str(work / "store.zarr"))
    classes = {store.marker(YEAR, t)["provenance"]["hardware_class"] for t in SIX}
    assert classes <= {"cpu-x86_64", "cuda-L4"} and classes, classes
    assert_complete_once(str(work / "store.zarr"), SIX)
    deadline = time.monotonic() + 90
    while _alive_workers() and time.monotonic() < deadline:
        time.sleep(1)
    assert _alive_workers() == [], "idle nodes must be released after the run"
