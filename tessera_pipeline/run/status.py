"""A run's state from the store alone: complete, failed (by reason) and pending tiles of its plan.

Complete means a commit marker (one listing of `_commits/{year}/`; for a reprocess, one it wrote); failed means a failure record
whose tile has no marker (`permanent`: bad input, retried only on request; `exhausted`: transient
failures that used up their attempts, retried by `resume`); awaiting-input means the tile had no input
folder when the run last started (one bit per plan row in the store; `resume` looks again); pending is
the rest. Whether a driver is
running comes from the store's lease and its heartbeat; throughput, quarantines and given-up nodes
from the driver's last progress snapshot. Works wherever the store is readable, with no Ray.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera_pipeline.grid import CELLS_PER_DEGREE, indices_from_names
from tessera_pipeline.run.completion import done_mask, failures_in_plan, plan_mask
from tessera_pipeline.run.lease import read_lease
from tessera_pipeline.store import TileStore
from tessera_pipeline.store.runlog import FailedTile, PlannedTiles, RunLog

#: Failure records read to count reasons by default: a global run's status must not GET thousands.
REASONS_FROM = 1000
#: Failure reasons a map tells apart (the most common); the rest are drawn as one.
MAP_REASONS = 5
UNREAD_REASON = "failed (reason not read)"


@dataclass(frozen=True)
class TileStates:
    """Every planned tile's state, as arrays for a map: centre lon/lat, a code per tile, the codes' names."""

    lon: np.ndarray
    lat: np.ndarray
    codes: np.ndarray
    names: list[str]


def tile_states(plan: PlannedTiles, masks: dict[str, np.ndarray]) -> TileStates:
    """States from masks over the plan (name -> True where a tile is in it), applied in order; the rest pending."""
    names = ["pending", *masks]
    codes = np.zeros(len(plan), dtype=np.uint8)
    for code, mask in enumerate(masks.values(), start=1):
        codes[mask] = code
    ix, iy = indices_from_names(plan.tiles)
    return TileStates((ix + 0.5) / CELLS_PER_DEGREE - 180.0, (iy + 0.5) / CELLS_PER_DEGREE - 90.0, codes, names)


def failed_masks(plan: PlannedTiles, failures: list[FailedTile],
                 reasons: dict[tuple[int, str], str]) -> dict[str, np.ndarray]:
    """A mask over the plan per failure reason ("failed: REASON"; the MAP_REASONS commonest, then one for
    the rest and one for records not read)."""
    rows = np.flatnonzero(plan_mask(plan, {f.key for f in failures}))
    found = [reasons.get((int(plan.years[i]), plan.tiles[i])) for i in rows.tolist()]
    common = [r for r, _n in Counter(r for r in found if r is not None).most_common(MAP_REASONS)]
    labels = np.array([f"failed: {r}" if r in common else UNREAD_REASON if r is None else "failed: other reasons"
                       for r in found], dtype=object)
    masks: dict[str, np.ndarray] = {}
    for label in [*(f"failed: {r}" for r in common), "failed: other reasons", UNREAD_REASON]:
        picked = rows[labels == label] if rows.size else rows
        if picked.size:
            masks[label] = np.zeros(len(plan), dtype=bool)
            masks[label][picked] = True
    return masks


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
    reasons_counted: int
    failed_tiles: list[dict[str, Any]]
    throughput: dict[str, Any]
    progress: dict[str, Any] | None
    checkpoint: dict[str, Any]
    failed_by_kind: dict[str, int]
    driver: dict[str, Any] | None
    driver_live: bool
    tiles: TileStates | None = None
    awaiting_input: int = 0

    @property
    def state(self) -> str:
        """`running` (a driver holds a live lease), `finished`, `awaiting-input` (only tiles whose inputs do not
        exist yet are left), or `stopped` (no live driver, work left)."""
        if self.driver_live:
            return "running"
        if self.pending == 0:
            return "awaiting-input" if self.awaiting_input else "finished"
        return "stopped"

    def to_dict(self) -> dict[str, Any]:
        """The JSON `status --json` prints."""
        return {
            "run_id": self.run_id, "kind": self.kind, "created_at": self.created_at, "planned": self.planned,
            "complete": self.complete, "failed": self.failed, "pending": self.pending,
            "awaiting_input": self.awaiting_input,
            "pixels_planned": self.pixels_planned, "pixels_complete": self.pixels_complete,
            "failed_by_reason": self.failed_by_reason, "reasons_counted": self.reasons_counted,
            "failed_tiles": self.failed_tiles,
            "throughput": self.throughput, "checkpoint": self.checkpoint,
            "last_progress_at": (self.progress or {}).get("updated_at"), "failed_by_kind": self.failed_by_kind,
            "state": self.state, "driver": self.driver,
            "given_up_nodes": (self.progress or {}).get("given_up_nodes", []),
            "quarantined": (self.progress or {}).get("quarantined", 0),
            "threads_by_class": (self.progress or {}).get("threads_by_class", {}),
        }


def run_status(store_url: str, run_id: str | None = None, *, list_failed: int = 100,
               reasons_from: int | None = REASONS_FROM, with_tiles: bool = False) -> RunStatus:
    """Compute a run's status (the current run by default); `with_tiles` adds every tile's state for a map.

    Requests: the run record and plan, one listing of the markers and one of the failure records
    (1,000 keys a request), the commit log for a reprocess, and GETs of failure records only for the
    reasons it counts: the first `reasons_from` of them (None: every one).
    """
    store = TileStore(store_url)
    runlog = RunLog(store.backend)
    record = runlog.load_run(run_id)
    rid = record["run_id"]
    plan = runlog.load_plan(rid)
    done = done_mask(store, runlog, record, plan)
    failures = failures_in_plan(plan, runlog.failed_tiles(), done=done)
    awaiting = runlog.load_awaiting(rid, len(plan)) & ~done & ~plan_mask(plan, {f.key for f in failures})
    kinds: Counter[str] = Counter(f.kind for f in failures)
    read = failures if reasons_from is None else failures[: max(reasons_from, list_failed)]
    docs = runlog.failure_docs(read)
    counted = docs if reasons_from is None else docs[:reasons_from]
    reasons: Counter[str] = Counter(str(doc.get("reason", "unknown")) for doc in counted)
    listed = [{"year": f.year, "tile": f.tile, "kind": f.kind, "reason": doc.get("reason"),
               "message": doc.get("message"), "attempts": doc.get("attempts")}
              for f, doc in zip(read[:list_failed], docs)]
    states = None
    if with_tiles:
        reasons_of = {f.key: str(doc.get("reason", "unknown")) for f, doc in zip(read, docs) if doc}
        states = tile_states(plan, {"complete": done, "awaiting-input": awaiting,
                                    **failed_masks(plan, failures, reasons_of)})
    pixels_complete = int(plan.pixels[done].sum())
    complete = int(done.sum())
    progress = runlog.load_progress(rid)
    lease = read_lease(store.backend)
    driver = None
    if lease is not None and not lease.record.released:
        info = lease.record
        driver = {"run_id": info.run_id, "host": info.host, "pid": info.pid, "started_at": info.started_at,
                  "last_beat_s_ago": round(lease.age_s, 1), "lease_ttl_s": info.ttl_s,
                  "generation": info.generation}
    return RunStatus(
        run_id=rid, kind=record.get("kind", "run"), created_at=record.get("created_at", ""), planned=len(plan),
        complete=complete, failed=len(failures), pending=len(plan) - complete - len(failures) - int(awaiting.sum()),
        awaiting_input=int(awaiting.sum()),
        pixels_planned=plan.total_pixels, pixels_complete=pixels_complete, failed_by_reason=dict(reasons),
        reasons_counted=sum(reasons.values()),
        failed_tiles=listed, throughput=(progress or {}).get("by_class", {}), progress=progress,
        checkpoint=record.get("checkpoint", {}), failed_by_kind=dict(kinds), driver=driver,
        driver_live=lease is not None and lease.live(), tiles=states,
    )
