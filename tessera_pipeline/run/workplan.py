"""What a run has to do: the region's tiles with their pixel counts, largest first, minus what is done.

Pixels come from the real tile geometry (vectorised per UTM zone), so the ~1.6 M tiles of the
globe plan in seconds. Largest first keeps the tail of a run short: the last tiles are small ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tessera_pipeline.grid import TileSet, geometry_arrays, names_from_index
from tessera_pipeline.store.runlog import PlannedTiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkSplit:
    """A plan split by state: what to schedule now, and what is left out and why."""

    todo: PlannedTiles
    complete: int
    failed: int
    awaiting: int = 0


def plan_tiles(tiles: TileSet, year: int) -> PlannedTiles:
    """The tiles with their pixel counts (H x W of the grid geometry), largest first, ties by name."""
    geo = geometry_arrays(tiles.ix, tiles.iy)
    pixels = (geo["height"] * geo["width"]).astype(np.int64)
    order = np.lexsort((tiles.ix, tiles.iy, -pixels))
    names = names_from_index(tiles.ix[order], tiles.iy[order])
    return PlannedTiles(np.full(len(names), year, dtype=np.int32), names, pixels[order])


def subset(plan: PlannedTiles, keep: np.ndarray) -> PlannedTiles:
    """The planned tiles where `keep` is True, order kept."""
    idx = np.flatnonzero(keep)
    return PlannedTiles(plan.years[idx], [plan.tiles[i] for i in idx.tolist()], plan.pixels[idx])


def split_plan(plan: PlannedTiles, complete: np.ndarray, left_out: np.ndarray,
               awaiting: np.ndarray | None = None) -> WorkSplit:
    """Leave out complete tiles, the `left_out` ones (permanent failures not retried) and those `awaiting` their
    inputs; masks over the plan."""
    failed = left_out & ~complete
    waiting = np.zeros(len(plan), dtype=bool) if awaiting is None else awaiting & ~complete & ~failed
    return WorkSplit(subset(plan, ~complete & ~failed & ~waiting), int(complete.sum()), int(failed.sum()),
                     int(waiting.sum()))
