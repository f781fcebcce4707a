"""The scheduling loop: a bounded window of tiles in flight per ready actor, retries, time limits, and the
policies that charge each failure to its cause.

Every idle actor gets work while any tile is due: a due retry first (not on an actor it failed on, when
another can take it), else the largest tile left. Transient failures are retried with backoff
(`RetryPolicy`); an actor that keeps failing while others succeed is quarantined and the tiles it failed
are not charged; when every actor fails (an outage) the whole run pauses (`HealthPolicy`'s circuit
breaker) instead of burning attempts. Store writes go through `RecordWriter`, never blocking the loop.
The scheduler never holds tile data: workers return small `TileResult`s.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera_pipeline.errors import RunError
from tessera_pipeline.run.config import RunConfig
from tessera_pipeline.run.failures import PREEMPTED, FailureInfo, classify
from tessera_pipeline.run.lease import StoreLease
from tessera_pipeline.run.messages import TileRequest, TileResult
from tessera_pipeline.run.pool import ActorSlot, Pool, is_restarting
from tessera_pipeline.run.progress import ClassStats, Metrics, RecordWriter, RunOutcome, RunProgress
from tessera_pipeline.run.worker import RESTARTED
from tessera_pipeline.store.runlog import PlannedTiles

log = logging.getLogger(__name__)

#: How long a run may have work but no actor able to take it before it gives up.
NO_WORKERS_TIMEOUT_S = 600.0
#: Delay before retrying a tile whose failure was not charged to it (a quarantined actor, an outage).
UNCHARGED_RETRY_S = 0.5


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
class Verdict:
    """What one failure means: charge the tile an attempt or not, quarantine the actor, pause the run."""

    charge: bool = True
    quarantine: bool = False
    pause_s: float = 0.0
    refund: list[int] = field(default_factory=list)


@dataclass
class HealthPolicy:
    """Charges failures to their cause.

    An actor with `quarantine_after` transient failures in a row while another actor succeeded since its
    streak began is broken: quarantine it and refund its streak. Failures in a row with no success in
    between, from at least two actors (or the only one), as many as there are actors (at least 2, at most
    `breaker_after`), are an outage: pause every dispatch for `pause_first_s`, doubling up to `pause_max_s`
    while it lasts, and refund them.
    """

    quarantine_after: int = 3
    breaker_after: int = 4
    pause_first_s: float = 5.0
    pause_max_s: float = 300.0
    fleet_streak: list[tuple[str, int]] = field(default_factory=list)
    last_success_at: float = -1.0
    pause_until: float = 0.0
    pauses: int = 0
    last_error: str = ""

    def paused(self, now: float) -> bool:
        """True while the circuit breaker holds dispatch."""
        return now < self.pause_until

    def on_success(self, slot: ActorSlot, now: float) -> None:
        """A commit: the actor and the fleet are healthy; the breaker closes."""
        slot.streak.clear()
        self.fleet_streak.clear()
        self.last_success_at = now
        if self.pauses:
            log.info("the store and inputs answer again: the run goes on")
        self.pauses = 0

    def on_failure(self, slot: ActorSlot, index: int, info: FailureInfo, now: float, actors: int) -> Verdict:
        """Judge one transient failure of tile `index` on `slot`."""
        self.last_error = f"{info.reason}: {info.message}"
        if self.paused(now):
            return Verdict(charge=False)
        if not slot.streak:
            slot.streak_started = now
        slot.streak.append(index)
        self.fleet_streak.append((slot.key, index))
        others_ok = self.last_success_at >= slot.streak_started
        if len(slot.streak) >= self.quarantine_after and others_ok and actors > 1:
            refund = slot.streak[:-1]
            slot.streak.clear()
            self.fleet_streak = [(k, i) for k, i in self.fleet_streak if k != slot.key]
            return Verdict(charge=False, quarantine=True, refund=refund)
        distinct = {k for k, _ in self.fleet_streak}
        threshold = min(self.breaker_after, max(2, actors))
        if len(self.fleet_streak) >= threshold and (len(distinct) >= 2 or actors <= 1):
            pause = min(self.pause_max_s, self.pause_first_s * 2 ** self.pauses)
            self.pauses += 1
            self.pause_until = now + pause
            refund = [i for _, i in self.fleet_streak[:-1]]
            self.fleet_streak.clear()
            return Verdict(charge=False, pause_s=pause, refund=refund)
        return Verdict()


@dataclass
class _Inflight:
    slot: ActorSlot
    index: int
    submitted: float


class Scheduler:
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
        health: HealthPolicy | None = None,
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
        self.retry = RetryPolicy(config.max_attempts, config.retry_backoff_s)
        self.health = health or HealthPolicy(quarantine_after=config.quarantine_after, pause_max_s=config.max_pause_s)
        self.on_progress = on_progress
        self.stop_after = stop_after
        self.queue: deque[int] = deque(range(len(todo)))
        self.retry_heap: list[tuple[float, int]] = []
        self.attempts = np.zeros(len(todo), dtype=np.int32)
        self.final: set[int] = set()
        self.avoid: dict[int, set[str]] = defaultdict(set)
        self.inflight: dict[Any, _Inflight] = {}
        self.timed_out: set[Any] = set()
        self.by_class: dict[str, ClassStats] = defaultdict(ClassStats)
        self.failed_by_reason: Counter[str] = Counter()
        self.retries_by_reason: Counter[str] = Counter()
        self.intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.metrics = Metrics(run_id)
        self.progress = RunProgress(run_id, len(todo), already_complete, pixels_total=todo.total_pixels)
        self._t0 = 0.0

    # --- scheduling ----------------------------------------------------------------------

    def _elsewhere(self, index: int, slot: ActorSlot) -> bool:
        """True when a tile should not go to `slot`: it failed there, and some other live actor has not failed it."""
        avoided = self.avoid.get(index)
        if not avoided or slot.key not in avoided:
            return False
        return any(s.key not in avoided for s in self.pool.live() if s is not slot)

    def _next_index(self, slot: ActorSlot, now: float) -> int | None:
        """The next tile for an actor: a due retry first (not one better done elsewhere), else the largest left."""
        skipped: list[tuple[float, int]] = []
        chosen = None
        while self.retry_heap and self.retry_heap[0][0] <= now:
            item = heapq.heappop(self.retry_heap)
            if self._elsewhere(item[1], slot):
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
        req = TileRequest(int(self.todo.years[index]), self.todo.tiles[index], int(self.attempts[index]) + 1)
        ref = slot.handle.process.remote(req)
        self.inflight[ref] = _Inflight(slot, index, now)
        if not slot.inflight:
            slot.head_since = now
        slot.inflight.append(ref)

    def _assign(self, now: float) -> None:
        """Fill every ready actor's window; an actor with nothing it should take leaves the rest to the others."""
        if self.health.paused(now):
            return
        for slot in self.pool.ready():
            while len(slot.inflight) < self.config.window:
                index = self._next_index(slot, now)
                if index is None:
                    break
                self._submit(slot, index, now)

    # --- results -------------------------------------------------------------------------

    def _complete(self, index: int, result: TileResult, slot: ActorSlot, now: float) -> None:
        key = (int(self.todo.years[index]), self.todo.tiles[index])
        self.health.on_success(slot, now)
        self.final.add(index)
        stats = self.by_class[result.hw_class]
        stats.tiles += 1
        stats.pixels += result.pixels
        stats.encode_s += result.encode_s
        self.progress.complete += 1
        self.progress.pixels_done += result.pixels
        self.progress.planned_pixels_done += int(self.todo.pixels[index])
        if result.encode_ended > result.encode_started > 0:
            self.intervals[result.worker_id].append((result.encode_started, result.encode_ended))
        self.metrics.completed(result.hw_class, result.pixels)
        if not result.committed_by_other:
            self.records.log_commit(*key)
        if key in self.known_failures:
            self.records.clear_failure(*key)
            self.known_failures.discard(key)

    def _requeue(self, index: int, delay: float, now: float) -> None:
        heapq.heappush(self.retry_heap, (now + delay, index))

    def _fail(self, index: int, info: FailureInfo, slot: ActorSlot, now: float) -> None:
        year, tile = int(self.todo.years[index]), self.todo.tiles[index]
        if index in self.final:
            return
        if info.reason == PREEMPTED:
            log.info("tile %s/%s: lost with its preempted node; retrying elsewhere, not charged", year, tile)
            self.retries_by_reason[info.reason] += 1
            self.metrics.failure(info.reason, final=False)
            self._requeue(index, UNCHARGED_RETRY_S, now)
            return
        if info.kind == "transient":
            self.avoid[index].add(slot.key)
            verdict = self.health.on_failure(slot, index, info, now, len(self.pool.live()))
            for refunded in verdict.refund:
                if refunded not in self.final and self.attempts[refunded] > 0:
                    self.attempts[refunded] -= 1
            if verdict.quarantine:
                self.pool.quarantine(slot, f"{self.config.quarantine_after} tiles in a row failed on it while other "
                                           f"actors succeeded; last: {info.reason}: {info.message}")
            if verdict.pause_s:
                log.warning("every actor is failing (last: %s: %s): pausing the run for %.0f s", info.reason,
                            info.message, verdict.pause_s)
            if not verdict.charge:
                self.retries_by_reason[info.reason] += 1
                self.metrics.failure(info.reason, final=False)
                self._requeue(index, max(UNCHARGED_RETRY_S, self.health.pause_until - now), now)
                return
        self.attempts[index] += 1
        attempts = int(self.attempts[index])
        if info.kind == "transient" and attempts < self.retry.max_attempts:
            self.retries_by_reason[info.reason] += 1
            self.metrics.failure(info.reason, final=False)
            delay = self.retry.delay(attempts)
            log.info("tile %s/%s: %s (attempt %d of %d), retrying in %.1f s: %s", year, tile, info.reason,
                     attempts, self.retry.max_attempts, delay, info.message)
            self._requeue(index, delay, now)
            return
        kind = "permanent" if info.kind == "permanent" else "exhausted"
        log.warning("tile %s/%s failed for good after %d attempt(s): %s: %s", year, tile, attempts, info.reason,
                    info.message)
        self.final.add(index)
        self.records.record_failure(year, tile, {
            "reason": info.reason, "kind": kind, "message": info.message, "attempts": attempts,
            "hw_class": slot.policy.hw_class, "run_id": self.run_id,
        })
        self.known_failures.add((year, tile))
        self.failed_by_reason[info.reason] += 1
        self.progress.failed += 1
        self.metrics.failure(info.reason, final=True)

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
            if ref in self.timed_out:
                info = FailureInfo("transient", "timeout", f"no result after {self.config.tile_timeout_s:.0f} s; actor killed")
                self.timed_out.discard(ref)
            elif is_restarting(exc) and not self.fenced_store and slot.state == "ready":
                log.info("tile %s: outcome unknown on %s; restarting the actor before the retry (no conditional "
                         "writes in this store)", self.todo.tiles[item.index], slot.key)
                self.pool.kill(slot, restart=True)
            if slot.state == "ready":
                self.pool.recover(slot)
            self._fail(item.index, info, slot, now)
            return
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
        p.paused = self.health.paused(now)
        p.pause_reason = f"every actor failing; last: {self.health.last_error}" if p.paused else ""
        p.given_up_nodes = [g.to_dict() for g in self.pool.given_up.values()]
        p.unwritten_records = self.records.pending
        loads = self.pool.checkpoint_loads
        p.checkpoint_loads, p.checkpoint_transfers, p.checkpoint_bytes = len(loads), sum(1 for b in loads if b), sum(loads)
        threads: dict[str, list[int]] = defaultdict(list)
        for s in live:
            if s.state == "ready":
                threads[s.policy.hw_class].append(s.threads)
        p.threads_by_class = {c: sorted(v) for c, v in threads.items()}
        actors_by_class = Counter(s.policy.hw_class for s in live)
        inflight_by_class = Counter(item.slot.policy.hw_class for item in self.inflight.values())
        p.by_class = {
            cls: {"tiles": st.tiles, "pixels": st.pixels, "actors": actors_by_class.get(cls, 0),
                  "inflight": inflight_by_class.get(cls, 0),
                  "px_per_s": round(st.pixels / p.elapsed_s, 2) if p.elapsed_s > 0 else 0.0,
                  "tiles_per_h": round(3600 * st.tiles / p.elapsed_s, 2) if p.elapsed_s > 0 else 0.0,
                  "encode_s_per_mpx": round(1e6 * st.encode_s / st.pixels, 2) if st.pixels else None}
            for cls, st in self.by_class.items()
        }
        for cls, n in actors_by_class.items():
            p.by_class.setdefault(cls, {"tiles": 0, "pixels": 0, "actors": n, "inflight": inflight_by_class.get(cls, 0),
                                        "px_per_s": 0.0, "tiles_per_h": 0.0, "encode_s_per_mpx": None})
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
        while self.queue or self.retry_heap or self.inflight:
            now = time.monotonic()
            if self.lease is not None:
                self.lease.check()
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
                    raise RunError(f"no worker could start on any node; the last one died with: {self.pool.last_death}")
                if self.health.paused(now) or any(s.state in ("ready", "starting", "recovering") for s in self.pool.live()):
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
        self.progress.finished = not (self.queue or self.retry_heap or self.inflight)
        self._publish(time.monotonic(), store=True)
        return RunOutcome(self.progress, dict(self.intervals))
