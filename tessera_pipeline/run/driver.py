"""The run's driver loop: a bounded window of tiles in flight per actor, retries, time limits, failures.

Faster actors simply take more tiles: each actor gets a new tile as soon as one of its `window`
slots frees. Transient failures are retried with exponential backoff up to `max_attempts`, a
timed-out tile is not given back to the actor that hung on it; permanent failures are recorded in
the store once. The driver never holds tile data: workers return small `TileResult`s.
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
from tessera_pipeline.run.failures import FailureInfo, classify
from tessera_pipeline.run.fleet import ActorSlot, Fleet
from tessera_pipeline.run.worker import TileRequest, TileResult
from tessera_pipeline.store.runlog import PlannedTiles, RunLog

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
#: How long a run may have work but no actor able to take it before it gives up.
NO_WORKERS_TIMEOUT_S = 600.0


@dataclass
class ClassStats:
    """Throughput of one hardware class during this driver's life."""

    tiles: int = 0
    pixels: int = 0
    encode_s: float = 0.0
    actors: int = 0


@dataclass
class RunProgress:
    """A snapshot the CLI draws and the store keeps (as JSON) for `status`."""

    run_id: str
    total: int
    already_complete: int
    complete: int = 0
    failed: int = 0
    inflight: int = 0
    retrying: int = 0
    pixels_total: int = 0
    pixels_done: int = 0
    planned_pixels_done: int = 0
    elapsed_s: float = 0.0
    by_class: dict[str, dict[str, float]] = field(default_factory=dict)
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    retries_by_reason: dict[str, int] = field(default_factory=dict)
    actors: int = 0
    finished: bool = False

    @property
    def pending(self) -> int:
        """Tiles of this session's work not yet complete or failed."""
        return self.total - self.complete - self.failed

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from the share of planned pixels done so far (tiles weigh by their size)."""
        if self.planned_pixels_done <= 0 or self.elapsed_s <= 0 or self.pixels_total <= 0:
            return None
        done = min(self.planned_pixels_done / self.pixels_total, 1.0)
        return self.elapsed_s * (1.0 - done) / done

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the store's progress record."""
        return {
            "run_id": self.run_id, "total": self.total, "already_complete": self.already_complete,
            "complete": self.complete, "failed": self.failed, "pending": self.pending, "inflight": self.inflight,
            "retrying": self.retrying, "pixels_total": self.pixels_total, "pixels_done": self.pixels_done,
            "planned_pixels_done": self.planned_pixels_done,
            "elapsed_s": round(self.elapsed_s, 3), "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "by_class": self.by_class, "failed_by_reason": self.failed_by_reason,
            "retries_by_reason": self.retries_by_reason, "actors": self.actors, "finished": self.finished,
            "updated_at": time.time(),
        }


@dataclass
class RunOutcome:
    """What a driver session did: the final progress, and each actor's encode intervals (for idle time)."""

    progress: RunProgress
    intervals: dict[str, list[tuple[float, float]]]

    def idle_fraction(self) -> dict[str, float]:
        """Per actor: time between consecutive encodes over the time from first encode start to last end."""
        out: dict[str, float] = {}
        for worker, spans in self.intervals.items():
            spans = sorted(s for s in spans if s[1] > s[0])
            if len(spans) < 2:
                continue
            starts, ends = np.array([s[0] for s in spans]), np.array([s[1] for s in spans])
            gaps = np.clip(starts[1:] - ends[:-1], 0, None).sum()
            out[worker] = float(gaps / max(ends[-1] - starts[0], 1e-9))
        return out


