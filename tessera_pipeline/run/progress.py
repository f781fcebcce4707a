"""What a run reports: the progress snapshot, the outcome, Ray metrics, and the writer that keeps the
driver's records in the store without ever blocking or ending the scheduling loop.

Failure records, their clearing and progress snapshots are queued to `RecordWriter`, a background
thread that retries each with backoff until it lands (the latest operation per key wins). A store
that throttles or is down for minutes delays the records; it never stops the run, and `flush` at the
end says how many could not be written (status then shows those tiles as pending, never wrong-done).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


from tessera_pipeline.store.records import ProgressSnapshot, ProgressState
from tessera_pipeline.store.runlog import COMMIT_LOG_PAGE, RunLog

log = logging.getLogger(__name__)

#: Backoff of the record writer after a failed store write: first, cap (seconds).
WRITER_BACKOFF_S = (0.5, 30.0)
#: Seconds a commit-log page collects entries before it is (re)written: one PUT per page per interval.
COMMIT_LOG_FLUSH_S = 10.0


@dataclass
class ClassStats:
    """Throughput of one hardware class during this driver's life."""

    tiles: int = 0
    pixels: int = 0
    encode_s: float = 0.0
    actors: int = 0


def class_throughput(stats: dict[str, ClassStats], live: list[str], inflight: list[str],
                     elapsed_s: float) -> dict[str, dict[str, Any]]:
    """Per hardware class: tiles, pixels, actors (`live`: one class per live actor), tiles in flight (`inflight`:
    one class per tile) and rates over `elapsed_s`, for the panel and the stored snapshot."""
    actors, flying = Counter(live), Counter(inflight)
    out = {
        cls: {"tiles": st.tiles, "pixels": st.pixels, "actors": actors.get(cls, 0), "inflight": flying.get(cls, 0),
              "px_per_s": round(st.pixels / elapsed_s, 2) if elapsed_s > 0 else 0.0,
              "tiles_per_h": round(3600 * st.tiles / elapsed_s, 2) if elapsed_s > 0 else 0.0,
              "encode_s_per_mpx": round(1e6 * st.encode_s / st.pixels, 2) if st.pixels else None}
        for cls, st in stats.items()
    }
    for cls, n in actors.items():
        out.setdefault(cls, {"tiles": 0, "pixels": 0, "actors": n, "inflight": flying.get(cls, 0), "px_per_s": 0.0,
                             "tiles_per_h": 0.0, "encode_s_per_mpx": None})
    return out


class RunProgress(ProgressState):
    """A snapshot the CLI draws and the store keeps (as JSON, a `ProgressSnapshot`) for `status`."""

    def __init__(self, run_id: str, total: int, already_complete: int, **counters: Any) -> None:
        super().__init__(run_id=run_id, total=total, already_complete=already_complete, **counters)

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
        eta = self.eta_s
        return ProgressSnapshot.build(
            **{**self.model_dump(), "elapsed_s": round(self.elapsed_s, 3)},
            pending=self.pending,
            eta_s=None if eta is None else round(eta, 1),
            updated_at=time.time(),
        ).document()


@dataclass
class EncodeSpans:
    """One actor's encodes, summed as they arrive (a few numbers per actor, never one per tile): the first
    start, the last end and the time spent encoding. Encodes on one actor never overlap (its encode lock)."""

    first: float = float("inf")
    last: float = 0.0
    busy_s: float = 0.0
    count: int = 0

    def add(self, started: float, ended: float) -> None:
        """Count one encode (wall-clock start and end)."""
        self.first = min(self.first, started)
        self.last = max(self.last, ended)
        self.busy_s += ended - started
        self.count += 1

    def idle_fraction(self) -> float | None:
        """Time between encodes over the time from the first start to the last end (None below two encodes)."""
        if self.count < 2 or self.last <= self.first:
            return None
        return max(0.0, 1.0 - self.busy_s / (self.last - self.first))


@dataclass
class RunOutcome:
    """What a driver session did: the final progress, and each actor's encodes (for idle time)."""

    progress: RunProgress
    spans: dict[str, EncodeSpans]

    def idle_fraction(self) -> dict[str, float]:
        """Per actor: time between consecutive encodes over the time from first encode start to last end."""
        out: dict[str, float] = {}
        for worker, spans in self.spans.items():
            idle = spans.idle_fraction()
            if idle is not None:
                out[worker] = idle
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


@dataclass
class _Op:
    """One pending store write: a failure record, its deletion, a progress snapshot or a commit-log page.

    `more` (commit-log pages) says after a write whether entries arrived meanwhile: then the page is
    written again after the flush interval instead of being done.
    """

    apply: Callable[[], None]
    label: str
    tries: int = 0
    next_at: float = 0.0
    more: Callable[[], bool] | None = None


