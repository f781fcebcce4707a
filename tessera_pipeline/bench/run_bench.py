"""Driver-scale benchmarks of the run layer: planning the globe, the driver's own tile rate with a no-op
encoder (real Ray actors, real scheduling, real store bookkeeping), and actor idle time with S3 inputs
(whole-store commands and the scheduling loop at global scale are in `scale_bench`).

These measure the run layer, not the model: a global run's ~1.6 M tiles must plan in seconds, and the
driver must never be what limits a fleet (a 1,000-GPU fleet finishes ~1 tile/s in total).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PlanBench:
    """Planning the whole globe: tiles, pixels, seconds, peak RSS."""

    tiles: int
    pixels: int
    select_s: float
    plan_s: float
    encode_s: float
    plan_bytes: int
    peak_rss_mb: float


@dataclass(frozen=True)
class DriverBench:
    """The driver with no-op actors: tiles per second through scheduling, results and progress."""

    tiles: int
    actors: int
    window: int
    seconds: float
    tiles_per_s: float


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_plan_globe() -> PlanBench:
    """Select every land tile, compute each tile's pixels from its geometry, sort, and encode the plan."""
    from tessera_pipeline import landmask, region
    from tessera_pipeline.run.workplan import plan_tiles
    from tessera_pipeline.store.runlog import encode_plan

    t0 = time.perf_counter()
    tiles = region.select_global(landmask.load_landmask("globe"))
    t1 = time.perf_counter()
    plan = plan_tiles(tiles, 2024)
    t2 = time.perf_counter()
    blob = encode_plan(plan)
    t3 = time.perf_counter()
    return PlanBench(len(plan), plan.total_pixels, t1 - t0, t2 - t1, t3 - t2, len(blob), _peak_rss_mb())


def bench_driver(tiles: int = 20_000, window: int = 16, local_cpus: int = 2) -> DriverBench:
    """Run `tiles` tiles through a local cluster's actors with the no-op processor; tiles/s of the whole loop."""
    from tessera_pipeline import landmask, region
    from tessera_pipeline.run.config import build_config
    from tessera_pipeline.run.session import start
    from tessera_pipeline.run.workplan import plan_tiles, subset

    plan = plan_tiles(region.select_global(landmask.load_landmask("globe")), 2024)
    plan = subset(plan, np.arange(len(plan)) < tiles)
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config({
            "input": str(Path(tmp) / "none"), "store": str(Path(tmp) / "store.zarr"), "checkpoint": "none",
            "year": 2024, "window": window, "local_cpus": local_cpus,
            "progress_every_s": 5.0, "region": {"global": True},
        })
        t0 = time.perf_counter()
        report = start(config, None, plan=plan, processor="noop")
        seconds = time.perf_counter() - t0
    assert report.outcome is not None
    done = report.outcome.progress.complete
    loop_s = report.outcome.progress.elapsed_s
    return DriverBench(done, report.outcome.progress.actors, window, round(loop_s, 3),
                       round(done / max(loop_s, 1e-9), 1)) if seconds else DriverBench(0, 0, window, 0.0, 0.0)


@dataclass(frozen=True)
class IdleBench:
    """Actor idle time between tiles with inputs and store on a loopback S3 server (moto)."""

    tiles: int
    size: str
    precision: str
    encode_s_per_tile: float
    idle_fraction_max: float
    idle_fraction_mean: float
    evicted: bool


def bench_s3_idle(tiles: int = 6, size: tuple[int, int] = (16, 16)) -> IdleBench:
    """Upload synthetic tiles to a moto S3 server on loopback, run them with a real-size random v1.1 model,
    and measure each actor's idle time between encodes (prefetch should hide the downloads)."""
    import os

    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        from tessera_pipeline.errors import RunError

        raise RunError("bench-run --s3-idle needs moto's server: pip install 'moto[server]'") from exc
    from tessera_pipeline import landmask, region
    from tessera_pipeline.inputs.synthetic import make_synthetic_tile
    from tessera_pipeline.locations import s3_client
    from tessera_pipeline.model.random_checkpoint import save_random_checkpoint
    from tessera_pipeline.run.config import build_config
    from tessera_pipeline.run.session import start
    from tessera_pipeline.run.workplan import plan_tiles

    names = region.select_bbox((-1.7, 53.2, -1.3, 53.4), landmask.load_landmask("globe")).names()[:tiles]
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "TESSERA_CACHE_DIR")}
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            host, port = server.get_host_and_port()
            os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                              AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                              TESSERA_CACHE_DIR=str(Path(tmp) / "cache"))
            client = s3_client()
            client.create_bucket(Bucket="bench")
            for name in names:
                folder = make_synthetic_tile(Path(tmp) / "inputs", 2024, name, size=size)
                for f in folder.iterdir():
                    client.upload_file(str(f), "bench", f"inputs/2024/{name}/{f.name}")
            ckpt = save_random_checkpoint(Path(tmp) / "random_v1_1.pt")
            config = build_config({"input": "s3://bench/inputs", "store": "s3://bench/store.zarr",
                                   "checkpoint": str(ckpt), "year": 2024, "region": {"bbox": "-1.7,53.2,-1.3,53.4"}})
            from tessera_pipeline.grid import TileSet

            report = start(config, None, plan=plan_tiles(TileSet.from_names(names), 2024))
            cache = Path(tmp) / "cache"
            evicted = not any(cache.rglob("*.npy")) if cache.exists() else True
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert report.outcome is not None
    idle = report.outcome.idle_fraction()
    progress = report.outcome.progress
    encode = [v.get("encode_s_per_mpx") or 0.0 for v in progress.by_class.values()]
    from tessera_pipeline.run.policy import class_policy

    precision = ",".join(f"{cls}:{class_policy(cls, config).precision}" for cls in sorted(progress.by_class))
    return IdleBench(progress.complete, f"{size[0]}x{size[1]}", precision,
                     round(max(encode) * size[0] * size[1] / 1e6, 2) if encode else 0.0,
                     round(max(idle.values()), 4) if idle else 0.0,
                     round(sum(idle.values()) / len(idle), 4) if idle else 0.0, evicted)


def run_all(driver_tiles: int) -> dict[str, Any]:
    """Planning the globe and the no-op driver, as one JSON-ready dict."""
    return {"plan_globe": asdict(bench_plan_globe()), "driver_noop": asdict(bench_driver(driver_tiles))}


if __name__ == "__main__":
    print(json.dumps(run_all(20_000), indent=1))