class Metrics:
    """Counters for the Ray dashboard / Prometheus (`ray.util.metrics`); silently absent if unavailable."""

    def __init__(self, run_id: str) -> None:
        try:
            from ray.util.metrics import Counter as RayCounter
            from ray.util.metrics import Gauge

            tags = ("run_id", "hw_class")
            self.done = RayCounter("tessera_tiles_completed", "Tiles committed", tag_keys=tags)
            self.pixels = RayCounter("tessera_pixels_encoded", "Pixels committed", tag_keys=tags)
            self.failed = RayCounter("tessera_tiles_failed", "Tiles failed for good", tag_keys=("run_id", "reason"))
            self.retried = RayCounter("tessera_tiles_retried", "Transient failures retried", tag_keys=("run_id", "reason"))
            self.pending = Gauge("tessera_tiles_pending", "Tiles not yet complete or failed", tag_keys=("run_id",))
            self.run_id = run_id
            self.ok = True
        except Exception as exc:  # metrics are a nicety; the run must not depend on them
            log.debug("no Ray metrics: %s", exc)
            self.ok = False

    def completed(self, hw_class: str, pixels: int) -> None:
        """Count a committed tile."""
        if self.ok:
            self.done.inc(1, {"run_id": self.run_id, "hw_class": hw_class})
            if pixels > 0:
                self.pixels.inc(pixels, {"run_id": self.run_id, "hw_class": hw_class})

    def failure(self, reason: str, *, final: bool) -> None:
        """Count a failure (final or retried)."""
        if self.ok:
            (self.failed if final else self.retried).inc(1, {"run_id": self.run_id, "reason": reason})

    def set_pending(self, n: int) -> None:
        """Publish the pending count."""
        if self.ok:
            self.pending.set(n, {"run_id": self.run_id})


