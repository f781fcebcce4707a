"""A run's state from the store alone: complete, failed (by reason) and pending tiles of its plan.

Complete means a commit marker (one listing of `_commits/{year}/`); failed means a failure record
whose tile has no marker; pending is the rest. Throughput by hardware class comes from the
driver's last progress snapshot. Works wherever the store is readable, with no Ray and no driver.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tessera_pipeline.run.launch import done_tiles
from tessera_pipeline.store import TileStore
from tessera_pipeline.store.runlog import RunLog


@dataclass(frozen=True)
class RunStatus:
    """The state of one run's plan."""

    run_id: str
    kind: str
    created_at: str
    planned: int
    complete: int
    failed: int
    pending: int
    pixels_planned: int
    pixels_complete: int
    failed_by_reason: dict[str, int]
    failed_tiles: list[dict[str, Any]]
    throughput: dict[str, Any]
    progress: dict[str, Any] | None
    checkpoint: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSON `status --json` prints."""
        return {
            "run_id": self.run_id, "kind": self.kind, "created_at": self.created_at, "planned": self.planned,
            "complete": self.complete, "failed": self.failed, "pending": self.pending,
            "pixels_planned": self.pixels_planned, "pixels_complete": self.pixels_complete,
            "failed_by_reason": self.failed_by_reason, "failed_tiles": self.failed_tiles,
            "throughput": self.throughput, "checkpoint": self.checkpoint,
            "last_progress_at": (self.progress or {}).get("updated_at"),
        }


def run_status(store_url: str, run_id: str | None = None, *, list_failed: int = 100) -> RunStatus:
    """Compute a run's status (the current run by default)."""
    store = TileStore(store_url)
    runlog = RunLog(store.backend)
    record = runlog.load_run(run_id)
    rid = record["run_id"]
    plan = runlog.load_plan(rid)
    keys = list(zip(plan.years.tolist(), plan.tiles))
    done = done_tiles(store, runlog, record, plan)
    planned = set(keys)
    failures = [k for k in runlog.failed_tiles() if k in planned and k not in done]
    reasons: Counter[str] = Counter()
    listed: list[dict[str, Any]] = []
    for year, tile in failures:
        doc = runlog.failure(year, tile) or {}
        reasons[str(doc.get("reason", "unknown"))] += 1
        if len(listed) < list_failed:
            listed.append({"year": year, "tile": tile, "reason": doc.get("reason"), "message": doc.get("message"),
                           "attempts": doc.get("attempts")})
    pixels_complete = int(sum(int(p) for k, p in zip(keys, plan.pixels.tolist()) if k in done))
    progress = runlog.load_progress(rid)
    complete = sum(1 for k in keys if k in done)
    return RunStatus(
        run_id=rid, kind=record.get("kind", "run"), created_at=record.get("created_at", ""), planned=len(keys),
        complete=complete, failed=len(failures), pending=len(keys) - complete - len(failures),
        pixels_planned=plan.total_pixels, pixels_complete=pixels_complete, failed_by_reason=dict(reasons),
        failed_tiles=listed, throughput=(progress or {}).get("by_class", {}), progress=progress,
        checkpoint=record.get("checkpoint", {}),
    )
