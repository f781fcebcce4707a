"""The reader over the network: an S3 store behind a proxy failing 10 % of requests reads the same points, within
a request budget per tile touched."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from read_support import YEAR, landmask, points, write_block
from s3proxy import FlakyProxy, flaky_proxy
from tessera_pipeline.read import open_reader
from tessera_pipeline.store import TileStore

#: Inner chunk edge of the embeddings (one shard per tile, chunks of 128 x 128 pixels x 128 bands).
CHUNK = 128


@pytest.fixture(scope="module")
def s3_block(s3_endpoint: str) -> str:
    """The 3 x 3 block (compressible content) on the test S3 server, written once."""
    import boto3

    bucket = "read-block"
    boto3.client("s3").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/store.zarr"
    write_block(url, compressible=True)
    return url


@pytest.fixture
def proxied(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A factory: route S3 through a seeded proxy failing `fail_rate` of requests."""
    proxies: list[Any] = []

    def make(fail_rate: float) -> FlakyProxy:
        context = flaky_proxy(s3_endpoint, fail_rate=fail_rate, seed=5)
        proxy = context.__enter__()
        proxies.append(context)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        return proxy

    yield make
    for context in proxies:
        context.__exit__(None, None, None)


def _budget(store_url: str, pts: np.ndarray, got: Any) -> int:
    """GETs a point read may make: one marker per cell in the points' 3 x 3 neighbourhoods (found or not); per
    committed tile among them its group metadata and its scales; per tile serving points its shard index and one
    range read per 128 x 128 chunk holding a point it serves."""
    from tessera_pipeline.read.lattice import pixel_of, project, tile_origin

    ix, iy = np.floor(pts[:, 0] * 10).astype(int), np.floor(pts[:, 1] * 10).astype(int)
    cells = {(x + dx, y + dy) for x, y in zip(ix.tolist(), iy.tolist()) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    store = TileStore(store_url)
    budget = len(cells)
    for x, y in cells:
        tile = f"grid_{x / 10 + 0.05:.2f}_{y / 10 + 0.05:.2f}"
        marker = store.marker(YEAR, tile)
        if marker is None:
            continue
        budget += 2
        served = got.tile == tile
        if served.any():
            rows, cols = pixel_of(*project(pts[served, 0], pts[served, 1], 33))
            row0, col0 = tile_origin(marker["transform"], marker["epsg"])
            budget += 1 + len({((r - row0) // CHUNK, (c - col0) // CHUNK) for r, c in zip(rows.tolist(), cols.tolist())})
    return budget


def test_points_read_the_same_through_a_proxy_failing_one_request_in_ten(s3_block: str, proxied: Any) -> None:
    pts = points(3000, seed=7)
    clean = open_reader(TileStore(s3_block), landmask=landmask()).sample_points(pts, YEAR)
    assert (clean.status == "valid").sum() > 1000
    budget = _budget(s3_block, pts, clean)
    proxy = proxied(0.1)
    faulty = open_reader(TileStore(s3_block), landmask=landmask()).sample_points(pts, YEAR)
    np.testing.assert_array_equal(faulty.embeddings, clean.embeddings)
    assert list(faulty.status) == list(clean.status)
    failed = proxy.counts["503"] + proxy.counts["drop"]
    assert failed > 0, proxy.counts
    served = proxy.taken("GET") - failed
    print(f"GETs answered {served}, budget {budget}, failed {failed}, all requests {len(proxy.requests)}")
    assert served <= budget, (served, budget, proxy.counts)
    assert len(proxy.requests) <= math.ceil(budget * 1.5), proxy.counts


def test_a_point_read_lists_nothing(s3_block: str, proxied: Any) -> None:
    proxy = proxied(0.0)
    open_reader(TileStore(s3_block), landmask=landmask()).sample_points(points(200, seed=8), YEAR)
    assert proxy.taken("GET", "list-type") == 0
    assert proxy.taken("GET") > 0

