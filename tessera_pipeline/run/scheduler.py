"""The scheduling loop: a bounded window of tiles in flight per ready actor, retries, time limits, and the
policies that charge each failure to its cause.

Every idle actor gets work while any tile is due: a due retry first (not on an actor it failed on, when
another can take it), else the largest tile left. Transient failures are retried with backoff
(`RetryPolicy`) and charged unless evidence says otherwise (`attribution.py`: actors at fault are
quarantined and refunded, an outage is a failed probe of the store or inputs, a tile that kills its
worker runs alone until it is proven guilty). New tiles go out only while the lease was renewed within
half its TTL. Store writes go through `RecordWriter`, never blocking the loop. The scheduler never
holds tile data: workers return small `TileResult`s.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera_pipeline.errors import RunError
from tessera_pipeline.run.actors import ActorSlot, is_restarting
from tessera_pipeline.run.attribution import DEATHS, Attribution, OutagePolicy
from tessera_pipeline.run.charging import UNCHARGED_RETRY_S, Charging
from tessera_pipeline.run.config import RunConfig
from tessera_pipeline.run.failures import FailureInfo, classify
from tessera_pipeline.run.lease import StoreLease
from tessera_pipeline.run.messages import TileRequest
from tessera_pipeline.run.pool import Pool
from tessera_pipeline.run.probe import Prober
from tessera_pipeline.run.progress import (
    ClassStats,
    EncodeSpans,
    Metrics,
    RecordWriter,
    RunOutcome,
    RunProgress,
    class_throughput,
)
from tessera_pipeline.run.worker import RESTARTED
from tessera_pipeline.store.runlog import PlannedTiles

log = logging.getLogger(__name__)

#: How long a run may have work but no actor able to take it before it gives up.
NO_WORKERS_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for a tile's next try, and how many tries a tile gets."""

    max_attempts: int
    backoff_s: float
    max_backoff_s: float = 300.0

    def delay(self, attempts: int) -> float:
        """Seconds before try `attempts + 1`."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(attempts - 1, 0)) * (0.5 + random.random())


@dataclass
class _Inflight:
    slot: ActorSlot
    index: int
    submitted: float


class Scheduler(Charging):
    """Schedules one run's remaining tiles onto the pool until each is complete or failed for good."""

    def __init__(
        self,
        *,
        run_id: str,
        todo: PlannedTiles,
        already_complete: int,
        pool: Pool,
        records: RecordWriter,
        known_failures: set[tuple[int, str]],
        config: RunConfig,
        lease: StoreLease | None = None,
        fenced_store: bool = True,
        prober: Prober | None = None,
        on_progress: Callable[[RunProgress], None] | None = None,
        stop_after: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.todo = todo
        self.pool = pool
        self.records = records
        self.known_failures = known_failures
        self.config = config
        self.lease = lease
        self.fenced_store = fenced_store
        self.prober = prober
        self.retry = RetryPolicy(config.max_attempts, config.retry_backoff_s)
        self.evidence = Attribution(config.quarantine_after)
        self.outage = OutagePolicy(pause_max_s=config.max_pause_s)
        self.on_progress = on_progress
        self.stop_after = stop_after
        self.queue: deque[int] = deque(range(len(todo)))
        self.retry_heap: list[tuple[float, int]] = []
        self.attempts = np.zeros(len(todo), dtype=np.int32)
        self.final = np.zeros(len(todo), dtype=bool)
        self.avoid: dict[int, set[str]] = defaultdict(set)
        self.inflight: dict[Any, _Inflight] = {}
        self.timed_out: set[Any] = set()
        self.deaths: dict[str, set[Any]] = {}
        self.by_class: dict[str, ClassStats] = defaultdict(ClassStats)
        self.failed_by_reason: Counter[str] = Counter()
        self.retries_by_reason: Counter[str] = Counter()
        self.spans: defaultdict[str, EncodeSpans] = defaultdict(EncodeSpans)
        self.metrics = Metrics(run_id)
        self.progress = RunProgress(run_id, len(todo), already_complete, pixels_total=todo.total_pixels)
        self._t0 = 0.0
        self._last_failure: dict[int, tuple[FailureInfo, str]] = {}

    # --- scheduling ----------------------------------------------------------------------

    def _elsewhere(self, index: int, slot: ActorSlot) -> bool:
        """True when a tile should not go to `slot`: it failed there, and some other live actor has not failed it."""
        avoided = self.avoid.get(index)
        if not avoided or slot.key not in avoided:
            return False
        return any(s.key not in avoided for s in self.pool.live() if s is not slot)

    def _next_index(self, slot: ActorSlot, now: float) -> int | None:
        """The next tile for an actor: a due retry first (not one better done elsewhere; a suspect only to an
        idle actor, alone), else the largest left."""
        skipped: list[tuple[float, int]] = []
        chosen = None
        while self.retry_heap and self.retry_heap[0][0] <= now:
            item = heapq.heappop(self.retry_heap)
            if self._elsewhere(item[1], slot) or (slot.inflight and self.evidence.is_suspect(item[1])):
                skipped.append(item)
                continue
            chosen = item[1]
            break
        for item in skipped:
            heapq.heappush(self.retry_heap, item)
        if chosen is not None:
            return chosen
        return self.queue.popleft() if self.queue else None

    def _submit(self, slot: ActorSlot, index: int, now: float) -> None:
        generation = self.lease.generation if self.lease is not None else 0
        req = TileRequest(int(self.todo.years[index]), self.todo.tiles[index], int(self.attempts[index]) + 1,
                          generation)
        ref = slot.handle.process.remote(req)
        self.inflight[ref] = _Inflight(slot, index, now)
        if not slot.inflight:
            slot.head_since = now
        slot.inflight.append(ref)

    def _may_dispatch(self, now: float) -> bool:
        """New tiles go out only while no probe-proven outage holds and the lease was renewed recently."""
        if self.outage.paused:
            return False
        return self.lease is None or self.lease.may_dispatch()

    def _assign(self, now: float) -> None:
        """Fill every ready actor's window; an actor with nothing it should take leaves the rest to the others.
        An actor running a suspect (a tile that was in flight when a worker died) gets nothing else meanwhile."""
        if not self._may_dispatch(now):
            return
        for slot in self.pool.ready():
            while len(slot.inflight) < self.config.window:
                if any(self.evidence.is_suspect(self.inflight[r].index) for r in slot.inflight):
                    break
                index = self._next_index(slot, now)
                if index is None:
                    break
                self._submit(slot, index, now)

    # --- results -------------------------------------------------------------------------

    def _collect(self, ref: Any, now: float) -> None:
        item = self.inflight.pop(ref)
        slot = item.slot
        was_head = bool(slot.inflight) and slot.inflight[0] == ref
        if ref in slot.inflight:
            slot.inflight.remove(ref)
        if was_head:
            slot.head_since = now
        try:
            result = self.pool.result(ref)
        except Exception as exc:  # Ray system failures: the actor or its node died, or we killed it
            info = classify(exc)
            timed_out = ref in self.timed_out
            if timed_out:
                info = FailureInfo("transient", "timeout", f"no result after {self.config.tile_timeout_s:.0f} s; actor killed")
                self.timed_out.discard(ref)
            elif is_restarting(exc) and not self.fenced_store and slot.state == "ready":
                log.info("tile %s: outcome unknown on %s; restarting the actor before the retry (no conditional "
                         "writes in this store)", self.todo.tiles[item.index], slot.key)
                self.pool.kill(slot, restart=True)
            if slot.state == "ready":
                self.pool.recover(slot)
            if info.reason in DEATHS and not timed_out and not self.final[item.index]:
                self._died(item, ref, info, now)
                return
            self._fail(item.index, info, slot, now)
            return
        if slot.key in self.deaths and slot.state == "ready":
            del self.deaths[slot.key]
        if result.ok:
            slot.tiles_done += 1
            self._complete(item.index, result, slot, now)
        elif result.failure is not None and result.failure.reason == RESTARTED:
            if slot.state == "ready":
                self.pool.recover(slot)
            self._requeue(item.index, UNCHARGED_RETRY_S, now)
        else:
            assert result.failure is not None
            self._fail(item.index, result.failure, slot, now)

    def _check_timeouts(self, now: float) -> None:
        for slot in self.pool.ready():
            if slot.inflight and now - slot.head_since > self.config.tile_timeout_s:
                head = slot.inflight[0]
                tile = self.todo.tiles[self.inflight[head].index]
                log.warning("tile %s on %s exceeded %.0f s: killing the actor", tile, slot.key, self.config.tile_timeout_s)
                self.timed_out.add(head)
                self.pool.kill(slot, restart=True)

    # --- progress ------------------------------------------------------------------------

    def snapshot(self, now: float) -> RunProgress:
        """Refresh and return the progress record."""
        p = self.progress
        p.elapsed_s = now - self._t0
        p.inflight = len(self.inflight)
        p.retrying = len(self.retry_heap)
        p.failed_by_reason = dict(self.failed_by_reason)
        p.retries_by_reason = dict(self.retries_by_reason)
        live = self.pool.live()
        p.actors = len(live)
        p.quarantined = self.pool.quarantined
        p.paused = self.outage.paused or (self.lease is not None and not self.lease.may_dispatch())
        p.pause_reason = (f"the store or inputs fail the driver's probe: {self.outage.reason}" if self.outage.paused
                          else f"the lease was not renewed for {self.lease.unrenewed_s():.0f} s" if p.paused and
                          self.lease is not None else "")
        p.given_up_nodes = [g.to_dict() for g in self.pool.given_up.values()]
        p.unwritten_records = self.records.pending
        loads = self.pool.checkpoint_loads
        p.checkpoint_loads, p.checkpoint_transfers, p.checkpoint_bytes = len(loads), sum(1 for b in loads if b), sum(loads)
        threads: dict[str, list[int]] = defaultdict(list)
        for s in live:
            if s.state == "ready":
                threads[s.policy.hw_class].append(s.threads)
        p.threads_by_class = {c: sorted(v) for c, v in threads.items()}
        p.by_class = class_throughput(self.by_class, [s.policy.hw_class for s in live],
                                      [item.slot.policy.hw_class for item in self.inflight.values()], p.elapsed_s)
        return p

    def _publish(self, now: float, *, store: bool) -> None:
        progress = self.snapshot(now)
        self.metrics.set_pending(progress.pending)
        if self.on_progress is not None:
            self.on_progress(progress)
        if store:
            self.records.save_progress(progress.to_dict())

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        """Run until every tile is complete or failed for good; returns the outcome."""
        self._t0 = time.monotonic()
        self.pool.refresh(force=True)
        last_ui = last_store = idle_since = self._t0
        while self.queue or self.retry_heap or self.inflight or self.outage.held:
            now = time.monotonic()
            if self.lease is not None:
                self.lease.check()
            self._judge(now)
            self.pool.refresh()
            self.pool.poll_ready()
            self._assign(now)
            if self.inflight:
                idle_since = now
                arrived = self.pool.wait(list(self.inflight), 0.2)
                now = time.monotonic()
                for ref in arrived:
                    self._collect(ref, now)
                self._check_timeouts(time.monotonic())
            else:
                if self.pool.gave_up_everywhere():
                    raise RunError(f"no worker could start on any node: {self.pool.why_given_up()}")
                if not self._may_dispatch(now) or self.outage.held or any(s.state in ("ready", "starting", "recovering") for s in self.pool.live()):
                    idle_since = now
                elif now - idle_since > NO_WORKERS_TIMEOUT_S:
                    raise RunError(f"no actor could be placed for {NO_WORKERS_TIMEOUT_S:.0f} s: "
                                   "is any node of a usable class in the cluster?")
                time.sleep(0.05)
            if now - last_ui >= 0.5:
                store_due = now - last_store >= self.config.progress_every_s
                self._publish(now, store=store_due)
                last_ui = now
                if store_due:
                    last_store = now
            if self.stop_after is not None and self.progress.complete >= self.stop_after:
                break
        self.progress.finished = not (self.queue or self.retry_heap or self.inflight or self.outage.held)
        self._publish(time.monotonic(), store=True)
        return RunOutcome(self.progress, dict(self.spans))
