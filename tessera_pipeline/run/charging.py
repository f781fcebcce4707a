"""What the scheduler does with each tile's outcome: commit bookkeeping, and every failure charged to its
cause on evidence (`attribution.py`): retried with backoff, refunded, held for a probe's verdict, run alone
as a suspect, or failed for good with a record. A base class of `Scheduler`, which owns the state."""

from __future__ import annotations

import heapq
import logging
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from tessera_pipeline.run.actors import ActorSlot
from tessera_pipeline.run.attribution import WORKER_KILLED, Attribution, OutagePolicy
from tessera_pipeline.run.config import RunConfig
from tessera_pipeline.run.failures import FENCED, PREEMPTED, FailureInfo
from tessera_pipeline.run.lease import StoreLease
from tessera_pipeline.run.messages import TileResult
from tessera_pipeline.run.pool import Pool
from tessera_pipeline.run.probe import Prober
from tessera_pipeline.run.progress import ClassStats, EncodeSpans, Metrics, RecordWriter, RunProgress
from tessera_pipeline.store.runlog import PlannedTiles

log = logging.getLogger(__name__)

#: Delay before retrying a tile whose failure was not charged to it (a quarantined actor, an outage).
UNCHARGED_RETRY_S = 0.5


class Charging:
    """The outcome half of the scheduler: it reads and updates the run's state declared here."""

    todo: PlannedTiles
    pool: Pool
    records: RecordWriter
    known_failures: set[tuple[int, str]]
    config: RunConfig
    lease: StoreLease | None
    prober: Prober | None
    retry: Any
    evidence: Attribution
    outage: OutagePolicy
    retry_heap: list[tuple[float, int]]
    attempts: np.ndarray
    final: np.ndarray
    avoid: defaultdict[int, set[str]]
    inflight: dict[Any, Any]
    deaths: dict[str, set[Any]]
    by_class: defaultdict[str, ClassStats]
    failed_by_reason: Counter[str]
    retries_by_reason: Counter[str]
    spans: defaultdict[str, EncodeSpans]
    metrics: Metrics
    progress: RunProgress
    run_id: str
    _last_failure: dict[int, tuple[FailureInfo, str]]

    def _complete(self, index: int, result: TileResult, slot: ActorSlot, now: float) -> None:
        key = (int(self.todo.years[index]), self.todo.tiles[index])
        for guilty in self.evidence.succeeded(index, slot.key):
            self._quarantine(guilty, now)
        self.final[index] = True
        self.avoid.pop(index, None)
        self._last_failure.pop(index, None)
        self.outage.held.pop(index, None)
        stats = self.by_class[result.hw_class]
        stats.tiles += 1
        stats.pixels += result.pixels
        stats.encode_s += result.encode_s
        self.progress.complete += 1
        self.progress.pixels_done += result.pixels
        self.progress.planned_pixels_done += int(self.todo.pixels[index])
        if result.encode_ended > result.encode_started > 0:
            self.spans[result.worker_id].add(result.encode_started, result.encode_ended)
        self.metrics.completed(result.hw_class, result.pixels)
        if not result.committed_by_other:
            self.records.log_commit(*key)
        if key in self.known_failures:
            self.records.clear_failure(*key)
            self.known_failures.discard(key)

    def _quarantine(self, actor: str, now: float) -> None:
        """An actor on which `quarantine_after` distinct tiles failed that then succeeded elsewhere: kill and
        replace it, and give back the attempts its failures cost the tiles still open."""
        slot = self.pool.slots.get(actor)
        for index, charged in self.evidence.refunds(actor).items():
            if not self.final[index]:
                self.attempts[index] = max(0, int(self.attempts[index]) - charged)
        if slot is None or slot.state == "dead":
            return
        self.pool.quarantine(slot, f"{self.config.quarantine_after} tiles that failed on it succeeded on other "
                                   f"actors; last error there: {slot.last_error or '?'}")

    def _requeue(self, index: int, delay: float, now: float) -> None:
        heapq.heappush(self.retry_heap, (now + delay, index))

    def _uncharged(self, index: int, info: FailureInfo, delay: float, now: float) -> None:
        self.retries_by_reason[info.reason] += 1
        self.metrics.failure(info.reason, final=False)
        self._requeue(index, delay, now)

    def _fail(self, index: int, info: FailureInfo, slot: ActorSlot, now: float) -> None:
        year, tile = int(self.todo.years[index]), self.todo.tiles[index]
        if self.final[index]:
            return
        if info.reason == PREEMPTED:
            log.info("tile %s/%s: lost with its preempted node; retrying elsewhere, not charged", year, tile)
            self._uncharged(index, info, UNCHARGED_RETRY_S, now)
            return
        if info.reason == FENCED:
            log.warning("tile %s/%s: commit refused by the store's lease: %s", year, tile, info.message)
            if self.lease is not None:
                self.lease.deposed_by_store(info.message)
            self._uncharged(index, info, UNCHARGED_RETRY_S, now)
            return
        if info.kind == "transient" and self.outage.paused:
            self._uncharged(index, info, max(UNCHARGED_RETRY_S, self.outage.pause_until - now), now)
            return
        slot.last_error = f"{info.reason}: {info.message}"
        self.attempts[index] += 1
        attempts = int(self.attempts[index])
        if info.kind == "transient":
            self.avoid[index].add(slot.key)
            self.evidence.failed(index, slot.key)
            self.outage.charged(index, now)
            if self.prober is not None:
                self.prober.request()
            if attempts < self.retry.max_attempts:
                self.retries_by_reason[info.reason] += 1
                self.metrics.failure(info.reason, final=False)
                delay = self.retry.delay(attempts)
                log.info("tile %s/%s: %s (attempt %d of %d), retrying in %.1f s: %s", year, tile, info.reason,
                         attempts, self.retry.max_attempts, delay, info.message)
                self._requeue(index, delay, now)
                return
            if self.prober is not None:
                self._last_failure[index] = (info, slot.policy.hw_class)
                self.outage.held[index] = now
                return
        self._fail_for_good(index, info, slot.policy.hw_class)

    def _fail_for_good(self, index: int, info: FailureInfo, hw_class: str) -> None:
        year, tile = int(self.todo.years[index]), self.todo.tiles[index]
        attempts = int(self.attempts[index])
        kind = "permanent" if info.kind == "permanent" else "exhausted"
        log.warning("tile %s/%s failed for good after %d attempt(s): %s: %s", year, tile, attempts, info.reason,
                    info.message)
        self.final[index] = True
        self.evidence.forget(index)
        self.avoid.pop(index, None)
        self.records.record_failure(year, tile, {
            "reason": info.reason, "kind": kind, "message": info.message, "attempts": attempts,
            "hw_class": hw_class, "run_id": self.run_id,
        })
        self.known_failures.add((year, tile))
        self.failed_by_reason[info.reason] += 1
        self.progress.failed += 1
        self.metrics.failure(info.reason, final=True)

    def _judge(self, now: float) -> None:
        """Act on the latest probe (`OutagePolicy.judge`); while paused, probe again at the end of each pause."""
        if self.prober is None:
            return
        result = self.prober.latest
        if self.outage.paused and now >= self.outage.pause_until and not self.prober.running and \
                (result is None or result.asked_at < self.outage.pause_until):
            self.prober.request()
        verdict = None if result is None else self.outage.judge(result, now)
        if verdict is None:
            return
        if verdict.resumed:
            log.warning("the store and inputs answer again: the run goes on")
        for index in verdict.fail:
            info, hw_class = self._last_failure.pop(index)
            self._fail_for_good(index, info, hw_class)
        if verdict.pause_s:
            log.warning("the store or inputs do not answer the driver's probe (%s): pausing the run for %.0f s; "
                        "the %d attempt(s) charged meanwhile are refunded", self.outage.reason, verdict.pause_s,
                        len(verdict.refund))
        for index in verdict.refund:
            if not self.final[index] and self.attempts[index] > 0:
                self.attempts[index] -= 1
                self.evidence.refund_all(index)
        for index in verdict.requeue:
            self._last_failure.pop(index, None)
            self._requeue(index, verdict.pause_s, now)

    def _died(self, item: Any, ref: Any, info: FailureInfo, now: float) -> None:
        """The actor's process died with this tile in flight: suspect it (run it alone from now on); charge it
        only once it has killed two distinct worker processes, the last one alone."""
        slot = item.slot
        group = self.deaths.get(slot.key)
        if group is None or ref not in group:
            group = {ref, *slot.inflight}
            self.deaths[slot.key] = group
            slot.deaths += 1
        alone = len(group) == 1
        kills = self.evidence.died(item.index, f"{slot.key}/{slot.deaths}", alone=alone)
        if not kills:
            log.info("tile %s: its worker %s died (%s); retrying it alone, not charged", self.todo.tiles[item.index],
                     slot.key, info.message)
            self._uncharged(item.index, info, UNCHARGED_RETRY_S, now)
            return
        self.attempts[item.index] = max(int(self.attempts[item.index]), kills)
        killed = FailureInfo("transient", WORKER_KILLED, f"{kills} worker processes died running it (the last alone): "
                                                         f"{info.message}")
        if kills < self.retry.max_attempts:
            self.retries_by_reason[WORKER_KILLED] += 1
            self._requeue(item.index, self.retry.delay(kills), now)
            return
        self._fail_for_good(item.index, killed, slot.policy.hw_class)