class RecordWriter:
    """Writes the driver's failure records and progress snapshots in the background, retrying each until it lands.

    `may_write` is asked before every write: once it says no (the driver lost the store's lease) nothing more
    is written, so a deposed driver never records failures over its successor's work.

    `record_failure`, `clear_failure`, `save_progress` and `log_commit` return at once; for each tile only
    the latest operation is kept, so a record cleared before it was written is never written. Commits
    are logged in pages of up to 1,000 named for this driver session (never two writers on one key).
    """

    def __init__(self, runlog: RunLog, run_id: str, *, may_write: Callable[[], bool] | None = None) -> None:
        self.runlog = runlog
        self.run_id = run_id
        self._may_write = may_write or (lambda: True)
        self._ops: dict[Any, _Op] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._flushing = False
        self.failures = 0
        self._writer = uuid.uuid4().hex[:8]
        self._seq = 0
        self._page: list[tuple[int, str]] = []
        self._thread = threading.Thread(target=self._loop, name="tessera-record-writer", daemon=True)
        self._thread.start()

    def _put(self, key: Any, op: _Op) -> None:
        with self._cond:
            self._ops[key] = op
            self._cond.notify()

    def record_failure(self, year: int, tile: str, doc: dict[str, Any]) -> None:
        """Queue a tile's failure record (replacing any queued operation for the tile)."""
        self._put(("tile", year, tile), _Op(lambda: self.runlog.record_failure(year, tile, doc),
                                            f"failure record of {year}/{tile}"))

    def clear_failure(self, year: int, tile: str) -> None:
        """Queue the deletion of a tile's failure record (after it was committed)."""
        self._put(("tile", year, tile), _Op(lambda: self.runlog.clear_failure(year, tile),
                                            f"clearing the failure record of {year}/{tile}"))

    def save_progress(self, snapshot: dict[str, Any]) -> None:
        """Queue the run's progress snapshot (only the newest is ever written)."""
        self._put(("progress",), _Op(lambda: self.runlog.save_progress(self.run_id, snapshot), "progress snapshot"))

    def log_commit(self, year: int, tile: str) -> None:
        """Add a tile this run committed to the run's commit log (written within COMMIT_LOG_FLUSH_S)."""
        with self._cond:
            page, name = self._page, f"{self._writer}-{self._seq:06d}"
            page.append((year, tile))
            if len(page) >= COMMIT_LOG_PAGE:
                self._seq += 1
                self._page = []
            key = ("commits", name)
            if key in self._ops:
                return
            written = [0]

            def write() -> None:
                entries = list(page)
                self.runlog.save_commit_page(self.run_id, name, entries)
                written[0] = len(entries)

            op = _Op(write, f"commit log page {name}", more=lambda: len(page) > written[0])
            op.next_at = self._page_due()
            self._ops[key] = op
            self._cond.notify()

    def _page_due(self) -> float:
        """When a commit-log page with new entries is (re)written: after the flush interval, at once when flushing."""
        return time.monotonic() + (0.0 if self._flushing else COMMIT_LOG_FLUSH_S)

    @property
    def pending(self) -> int:
        """Operations not yet written."""
        with self._cond:
            return len(self._ops)

    def _next(self) -> tuple[Any, _Op] | None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                due = [(k, op) for k, op in self._ops.items() if op.next_at <= now]
                if due:
                    return min(due, key=lambda kv: kv[1].next_at)
                wait = min((op.next_at for op in self._ops.values()), default=now + 1.0) - now
                self._cond.wait(timeout=max(0.01, min(wait, 1.0)))
            return None

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            key, op = item
            if not self._may_write():
                with self._cond:
                    self._stop = True
                log.error("this driver no longer holds the store: %d record(s) left unwritten", self.pending)
                return
            try:
                op.apply()
            except Exception as exc:  # any store error: keep the operation and try again later
                self.failures += 1
                op.tries += 1
                first, cap = WRITER_BACKOFF_S
                op.next_at = time.monotonic() + min(cap, first * 2 ** (op.tries - 1))
                log.warning("could not write the %s (try %d, retrying): %s", op.label, op.tries,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            with self._cond:
                if self._ops.get(key) is not op:
                    continue
                if op.more is not None and op.more():
                    op.tries = 0
                    op.next_at = self._page_due()
                else:
                    del self._ops[key]

    def flush(self, timeout_s: float) -> int:
        """Keep writing until nothing is pending or `timeout_s` passed; stop the thread; return what is left."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flushing = True
            for op in self._ops.values():
                op.next_at = min(op.next_at, time.monotonic())
            self._cond.notify()
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._cond:
            self._stop = True
            self._cond.notify()
            left = len(self._ops)
        self._thread.join(timeout=5)
        if left:
            log.error("%d run record(s) could not be written to the store; `status` shows those tiles as pending, "
                      "and `resume` schedules them again", left)
        return left
