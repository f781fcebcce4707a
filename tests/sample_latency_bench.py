"""Benchmark: `sample_points` of scattered points over S3 with a first-byte latency on every request (moto behind
the loopback proxy), against requests x latency / threads. `python tests/sample_latency_bench.py [--tiles 100]
[--points 2000] [--latency-ms 30]`; prints one JSON line (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from s3proxy import flaky_proxy
from s3server import TEST_CREDENTIALS, create_bucket, free_port
from test_read_scale import YEAR, points_on, write_real
from tessera_pipeline.bench.store_bench import MODEL_ATTRS
from tessera_pipeline.grid import N_LAT, N_LON, geometry_arrays
from tessera_pipeline.landmask import LandMask
from tessera_pipeline.read import open_reader
from tessera_pipeline.read.points import READ_THREADS
from tessera_pipeline.store import TileStore

@contextmanager
def moto_process() -> Iterator[str]:
    """moto's S3 server in its own process (in this one it would share the reader's GIL); yield its endpoint."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                import urllib.request

                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    """Write the tiles to moto, then time one `sample_points` through a proxy that delays each request."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiles", type=int, default=100)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    ix, iy = rng.choice(3000, args.tiles, replace=False), np.full(args.tiles, 1000)
    with moto_process() as endpoint:
        os.environ.update(TEST_CREDENTIALS)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        url = f"s3://{create_bucket('sample-bench')}/store.zarr"
        store = TileStore(url)
        store.create(MODEL_ATTRS)
        write_real(store, ix, iy)
        pick = rng.integers(0, args.tiles, args.points // 2)
        spare = args.points - len(pick)
        empty = geometry_arrays(np.arange(3000, 3000 + spare) % N_LON, np.full(spare, 1200))
        pts = np.concatenate([points_on(ix[pick], iy[pick], rng), np.stack([empty["lon"], empty["lat"]], 1)])
        with flaky_proxy(endpoint, fail_rate=0.0) as proxy:
            proxy.latency_s = args.latency_ms / 1000
            os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.server_port}"
            reader = open_reader(url, landmask=LandMask(grid=np.zeros((N_LAT, N_LON), bool), source="bench"))
            proxy.requests.clear()
            start = time.perf_counter()
            got = reader.sample_points(pts, YEAR)
            wall = time.perf_counter() - start
            requests = len(proxy.requests)
    floor = requests * proxy.latency_s / READ_THREADS
    print(json.dumps({"points": len(pts), "valid": int((got.status == "valid").sum()), "requests": requests,
                      "wall_s": round(wall, 2), "requests_x_latency_over_threads_s": round(floor, 2),
                      "ratio": round(wall / floor, 2)}))


if __name__ == "__main__":
    main()
