"""The `mosaic` driver's own cost at a global year, with no cluster: the real planning (zone grids, shard jobs) over
every land tile of the globe, then the real submission/wait loop (publish/shard_pool.py) over no-op shard builds.

`python -m tessera_pipeline.bench.mosaic_bench --shards N1 N2 ... [--loop window|submit-all] [--repeat 3]` plans
once and drives each count of shards `--repeat` times (peak RSS is the process's). `submit-all` is the loop mosaic
ran before the window (every shard submitted at once, one wait per finished shard over every pending handle), kept
here to measure it side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from tessera_pipeline.grid import PIXEL_SIZE, geometry_arrays, names_from_index
from tessera_pipeline.landmask import LandMask, load_landmask
from tessera_pipeline.publish import mosaic, shard_pool
from tessera_pipeline.publish.mosaic import ShardJob
from tessera_pipeline.publish.shard_pool import ShardExecutor, ShardResult
from tessera_pipeline.read.index import TileRef

#: Shard tasks in flight in the benchmark's window: twice the 8,000 cores the issue sizes a global run on.
BENCH_WINDOW = 16_000


class NoOpShards:
    """A shard executor whose builds finish as they are submitted; its wait looks at every handle it is given, as
    ray.wait does, so a loop pays for the handles it passes."""

    def __init__(self) -> None:
        self._next = 0
        self._done: set[int] = set()
        self.in_flight = 0
        self.most_in_flight = 0

    def submit(self, job: ShardJob) -> Hashable:
        """A finished build's handle."""
        self._next += 1
        self._done.add(self._next)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return self._next

    def wait(self, handles: Sequence[Hashable], num_returns: int, timeout_s: float | None) -> list[Hashable]:
        """The first `num_returns` finished handles, after looking at all of them."""
        ready = [h for h in handles if h in self._done]
        return ready[:num_returns]

    def result(self, handle: Hashable, job: ShardJob) -> ShardResult:
        """The shard's record key, nothing left out."""
        self._done.discard(handle)  # type: ignore[arg-type]
        self.in_flight -= 1
        return mosaic.record_key(job), {}


def submit_all(jobs: Iterable[ShardJob], executor: ShardExecutor, window: int,
               on_result: Callable[[ShardJob, ShardResult], None]) -> None:
    """The loop before the window: every shard submitted at once, one wait per finished shard over all pending."""
    pending = {executor.submit(job): job for job in jobs}
    while pending:
        ready = executor.wait(list(pending), 1, None)
        job = pending.pop(ready[0])
        on_result(job, executor.result(ready[0], job))


LOOPS: dict[str, Callable[..., None]] = {"window": shard_pool.drive, "submit-all": submit_all}


def global_refs(landmask: LandMask, year: int = 2024, every: int = 1) -> list[TileRef]:
    """A TileRef for every `every`-th land tile of the mask, with the geometry a real commit records."""
    tiles = landmask.tiles()
    ix, iy = tiles.ix[::every], tiles.iy[::every]
    g = geometry_arrays(ix, iy)
    return [TileRef(year=year, tile=name, version="v1", path=f"{year}/{name}/v1", epsg=int(e),
                    transform=(PIXEL_SIZE, 0.0, float(oe), 0.0, -PIXEL_SIZE, float(on)), height=int(h), width=int(w),
                    scales_sha256=None)
            for name, e, h, w, oe, on in zip(names_from_index(ix, iy), g["epsg"].tolist(), g["height"].tolist(),
                                             g["width"].tolist(), g["origin_e"].tolist(), g["origin_n"].tolist())]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plan_and_drive(sizes: Sequence[int | None], loop: str, *, repeat: int = 3, every: int = 1,
                   window: int = BENCH_WINDOW) -> dict[str, Any]:
    """Plan a mosaic of the globe's land tiles (every `every`-th) once, then drive the first n shard jobs (all when
    None) through `loop` with no-op builds, `repeat` times per n: the seconds of each step and the peak RSS."""
    mask = load_landmask("globe")
    t0 = time.perf_counter()
    refs = global_refs(mask, every=every)
    t1 = time.perf_counter()
    grids = mosaic.zone_grids(refs, mask)
    t2 = time.perf_counter()
    jobs = mosaic.shard_jobs(refs, grids, 2024)
    t3 = time.perf_counter()
    out: dict[str, Any] = {"tiles": len(refs), "zones": len(grids), "shards": len(jobs), "refs_s": round(t1 - t0, 2),
                           "zone_grids_s": round(t2 - t1, 2), "shard_jobs_s": round(t3 - t2, 2),
                           "planned_rss_mb": round(peak_rss_mb()), "loop": loop, "window": window, "runs": []}
    for size in sizes:
        todo = jobs[:size]
        seconds = []
        for _ in range(repeat):
            executor = NoOpShards()
            built: list[str] = []
            t4 = time.perf_counter()
            LOOPS[loop](todo, executor, window, lambda job, result: built.append(result[0]))
            seconds.append(time.perf_counter() - t4)
            if sorted(built) != sorted(mosaic.record_key(j) for j in todo):
                raise AssertionError("the loop did not build every shard exactly once")
        out["runs"].append({"shards": len(todo), "most_in_flight": executor.most_in_flight,
                            "loop_s": [round(s, 3) for s in sorted(seconds)], "peak_rss_mb": round(peak_rss_mb())})
    return out


def zone_grid_scaling(everies: Sequence[int] = (64, 16, 4, 1)) -> list[dict[str, Any]]:
    """Seconds of zone grid planning for every `every`-th land tile of the globe (linear: time per tile flat)."""
    mask = load_landmask("globe")
    rows = []
    for every in everies:
        refs = global_refs(mask, every=every)
        t0 = time.perf_counter()
        mosaic.zone_grids(refs, mask)
        seconds = time.perf_counter() - t0
        rows.append({"tiles": len(refs), "zone_grids_s": round(seconds, 2),
                     "us_per_tile": round(float(np.float64(seconds) / len(refs) * 1e6), 2)})
    return rows


def main() -> None:
    """One figure as a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, nargs="+", default=[None], help="shard counts to drive (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the loop per shard count")
    parser.add_argument("--loop", choices=sorted(LOOPS), default="window")
    parser.add_argument("--every", type=int, default=1, help="plan every N-th land tile")
    parser.add_argument("--zone-scaling", action="store_true", help="time zone grid planning at 4 tile counts")
    args = parser.parse_args()
    if args.zone_scaling:
        print(json.dumps(zone_grid_scaling()))
    else:
        print(json.dumps(plan_and_drive(args.shards, args.loop, repeat=args.repeat, every=args.every)))


if __name__ == "__main__":
    main()
