"""Where a run's actors go: each node's hardware class and core groups, and how much memory an actor declares.

Pure decisions over what Ray reports of a node (its resources, labels and a probe of its CPU), so they are
tested without a cluster; `pool.py` starts the actors these plans describe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from tessera_pipeline.run.config import RunConfig
from tessera_pipeline.run.messages import WorkerSpec
from tessera_pipeline.run.policy import class_policy, declared_class

log = logging.getLogger(__name__)

GIB = 1 << 30
#: Memory an actor needs besides its tiles: torch, the model in two dtypes, pack activations.
BASE_MEMORY = 1 * GIB
#: Bytes per pixel of a tile in flight: int8 + scales out, float pooled vectors, prepared chunk inputs.
BYTES_PER_PIXEL = 1024
def actor_memory(max_pixels: int, window: int, checkpoint_bytes: int) -> int:
    """Ray `memory` an actor declares: base + model copies + `window` tiles of the largest size in flight."""
    return int(BASE_MEMORY + 4 * checkpoint_bytes + window * max_pixels * BYTES_PER_PIXEL)


def probe_node() -> dict[str, Any]:
    """Runs on a node (zero CPUs): its CPU kind and one logical CPU per physical core."""
    import os

    from tessera_pipeline.hardware import detect, physical_cores

    hw = detect("cpu")
    return {"kind": hw.kind, "physical_cores": list(physical_cores(set(range(os.cpu_count() or 1)))),
            "logical_cpus": os.cpu_count() or 1, "cpu_model": hw.cpu_model}


@dataclass(frozen=True)
class NodePlan:
    """The actors one node gets: class, count and per-actor resources and cores."""

    node_id: str
    hw_class: str
    specs: tuple[WorkerSpec, ...]
    num_cpus: float
    num_gpus: float
    memory: int


def plan_node(node: dict[str, Any], probe: dict[str, Any] | None, config: RunConfig, base: WorkerSpec,
              memory_per_actor: int) -> NodePlan | None:
    """Decide a node's actors (None when the node is not for work: no CPUs, no GPUs, or class disabled)."""
    resources, labels = node.get("Resources", {}), node.get("Labels", {}) or {}
    node_id = str(node["NodeID"])
    hw_class = declared_class(resources, labels) or (probe or {}).get("kind")
    cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if hw_class is None or (cpus < 1 and gpus < 1):
        return None
    policy = class_policy(hw_class, config)
    if not policy.enabled:
        log.info("node %s: class %s disabled in the run config", node_id[:8], hw_class)
        return None
    node_memory = int(resources.get("memory", 0))
    if policy.is_gpu:
        count = max(gpus, 1)
        per_cpus = max(1.0, cpus // count) if cpus >= 1 else 0.0
        core_groups: list[tuple[int, ...]] = [()] * count
        threads = [int(per_cpus) or 1] * count
    else:
        phys = list((probe or {}).get("physical_cores") or [])
        logical = int((probe or {}).get("logical_cpus") or len(phys) or 1)
        owns_machine = cpus >= logical
        usable = phys if owns_machine else phys[: max(1, int(cpus))]
        group = policy.cores_per_actor
        count = max(1, len(usable) // group)
        size = group if len(usable) >= group else len(usable)
        core_groups = [tuple(usable[i * size:(i + 1) * size]) if owns_machine else () for i in range(count)]
        threads = [max(1, size)] * count
        per_cpus = max(1.0, cpus // count)
    if node_memory and memory_per_actor and memory_per_actor * count > node_memory:
        fit = max(1, node_memory // max(memory_per_actor, 1))
        log.warning("node %s: memory for %d actors only (%.1f GiB each)", node_id[:8], fit, memory_per_actor / GIB)
        count = min(count, int(fit))
    memory = min(memory_per_actor, int(node_memory * 0.9)) if node_memory and memory_per_actor else memory_per_actor
    specs = tuple(
        replace(base, hw_class=hw_class, node_id=node_id, precision=policy.precision, batch_size=policy.batch_size,
                device=policy.device, cores=core_groups[i], threads=threads[i])
        for i in range(count)
    )
    return NodePlan(node_id, hw_class, specs, per_cpus, 1.0 if policy.is_gpu and gpus else 0.0, memory)


def needs_probe(node: dict[str, Any]) -> bool:
    """True for a CPU node: its class (when undeclared) and its physical cores come from a probe on it, declared
    class or not, so a declared AMX node still gets one thread per physical core (not one thread in all)."""
    resources = node.get("Resources", {})
    if float(resources.get("CPU", 0)) < 1:
        return False
    declared = declared_class(resources, node.get("Labels", {}) or {})
    return declared is None or declared.startswith("cpu-")
