"""Whole-store listings at global scale: commit markers as compact arrays, S3 listed in parallel by name prefix.

A global year is ~1.6 M markers. One ListObjectsV2 page holds 1,000 keys, so a listing costs
O(tiles / 1000) requests; on S3 the markers of a year are listed as 20 name-prefix shards at once
(`grid_-0` ... `grid_-9`, `grid_0` ... `grid_9`: every tile name starts with one), which divides the
wall time by the shards' parallelism without any layout change. The result holds names and
last-modified times only (no per-marker GETs, no list of dicts), so status and resume stay within
a few hundred MB for the whole globe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from tessera_pipeline.store import layout
from tessera_pipeline.store.backend import Backend

#: The first characters of every tile name (`grid_{lon:.2f}_...`): the shards of a parallel listing.
NAME_SHARDS = tuple(f"grid_-{d}" for d in range(10)) + tuple(f"grid_{d}" for d in range(10))
#: Threads for sharded listings and batched GETs (each one S3 connection at a time).
IO_THREADS = 16

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Committed:
    """The tiles of one year that have a commit marker, with each marker's last-modified time (epoch s)."""

    year: int
    tiles: list[str]
    modified: np.ndarray

    def __len__(self) -> int:
        """Number of committed tiles."""
        return len(self.tiles)

    def names(self) -> set[str]:
        """The committed tile names as a set (for membership tests against a plan)."""
        return set(self.tiles)


def _markers_in(backend: Backend, prefix: str, base: str) -> tuple[list[str], list[float]]:
    """Tile names and modified times of the markers a scan of `prefix` finds directly under `base`."""
    names: list[str] = []
    times: list[float] = []
    cut, suffix = len(base), layout.MARKER_SUFFIX
    for key, modified in backend.scan(prefix):
        name = key[cut:]
        if not name.endswith(suffix) or "/" in name:
            continue
        tile = name[: -len(suffix)]
        if layout.is_tile(tile):
            names.append(tile)
            times.append(modified)
    return names, times


def committed(backend: Backend, year: int) -> Committed:
    """Every commit marker of `year`: one streamed listing, sharded by name prefix where the backend lists
    concurrently (S3)."""
    base = f"{layout.marker_prefix(year)}/"
    prefixes = [base + shard for shard in NAME_SHARDS] if backend.concurrent_listing else [base]
    parts = parallel_map(lambda p: _markers_in(backend, p, base), prefixes)
    tiles = [name for names, _ in parts for name in names]
    modified = np.fromiter((t for _, times in parts for t in times), dtype=np.float64, count=len(tiles))
    return Committed(year, tiles, modified)


def year_objects(backend: Backend, year: int) -> set[str]:
    """Every object key under the year's tile groups: one listing (S3: the 20 name-prefix shards side by side)."""
    base = layout.year_key(year)
    if not backend.concurrent_listing:
        return set(backend.list_keys(base))
    parts = parallel_map(lambda p: [key for key, _ in backend.scan(p)], [f"{base}/{s}" for s in NAME_SHARDS])
    return {key for part in parts for key in part}


def absent(backend: Backend, year: int, keys: list[str]) -> np.ndarray:
    """Which of many object keys under the year's tile groups do not exist (a bool per key).

    S3: from one listing of the year, O(objects / 1000) requests, never a HEAD per object. A local
    disk checks each key (a stat): walking every folder of a year costs ten times more.
    """
    if backend.concurrent_listing:
        wanted = set(keys)
        shards = [f"{layout.year_key(year)}/{s}" for s in NAME_SHARDS]
        parts = parallel_map(lambda p: [key for key, _ in backend.scan(p) if key in wanted], shards)
        present = {key for part in parts for key in part}
        return np.fromiter((key not in present for key in keys), dtype=bool, count=len(keys))
    return ~np.fromiter(backend.exists(keys), dtype=bool, count=len(keys))


def tile_versions(backend: Backend, year: int, tiles: set[str]) -> dict[str, set[str]]:
    """The version groups stored for each of these tiles: one listing of the year on S3, a folder listing per tile locally."""
    if not backend.concurrent_listing:
        return {t: {v for v in backend.list_children(layout.tile_key(year, t)) if layout.is_version(v)} for t in tiles}
    versions: dict[str, set[str]] = {}
    for key in year_objects(backend, year):
        parts = key.split("/", 3)
        if len(parts) > 3 and parts[1] in tiles and layout.is_version(parts[2]):
            versions.setdefault(parts[1], set()).add(parts[2])
    return versions


def committed_years(backend: Backend) -> list[int]:
    """The years that have a commit-marker folder."""
    return sorted(int(n) for n in backend.list_children(layout.COMMITS_PREFIX) if n.isdigit() and len(n) == 4)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], *, threads: int = IO_THREADS) -> list[R]:
    """`fn` over `items` on a few threads (I/O-bound store requests), results in order."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="tessera-io") as pool:
        return list(pool.map(fn, items))