def _death_cause(exc: BaseException) -> str:
    """One line for a dead actor: Ray's headline plus, for a failed constructor, the exception it raised."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    raised = [ln for ln in lines[1:] if not ln.startswith(("File ", "^", "~", "Traceback", "[")) and ":" in ln]
    return lines[0] if not raised else f"{lines[0]} -- {raised[-1]}"


@dataclass
class _Inflight:
    slot: ActorSlot
    index: int
    submitted: float


class Driver:
    """Schedules one run's remaining tiles onto the fleet until each is complete or failed for good."""

    def __init__(
        self,
        *,
        run_id: str,
        todo: PlannedTiles,
        already_complete: int,
        fleet: Fleet,
        runlog: RunLog,
        known_failures: set[tuple[int, str]],
        config: RunConfig,
        on_progress: Callable[[RunProgress], None] | None = None,
        stop_after: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.todo = todo
        self.fleet = fleet
        self.runlog = runlog
        self.known_failures = known_failures
        self.config = config
        self.on_progress = on_progress
        self.stop_after = stop_after
        self.queue: deque[int] = deque(range(len(todo)))
        self.retry_heap: list[tuple[float, int]] = []
        self.attempts = np.zeros(len(todo), dtype=np.int32)
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
        self.last_death = ""

    # --- scheduling ----------------------------------------------------------------------

    def _next_index(self, slot: ActorSlot, now: float) -> int | None:
        """The next tile for an actor: a due retry first (not one it timed out on), else the largest left."""
        if self.retry_heap and self.retry_heap[0][0] <= now:
            skipped: list[tuple[float, int]] = []
            chosen = None
            while self.retry_heap and self.retry_heap[0][0] <= now:
                item = heapq.heappop(self.retry_heap)
                if slot.key in self.avoid.get(item[1], ()) and len(self.fleet.live()) > 1:
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
        for slot in self.fleet.live():
            if slot.state != "ready":
                continue
            while len(slot.inflight) < self.config.window:
                index = self._next_index(slot, now)
                if index is None:
                    return
                self._submit(slot, index, now)

    # --- results -------------------------------------------------------------------------

    def _complete(self, index: int, result: TileResult) -> None:
        key = (int(self.todo.years[index]), self.todo.tiles[index])
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
        if key in self.known_failures:
            self.runlog.clear_failure(*key)
            self.known_failures.discard(key)

    def _fail(self, index: int, info: FailureInfo, slot: ActorSlot, now: float) -> None:
        year, tile = int(self.todo.years[index]), self.todo.tiles[index]
        self.attempts[index] += 1
        attempts = int(self.attempts[index])
        if info.kind == "transient" and attempts < self.config.max_attempts:
            self.retries_by_reason[info.reason] += 1
            self.metrics.failure(info.reason, final=False)
            if info.reason == "timeout":
                self.avoid[index].add(slot.key)
            delay = min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2 ** (attempts - 1)) * (0.5 + random.random())
            log.info("tile %s/%s: %s (attempt %d of %d), retrying in %.1f s: %s", year, tile, info.reason,
                     attempts, self.config.max_attempts, delay, info.message)
            heapq.heappush(self.retry_heap, (now + delay, index))
            return
        reason = info.reason
        log.warning("tile %s/%s failed for good after %d attempt(s): %s: %s", year, tile, attempts, reason, info.message)
        self.runlog.record_failure(year, tile, {
            "reason": reason, "kind": info.kind, "message": info.message, "attempts": attempts,
            "hw_class": slot.policy.hw_class, "run_id": self.run_id,
        })
        self.known_failures.add((year, tile))
        self.failed_by_reason[reason] += 1
        self.progress.failed += 1
        self.metrics.failure(reason, final=True)

    def _collect(self, ref: Any, now: float) -> None:
        item = self.inflight.pop(ref)
        slot = item.slot
        was_head = bool(slot.inflight) and slot.inflight[0] == ref
        if ref in slot.inflight:
            slot.inflight.remove(ref)
        if was_head:
            slot.head_since = now
        import ray

        try:
            result: TileResult = ray.get(ref)
        except Exception as exc:  # Ray system failures: the actor or its node died, or we killed it
            info = classify(exc)
            if ref in self.timed_out:
                info = FailureInfo("transient", "timeout", f"no result after {self.config.tile_timeout_s:.0f} s; actor killed")
                self.timed_out.discard(ref)
            if slot.state == "ready":
                slot.state = "recovering"
                slot.ready_ref = slot.handle.ready.remote()
            self._fail(item.index, info, slot, now)
            return
        if result.ok:
            slot.tiles_done += 1
            self._complete(item.index, result)
        else:
            assert result.failure is not None
            self._fail(item.index, result.failure, slot, now)

    def _check_actors(self) -> None:
        """Move starting/recovering actors to ready (or dead) as their `ready()` calls resolve."""
        import ray

        waiting = {s.ready_ref: s for s in self.fleet.live() if s.state in ("starting", "recovering")}
        if not waiting:
            return
        done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in done:
            slot = waiting[ref]
            try:
                info = ray.get(ref)
                slot.state = "ready"
                slot.head_since = time.monotonic()
                log.info("actor %s ready (%s)", slot.key, info.get("worker_id"))
            except Exception as exc:  # died for good (restarts exhausted, node gone, init failed)
                self.last_death = _death_cause(exc)
                log.warning("actor %s is dead: %s", slot.key, self.last_death)
                self.fleet.kill(slot, restart=False)
                if "CheckpointError" in str(exc):
                    raise RunError(f"workers cannot load the checkpoint: {self.last_death}") from exc

    def _check_timeouts(self, now: float) -> None:
        for slot in self.fleet.live():
            if slot.state == "ready" and slot.inflight and now - slot.head_since > self.config.tile_timeout_s:
                head = slot.inflight[0]
                tile = self.todo.tiles[self.inflight[head].index]
                log.warning("tile %s on %s exceeded %.0f s: killing the actor", tile, slot.key, self.config.tile_timeout_s)
                self.timed_out.add(head)
                self.fleet.kill(slot, restart=True)

    # --- progress ------------------------------------------------------------------------

    def snapshot(self, now: float) -> RunProgress:
        """Refresh and return the progress record."""
        p = self.progress
        p.elapsed_s = now - self._t0
        p.inflight = len(self.inflight)
        p.retrying = len(self.retry_heap)
        p.failed_by_reason = dict(self.failed_by_reason)
        p.retries_by_reason = dict(self.retries_by_reason)
        live = self.fleet.live()
        p.actors = len(live)
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
            try:
                self.runlog.save_progress(self.run_id, progress.to_dict())
            except Exception as exc:  # a progress snapshot is advisory; never stop the run for it
                log.warning("could not save progress: %s", exc)

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        """Run until every tile is complete or failed for good; returns the outcome."""
        import ray

        self._t0 = time.monotonic()
        self.fleet.refresh(force=True)
        last_ui = last_store = idle_since = self._t0
        while self.queue or self.retry_heap or self.inflight:
            now = time.monotonic()
            self.fleet.refresh()
            self._check_actors()
            self._assign(now)
            if self.inflight:
                idle_since = now
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.2)
                if ready:
                    more, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
                    now = time.monotonic()
                    for ref in set(ready) | set(more):
                        self._collect(ref, now)
                self._check_timeouts(time.monotonic())
            else:
                if self.fleet.gave_up_everywhere():
                    raise RunError(f"no worker could start on any node; the last one died with: {self.last_death}")
                if not any(s.state in ("ready", "starting", "recovering") for s in self.fleet.live()) \
                        and now - idle_since > NO_WORKERS_TIMEOUT_S:
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
