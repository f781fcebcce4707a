"""The fleet: which nodes the cluster has, which hardware class each is, and the actors placed on them.

Every alive node is classed once (declared resources/labels, Ray's accelerator type, else a
zero-CPU probe task pinned to it) and gets as many actors as it has whole core groups (CPU) or
GPUs. Actors are pinned to their node with hard node affinity, declare `num_cpus`, `num_gpus` and
`memory`, and are restarted in place by Ray (`max_restarts`). Nodes that join later get actors at
the next refresh; actors of nodes that died are dropped and their tiles retried elsewhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from tessera_pipeline.run.config import RunConfig
from tessera_pipeline.run.policy import ClassPolicy, class_policy, declared_class
from tessera_pipeline.run.worker import TileWorker, WorkerSpec

log = logging.getLogger(__name__)

GIB = 1 << 30
#: Memory an actor needs besides its tiles: torch, the model in two dtypes, pack activations.
BASE_MEMORY = 1 * GIB
#: Bytes per pixel of a tile in flight: int8 + scales out, float pooled vectors, prepared chunk inputs.
BYTES_PER_PIXEL = 1024
ACTOR_MAX_RESTARTS = 3
#: Actors that died for good on one live node before it is given up on (e.g. a GPU that cannot start).
MAX_REPLACEMENTS_PER_NODE = 5


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


@dataclass
class ActorSlot:
    """One actor of the fleet and what the driver knows of it."""

    key: str
    node_id: str
    policy: ClassPolicy
    spec: WorkerSpec
    handle: Any
    ready_ref: Any
    state: str = "starting"  # starting | ready | recovering | dead
    inflight: list[Any] = field(default_factory=list)
    head_since: float = 0.0
    tiles_done: int = 0


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


class Fleet:
    """Places actors on the cluster's nodes and keeps the list current as nodes come and go."""

    def __init__(self, config: RunConfig, base: WorkerSpec, checkpoint_holder: str, memory_per_actor: int) -> None:
        self.config = config
        self.base = base
        self.checkpoint_holder = checkpoint_holder
        self.memory_per_actor = memory_per_actor
        self.slots: dict[str, ActorSlot] = {}
        self.node_classes: dict[str, str] = {}
        self._planned_nodes: set[str] = set()
        self._node_plans: dict[str, NodePlan] = {}
        self._replacements: dict[str, int] = {}
        self._dead_nodes: set[str] = set()
        self._given_up: set[str] = set()
        self._last_refresh = 0.0
        self._counter = 0

    def _probe(self, node_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Probe the CPU of nodes that declare no class, all at once."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(probe_node)
        refs = {n: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                for n in node_ids}
        out: dict[str, dict[str, Any]] = {}
        for node_id, ref in refs.items():
            try:
                out[node_id] = ray.get(ref, timeout=120)
            except Exception as exc:  # a node that cannot run a probe gets no actors this round
                log.warning("node %s: probe failed (%s); will retry", node_id[:8], exc)
        return out

    def refresh(self, *, force: bool = False) -> list[ActorSlot]:
        """Find new and dead nodes; start actors on new ones. Returns the slots started now."""
        import ray

        now = time.monotonic()
        if not force and now - self._last_refresh < self.config.refresh_s:
            return []
        self._last_refresh = now
        nodes = ray.nodes()
        alive = {str(n["NodeID"]): n for n in nodes if n.get("Alive")}
        for slot in self.slots.values():
            if slot.node_id not in alive and slot.state != "dead":
                log.warning("node %s is gone: dropping actor %s", slot.node_id[:8], slot.key)
                self.kill(slot, restart=False)
                self._dead_nodes.add(slot.node_id)
        started: list[ActorSlot] = self._replace_lost(alive)
        new = [n for n in alive if n not in self._planned_nodes]
        if not new:
            return started
        needs_probe = [n for n in new if declared_class(alive[n].get("Resources", {}), alive[n].get("Labels", {}) or {}) is None
                       and float(alive[n].get("Resources", {}).get("CPU", 0)) >= 1]
        probes = self._probe(needs_probe) if needs_probe else {}
        for node_id in new:
            if node_id in needs_probe and node_id not in probes:
                continue
            self._planned_nodes.add(node_id)
            plan = plan_node(alive[node_id], probes.get(node_id), self.config, self.base, self.memory_per_actor)
            if plan is None:
                continue
            self.node_classes[node_id] = plan.hw_class
            self._node_plans[node_id] = plan
            for spec in plan.specs:
                started.append(self._start(plan, spec))
        return started

    def _replace_lost(self, alive: dict[str, Any]) -> list[ActorSlot]:
        """Start a new actor for every actor that died for good on a node that is still alive."""
        started: list[ActorSlot] = []
        for node_id, plan in self._node_plans.items():
            if node_id not in alive:
                continue
            have = [s.spec for s in self.slots.values() if s.node_id == node_id and s.state != "dead"]
            for spec in plan.specs:
                if spec in have:
                    have.remove(spec)
                elif self._replacements.get(node_id, 0) < MAX_REPLACEMENTS_PER_NODE:
                    self._replacements[node_id] = self._replacements.get(node_id, 0) + 1
                    log.info("node %s: replacing a lost %s actor", node_id[:8], plan.hw_class)
                    started.append(self._start(plan, spec))
                elif self._replacements[node_id] == MAX_REPLACEMENTS_PER_NODE:
                    self._replacements[node_id] += 1
                    self._given_up.add(node_id)
                    log.error("node %s: %d actors died for good there; giving up on this node",
                              node_id[:8], MAX_REPLACEMENTS_PER_NODE)
        return started

    def _start(self, plan: NodePlan, spec: WorkerSpec) -> ActorSlot:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._counter += 1
        key = f"{plan.hw_class}#{self._counter}@{plan.node_id[:8]}"
        actor_cls = ray.remote(TileWorker)
        handle = actor_cls.options(
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, memory=plan.memory or None,
            max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=0, max_concurrency=self.config.window + 1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(plan.node_id, soft=False),
        ).remote(spec, self.checkpoint_holder)
        slot = ActorSlot(key, plan.node_id, class_policy(plan.hw_class, self.config), spec, handle, handle.ready.remote())
        self.slots[key] = slot
        log.info("starting actor %s (%s, batch %d, cores %s, %.1f GiB)", key, spec.precision, spec.batch_size,
                 spec.cores or "-", plan.memory / GIB)
        return slot

    def kill(self, slot: ActorSlot, *, restart: bool) -> None:
        """Kill an actor: Ray restarts it in place when `restart` (a hung tile), else it is dropped."""
        import ray

        try:
            ray.kill(slot.handle, no_restart=not restart)
        except Exception as exc:  # already gone is fine
            log.debug("kill %s: %s", slot.key, exc)
        if restart:
            slot.state = "recovering"
            slot.ready_ref = slot.handle.ready.remote()
        else:
            slot.state = "dead"

    def release(self) -> None:
        """End the run's actors (after they drop their input caches), freeing their CPUs, GPUs and memory."""
        import ray

        live = [s for s in self.slots.values() if s.state != "dead"]
        try:
            ray.wait([s.handle.shutdown.remote() for s in live], num_returns=len(live), timeout=10)
        except Exception as exc:  # best effort: the caches are per-tile evicted anyway
            log.debug("actor shutdown: %s", exc)
        for slot in live:
            self.kill(slot, restart=False)

    def live(self) -> list[ActorSlot]:
        """Slots that are not dead."""
        return [s for s in self.slots.values() if s.state != "dead"]

    def gave_up_everywhere(self) -> bool:
        """True when no actor is left and every node planned with actors was given up (actors kept dying there)."""
        with_actors = {n for n, plan in self._node_plans.items() if plan.specs and n not in self._dead_nodes}
        return bool(with_actors) and with_actors <= self._given_up and not self.live()

    def node_is_dead(self, node_id: str) -> bool:
        """True once a node was seen gone."""
        return node_id in self._dead_nodes
