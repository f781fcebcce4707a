"""The actor pool: which nodes the cluster has, which hardware class each is, the actors placed on them,
and each actor's state (starting, ready, recovering, dead).

Every alive node is classed once (declared resources/labels, Ray's accelerator type, else a
zero-CPU probe task pinned to it) and gets as many actors as it has whole core groups (CPU) or
GPUs. Actors are pinned to their node with hard node affinity, declare `num_cpus`, `num_gpus` and
`memory`, and are restarted in place by Ray (`max_restarts`). A restarting actor is waited for, not
declared dead. Nodes that join later get actors at the next refresh; actors of nodes that died are
dropped and their tiles retried elsewhere. Actors that die for good on a live node are replaced, at
most `MAX_REPLACEMENTS_PER_NODE` per `REPLACEMENT_WINDOW_S`; past that, or after repeated
quarantines, the node is given up and reported (it stays up, and billed, until an operator removes it).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from dataclasses import replace
from typing import Any

from tessera_pipeline.errors import RunError
from tessera_pipeline.run.actors import (
    ActorSlot,
    GivenUpNode,
    death_cause,
    is_restarting,
)
from tessera_pipeline.run.config import RunConfig
from tessera_pipeline.run.messages import TileResult, WorkerSpec
from tessera_pipeline.run.placement import (
    GIB,
    NodePlan,
    needs_probe,
    plan_node,
    probe_node,
)
from tessera_pipeline.run.policy import CLASS_RESOURCE_PREFIX, ClassPolicy, class_policy
from tessera_pipeline.run.worker import TileWorker

log = logging.getLogger(__name__)

ACTOR_MAX_RESTARTS = 3
#: Actors that may die for good on one live node within `REPLACEMENT_WINDOW_S` before the node is given up
#: on (e.g. a GPU that cannot start); older deaths do not count, so a weeks-long run is not capped.
MAX_REPLACEMENTS_PER_NODE = 5
REPLACEMENT_WINDOW_S = 3600.0
#: Quarantines of a node's actors within the window after which the node itself is given up on.
MAX_QUARANTINES_PER_NODE = 2
#: Probes of new nodes: how long the driver waits for them at most per refresh, and the retry backoff cap.
PROBE_WAIT_S = 5.0
PROBE_BACKOFF_CAP_S = 300.0


class Pool:
    """Places actors on the cluster's nodes, tracks each actor's state, and keeps the list current as nodes
    come and go. The scheduler decides what to send where; the pool owns the actors."""

    def __init__(self, config: RunConfig, base: WorkerSpec, checkpoint: list[Any], memory_per_actor: int) -> None:
        self.config = config
        self.base = base
        self.checkpoint = checkpoint
        self.memory_per_actor = memory_per_actor
        self.slots: dict[str, ActorSlot] = {}
        self.node_classes: dict[str, str] = {}
        self._planned_nodes: set[str] = set()
        self._node_plans: dict[str, NodePlan] = {}
        self._replacements: dict[str, deque[float]] = {}
        self._quarantines: dict[str, deque[float]] = {}
        self._dead_nodes: set[str] = set()
        self.given_up: dict[str, GivenUpNode] = {}
        self._probes: dict[str, tuple[Any, float]] = {}
        self._probe_retry: dict[str, tuple[float, int]] = {}
        self._last_refresh = 0.0
        self._counter = 0
        self.last_death = ""
        self.quarantined = 0
        self.checkpoint_loads: list[int] = []
        self.demand = {cls: class_policy(cls, config) for cls in config.node_types
                       if class_policy(cls, config).by_demand}
        self._class_replacements: dict[str, deque[float]] = {}
        self._started_by_class: Counter[str] = Counter()
        self._node_errors: dict[str, str] = {}

    def _collect_probes(self, node_ids: list[str], *, wait_s: float) -> dict[str, dict[str, Any]]:
        """Start probes of nodes that declare no class (all at once, in the background) and collect the finished
        ones; a failed probe is retried with backoff, never stalling the scheduling loop."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        now = time.monotonic()
        probe = ray.remote(num_cpus=0)(probe_node)
        for n in node_ids:
            if n in self._probes or self._probe_retry.get(n, (0.0, 0))[0] > now:
                continue
            ref = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
            self._probes[n] = (ref, now)
        if not self._probes:
            return {}
        refs = {ref: n for n, (ref, _) in self._probes.items()}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=wait_s)
        out: dict[str, dict[str, Any]] = {}
        for ref in done:
            node_id = refs[ref]
            del self._probes[node_id]
            try:
                out[node_id] = ray.get(ref)
                self._probe_retry.pop(node_id, None)
            except Exception as exc:  # a node that cannot run a probe gets no actors until a later try works
                tries = self._probe_retry.get(node_id, (0.0, 0))[1] + 1
                delay = min(PROBE_BACKOFF_CAP_S, 5.0 * 2 ** (tries - 1))
                self._probe_retry[node_id] = (time.monotonic() + delay, tries)
                log.warning("node %s: probe failed (%s); retrying in %.0f s", node_id[:8], death_cause(exc), delay)
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
        started: list[ActorSlot] = self._ensure_demand()
        for slot in list(self.slots.values()):
            if slot.spec.node_id and slot.node_id not in alive and slot.state != "dead":
                log.warning("node %s is gone: dropping actor %s", slot.node_id[:8], slot.key)
                self.kill(slot, restart=False)
                self._dead_nodes.add(slot.node_id)
        started += self._replace_lost(alive)
        new = [n for n in alive if n not in self._planned_nodes]
        if not new:
            return started
        probing = [n for n in new if needs_probe(alive[n])]
        probes = self._collect_probes(probing, wait_s=PROBE_WAIT_S if force else 0.0) if probing else {}
        for node_id in new:
            if node_id in probing and node_id not in probes:
                continue
            self._planned_nodes.add(node_id)
            plan = plan_node(alive[node_id], probes.get(node_id), self.config, self.base, self.memory_per_actor)
            if plan is None or plan.hw_class in self.demand:
                continue
            self.node_classes[node_id] = plan.hw_class
            self._node_plans[node_id] = plan
            for spec in plan.specs:
                started.append(self._start(plan, spec))
        return started

    def _replace_lost(self, alive: dict[str, Any]) -> list[ActorSlot]:
        """Start a new actor for every actor that died for good on a node that is still alive (work in proportion
        to the live actors and planned nodes, never to the dead)."""
        started: list[ActorSlot] = []
        now = time.monotonic()
        have: dict[str, list[WorkerSpec]] = defaultdict(list)
        for s in self.slots.values():
            if s.state != "dead":
                have[s.node_id].append(s.spec)
        for node_id, plan in self._node_plans.items():
            if node_id not in alive or node_id in self.given_up:
                continue
            mine = have.get(node_id, [])
            if len(mine) >= len(plan.specs):
                continue
            recent = self._replacements.setdefault(node_id, deque())
            while recent and now - recent[0] > REPLACEMENT_WINDOW_S:
                recent.popleft()
            for spec in plan.specs:
                if spec in mine:
                    mine.remove(spec)
                elif len(recent) < MAX_REPLACEMENTS_PER_NODE:
                    recent.append(now)
                    log.info("node %s: replacing a lost %s actor", node_id[:8], plan.hw_class)
                    started.append(self._start(plan, spec))
                else:
                    self._give_up(node_id, f"{MAX_REPLACEMENTS_PER_NODE} actors died for good there within "
                                           f"{REPLACEMENT_WINDOW_S / 60:.0f} min")
                    break
        return started

    def _ensure_demand(self) -> list[ActorSlot]:
        """Keep `max_actors` actors asked of Ray for each demand class (within the fleet-wide cap): Ray places
        them where the class's resource is, and the autoscaler starts nodes for the ones it cannot place yet.
        Actors that died for good are asked again, at most `MAX_REPLACEMENTS_PER_NODE` per class per window."""
        if not self.demand:
            return []
        started: list[ActorSlot] = []
        cap = self.config.max_actors
        live = Counter(s.policy.hw_class for s in self.live())
        total = sum(n for cls, n in live.items() if cls in self.demand)
        now = time.monotonic()
        for cls, policy in self.demand.items():
            have = live.get(cls, 0)
            ever = self._started_by_class[cls]
            recent = self._class_replacements.setdefault(cls, deque())
            while recent and now - recent[0] > REPLACEMENT_WINDOW_S:
                recent.popleft()
            for _ in range(int(policy.max_actors or 0) - have):
                if cap is not None and total >= cap:
                    break
                if ever >= int(policy.max_actors or 0):
                    if len(recent) >= MAX_REPLACEMENTS_PER_NODE * int(policy.max_actors or 0):
                        break
                    recent.append(now)
                started.append(self._start_demand(cls, policy))
                total += 1
        return started

    def _start_demand(self, hw_class: str, policy: ClassPolicy) -> ActorSlot:
        """Ask Ray for one actor of a class by its resource; it joins the pool once placed and loaded."""
        import ray

        self._counter += 1
        key = f"{hw_class}#{self._counter}"
        spec = replace(self.base, hw_class=hw_class, node_id="", precision=policy.precision,
                       batch_size=policy.batch_size, device=policy.device, cores=(), threads=0,
                       cores_per_actor=policy.cores_per_actor)
        handle = ray.remote(TileWorker).options(
            num_cpus=policy.demand_cpus, num_gpus=1 if policy.is_gpu else 0,
            memory=(self.memory_per_actor or None) if self.config.demand_memory else None, resources={f"{CLASS_RESOURCE_PREFIX}{hw_class}": 0.001}, max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=0, max_concurrency=self.config.window + 1,
        ).remote(spec)
        slot = ActorSlot(key, "", policy, spec, handle, handle.load.remote(self.checkpoint))
        self.slots[key] = slot
        self._started_by_class[hw_class] += 1
        log.info("asking Ray for a %s actor (%s, batch %d, %.1f CPUs%s)", hw_class, policy.precision,
                 policy.batch_size, policy.demand_cpus, ", 1 GPU" if policy.is_gpu else "")
        return slot

    def _give_up(self, node_id: str, reason: str) -> None:
        """Stop using a node (its actors are killed) and remember why, for `status` and the progress panel."""
        if node_id in self.given_up:
            return
        last = next((s.last_error for s in reversed(list(self.slots.values())) if s.node_id == node_id and s.last_error),
                    self._node_errors.get(node_id) or self.last_death)
        self.given_up[node_id] = GivenUpNode(node_id, self.node_classes.get(node_id, "?"), reason, last, time.time())
        for slot in list(self.slots.values()):
            if slot.node_id == node_id and slot.state != "dead":
                self.kill(slot, restart=False)
        log.error("node %s (%s): giving up on this node: %s; last error: %s. Remove it from the cluster "
                  "(it is still up, and billed)", node_id[:8], self.node_classes.get(node_id, "?"), reason, last)

    def quarantine(self, slot: ActorSlot, reason: str) -> None:
        """Kill an actor that keeps failing while others succeed; it is replaced, and a node whose actors are
        quarantined `MAX_QUARANTINES_PER_NODE` times within the window is given up."""
        slot.last_error = reason
        self.quarantined += 1
        log.warning("actor %s quarantined: %s", slot.key, reason)
        self.kill(slot, restart=False)
        now = time.monotonic()
        recent = self._quarantines.setdefault(slot.node_id, deque())
        recent.append(now)
        while recent and now - recent[0] > REPLACEMENT_WINDOW_S:
            recent.popleft()
        if len(recent) >= MAX_QUARANTINES_PER_NODE:
            self._give_up(slot.node_id, f"{len(recent)} of its actors were quarantined: {reason}")

    def poll_ready(self) -> None:
        """Move starting/recovering actors to ready (or dead) as their `ready()` calls resolve.

        "Temporarily unavailable" (the actor is restarting) is waited for with a fresh `ready()`; only a
        death ends an actor. Workers that cannot load the checkpoint end the run at once.
        """
        import ray

        waiting = {s.ready_ref: s for s in self.live() if s.state in ("starting", "recovering")}
        if not waiting:
            return
        done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in done:
            slot = waiting[ref]
            try:
                info = ray.get(ref)
            except Exception as exc:
                if is_restarting(exc):
                    log.info("actor %s is restarting; waiting for it", slot.key)
                    slot.ready_ref = slot.handle.load.remote(self.checkpoint)
                    continue
                self.last_death = slot.last_error = death_cause(exc)
                log.warning("actor %s is dead: %s", slot.key, self.last_death)
                self.kill(slot, restart=False)
                if "CheckpointError" in str(exc):
                    raise RunError(f"workers cannot load the checkpoint: {self.last_death}") from exc
                continue
            slot.state = "ready"
            slot.head_since = time.monotonic()
            slot.node_id = str(info.get("node_id") or slot.node_id)
            slot.threads = int(info.get("threads") or 0)
            slot.cores = tuple(info.get("cores") or ())
            slot.checkpoint_fetched_bytes = int(info.get("checkpoint_fetched_bytes") or 0)
            self.checkpoint_loads.append(slot.checkpoint_fetched_bytes)
            log.info("actor %s ready (%s, %d threads, cores %s)", slot.key, info.get("worker_id"), slot.threads,
                     list(slot.cores) or "-")

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
        ).remote(spec)
        slot = ActorSlot(key, plan.node_id, class_policy(plan.hw_class, self.config), spec, handle,
                         handle.load.remote(self.checkpoint))
        self.slots[key] = slot
        self._started_by_class[plan.hw_class] += 1
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
            self.recover(slot)
        else:
            slot.state = "dead"
            if slot.last_error:
                self._node_errors[slot.node_id] = slot.last_error
            self.slots.pop(slot.key, None)

    def recover(self, slot: ActorSlot) -> None:
        """Wait for an actor that may be restarting: it takes tiles again once it has (re)loaded its checkpoint."""
        slot.state = "recovering"
        slot.ready_ref = slot.handle.load.remote(self.checkpoint)

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

    def wait(self, refs: list[Any], timeout_s: float) -> list[Any]:
        """The in-flight tiles whose answers have arrived: waits up to `timeout_s` for the first, then takes
        every other one already there."""
        import ray

        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if not ready:
            return []
        more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return list(set(ready) | set(more))

    def result(self, ref: Any) -> TileResult:
        """An arrived answer (raises what Ray raises for a lost actor, node or object)."""
        import ray

        answer: TileResult = ray.get(ref)
        return answer

    def live(self) -> list[ActorSlot]:
        """Slots that are not dead."""
        return [s for s in self.slots.values() if s.state != "dead"]

    def ready(self) -> list[ActorSlot]:
        """Slots that take tiles now."""
        return [s for s in self.slots.values() if s.state == "ready"]

    def gave_up_everywhere(self) -> bool:
        """True when no actor is left and every node planned with actors was given up (actors kept dying there)."""
        with_actors = {n for n, plan in self._node_plans.items() if plan.specs and n not in self._dead_nodes}
        return bool(with_actors) and with_actors <= set(self.given_up) and not self.live()

    def why_given_up(self) -> str:
        """One line naming each given-up node's reason and last error (what `gave_up_everywhere` ends a run with)."""
        parts = [f"node {g.node_id[:8]} ({g.hw_class}): {g.reason}; last error: {g.last_error or 'none recorded'}"
                 for g in self.given_up.values()]
        return "; ".join(parts) or f"the last actor died with: {self.last_death or 'no error recorded'}"

    def node_is_dead(self, node_id: str) -> bool:
        """True once a node was seen gone."""
        return node_id in self._dead_nodes
