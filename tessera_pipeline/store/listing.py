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


def _scan_shards(backend: Backend, base: str, pick: Callable[[str, float], R | None]) -> list[R]:
    """`pick` over every object under the folder `base` (None drops it): one listing, as the 20 name-prefix
    shards side by side where the backend lists concurrently (S3)."""
    prefixes = [f"{base}/{shard}" for shard in NAME_SHARDS] if backend.concurrent_listing else [f"{base}/"]

    def shard(prefix: str) -> list[R]:
        picked = (pick(key, modified) for key, modified in backend.scan(prefix))
        return [item for item in picked if item is not None]

    return [item for part in parallel_map(shard, prefixes) for item in part]


def committed(backend: Backend, year: int) -> Committed:
    """Every commit marker of `year` (names and times only, no GETs)."""
    base = layout.marker_prefix(year)
    cut, suffix = len(base) + 1, layout.MARKER_SUFFIX

    def marker(key: str, modified: float) -> tuple[str, float] | None:
        name = key[cut:]
        if not name.endswith(suffix) or "/" in name:
            return None
        tile = name[: -len(suffix)]
        return (tile, modified) if layout.is_tile(tile) else None

    found = _scan_shards(backend, base, marker)
    return Committed(year, [tile for tile, _ in found],
                     np.fromiter((when for _, when in found), dtype=np.float64, count=len(found)))


def year_objects(backend: Backend, year: int) -> set[str]:
    """Every object key under the year's tile groups: one listing (S3: the 20 name-prefix shards side by side)."""
    return set(_scan_shards(backend, layout.year_key(year), lambda key, _: key))


def absent(backend: Backend, year: int, keys: list[str]) -> np.ndarray:
    """Which of many object keys under the year's tile groups do not exist (a bool per key).

    S3: from one listing of the year, O(objects / 1000) requests, never a HEAD per object. A local
    disk checks each key (a stat): walking every folder of a year costs ten times more.
    """
    if backend.concurrent_listing:
        wanted = set(keys)
        present = set(_scan_shards(backend, layout.year_key(year), lambda key, _: key if key in wanted else None))
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
