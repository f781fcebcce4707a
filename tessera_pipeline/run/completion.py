"""Which of a run's planned tiles are done, from the store alone, in O(tiles / 1000) requests.

A plain run's tile is done when it has a commit marker: one listing per year. A reprocess's tile
is done only when its marker names this reprocess's checkpoint and was written after it started:
markers older than the run are not its own (from the listing); a tile its commit log names is done
while its marker is no newer than that log page (a marker rewritten since is read); only the few
committed since the run started but missing from the log (a driver killed before its log page
landed), and the rewritten ones, are read one by one. Results are boolean masks over the plan,
never lists of dicts, so a 1.6 M-tile plan stays small in memory.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np

from tessera_pipeline.store import TileStore
from tessera_pipeline.store.listing import parallel_map
from tessera_pipeline.store.runlog import FailedTile, PlannedTiles, RunLog

log = logging.getLogger(__name__)

#: Markers modified this long before a reprocess started are still read, not presumed older: the
#: store's clock (S3's LastModified) and the driver's clock may disagree by this much.
CLOCK_SLACK_S = 600.0


def plan_mask(plan: PlannedTiles, keys: set[tuple[int, str]]) -> np.ndarray:
    """True where the planned (year, tile) is in `keys`."""
    if not keys:
        return np.zeros(len(plan), dtype=bool)
    return np.fromiter((k in keys for k in zip(plan.years.tolist(), plan.tiles)), dtype=bool, count=len(plan))


def failures_in_plan(plan: PlannedTiles, failures: list[FailedTile], *, done: np.ndarray | None = None) -> list[FailedTile]:
    """The failure records whose tile is planned (and, given `done`, not done), in the records' order."""
    rows = plan_mask(plan, {f.key for f in failures})
    if done is not None:
        rows &= ~done
    keys = {(int(plan.years[i]), plan.tiles[i]) for i in np.flatnonzero(rows).tolist()}
    return [f for f in failures if f.key in keys]


def committed_mask(store: TileStore, plan: PlannedTiles) -> tuple[np.ndarray, np.ndarray]:
    """Per planned tile: has a marker, and that marker's last-modified time (NaN where none)."""
    done = np.zeros(len(plan), dtype=bool)
    modified = np.full(len(plan), np.nan)
    for year in np.unique(plan.years).tolist():
        rows = np.flatnonzero(plan.years == year)
        found = store.committed(int(year))
        when = dict(zip(found.tiles, found.modified.tolist()))
        times = np.fromiter((when.get(plan.tiles[i], np.nan) for i in rows.tolist()), dtype=np.float64,
                            count=len(rows))
        modified[rows] = times
        done[rows] = ~np.isnan(times)
    return done, modified


def done_mask(store: TileStore, runlog: RunLog, record: dict[str, Any], plan: PlannedTiles) -> np.ndarray:
    """True for the planned tiles this run need not do: committed (for a reprocess: its marker names the
    reprocess's checkpoint and was written since it started).

    A reprocess trusts its commit log for a tile only while the tile's marker is no newer than the log page
    that names it (both times from the store's listings, one clock); the markers rewritten since (by
    another writer) and those committed since it started but not logged are read, so a marker another
    writer put after the reprocess's commit is redone, never counted done."""
    committed, modified = committed_mask(store, plan)
    if record.get("kind") != "reprocess":
        return committed
    logged_at = runlog.committed_by_when(record["run_id"])
    page_time = np.full(len(plan), np.nan)
    if logged_at:
        page_time = np.fromiter((logged_at.get(k, np.nan) for k in zip(plan.years.tolist(), plan.tiles)),
                                dtype=np.float64, count=len(plan))
    logged = committed & ~np.isnan(page_time)
    rewritten = logged & (np.nan_to_num(modified, nan=0.0) > np.nan_to_num(page_time, nan=np.inf))
    started = datetime.fromisoformat(str(record["created_at"])).timestamp()
    recent = committed & ~logged & (np.nan_to_num(modified, nan=0.0) >= started - CLOCK_SLACK_S)
    done = logged & ~rewritten
    read = np.flatnonzero(rewritten | recent)
    if len(read):
        log.info("reprocess %s: reading %d marker(s) its commit log does not vouch for", record["run_id"], len(read))
        sha = record["checkpoint"]["sha256"]
        since = str(record["created_at"])

        def own(i: int) -> bool:
            marker = store.marker(int(plan.years[i]), plan.tiles[i]) or {}
            return bool(marker.get("provenance", {}).get("checkpoint_sha256") == sha
                        and str(marker.get("committed_at")) >= since)

        done[read] = np.array(parallel_map(own, read.tolist()), dtype=bool)
    return done
