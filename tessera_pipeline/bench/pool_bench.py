"""The actor pool's own cost at fleet scale: one refresh of a 1,000-node fleet after 20,000 actor deaths.

A month-long spot run loses actors all day; the pool must not slow down with every one it ever lost.
The real `Pool` is driven with Ray's cluster calls stood in (`ray.nodes` answers the fleet, `ray.kill`
is a no-op), so the timed work is the pool's bookkeeping alone. Run: `python -m tessera_pipeline.bench.pool_bench`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from unittest import mock


@dataclass(frozen=True)
class PoolBench:
    """Refresh times (ms) of a fleet of `nodes` one-actor nodes after `deaths` actors died for good."""

    nodes: int
    deaths: int
    slots_kept: int
    refresh_ms_min: float
    refresh_ms_median: float
    refresh_ms_max: float


def measure_pool_refresh(nodes: int = 1000, deaths: int = 20_000, repeats: int = 5) -> PoolBench:
    """Build a pool of `nodes` planned nodes with one live actor each, let `deaths` actors die (each replaced),
    then time `refresh(force=True)`."""
    import ray

    from tessera_pipeline.run.actors import ActorSlot
    from tessera_pipeline.run.config import build_config
    from tessera_pipeline.run.messages import WorkerSpec
    from tessera_pipeline.run.placement import NodePlan
    from tessera_pipeline.run.policy import class_policy
    from tessera_pipeline.run.pool import Pool

    config = build_config({"input": "in", "store": "s", "checkpoint": "c.pt", "year": 2024})
    base = WorkerSpec("cpu-x86_64", "", "fp32", 256, "cpu", (), 8, "s", "in", "c.pt", "0" * 64)
    pool = Pool(config, base, [], 0)
    policy = class_policy("cpu-x86_64", config)
    fleet = [{"NodeID": f"{i:056x}", "Alive": True, "Resources": {"CPU": 16.0}, "Labels": {}} for i in range(nodes)]
    for node in fleet:
        node_id = node["NodeID"]
        spec = replace(base, node_id=node_id)
        pool._planned_nodes.add(node_id)
        pool._node_plans[node_id] = NodePlan(node_id, "cpu-x86_64", (spec,), 16.0, 0.0, 0)
        pool.node_classes[node_id] = "cpu-x86_64"
    counter = 0

    def add(node_id: str) -> ActorSlot:
        nonlocal counter
        counter += 1
        slot = ActorSlot(f"cpu#{counter}@{node_id[:8]}", node_id, policy, pool._node_plans[node_id].specs[0], object(),
                         None, state="ready")
        pool.slots[slot.key] = slot
        return slot

    with mock.patch.object(ray, "nodes", lambda: fleet), mock.patch.object(ray, "kill", lambda *a, **k: None):
        live = {node["NodeID"]: add(node["NodeID"]) for node in fleet}
        for n in range(deaths):
            node_id = fleet[n % nodes]["NodeID"]
            pool.kill(live[node_id], restart=False)
            live[node_id] = add(node_id)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            started = pool.refresh(force=True)
            times.append(1000 * (time.perf_counter() - t0))
            assert not started, "the benchmark's fleet is complete: a refresh must start nothing"
    return PoolBench(nodes, deaths, len(pool.slots), round(min(times), 2), round(statistics.median(times), 2),
                     round(max(times), 2))


def main() -> None:
    """Print the benchmark as JSON."""
    print(json.dumps(asdict(measure_pool_refresh()), indent=1))


if __name__ == "__main__":
    main()

