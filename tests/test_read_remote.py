"""The reader over the network: an S3 store behind a proxy failing 10 % of requests reads the same points, within
a request budget per tile touched; a plain HTTP server without listings (through a release) and a public bucket
read without credentials give the same values."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
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
    from tessera_pipeline.store.manifest import build_manifest
    from tessera_pipeline.store.releases import write_release

    store = write_block(url, compressible=True)
    write_release(store, "r1", build_manifest(store, YEAR), settle_s=0)
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
    pts = points(2000, seed=7)
    clean = open_reader(TileStore(s3_block), landmask=landmask()).sample_points(pts, YEAR)
    assert (clean.status == "valid").sum() > 700
    budget = _budget(s3_block, pts, clean)
    proxy = proxied(0.1)
    faulty = open_reader(TileStore(s3_block), landmask=landmask()).sample_points(pts, YEAR)
    np.testing.assert_array_equal(faulty.embeddings, clean.embeddings)
    assert list(faulty.status) == list(clean.status)
    failed = proxy.counts["503"] + proxy.counts["drop"]
    assert failed > 0, proxy.counts
    assert proxy.taken("GET", "list-type") == 0, "a point read lists nothing"
    served = proxy.taken("GET") - failed
    print(f"GETs answered {served}, budget {budget}, failed {failed}, all requests {len(proxy.requests)}")
    assert served <= budget, (served, budget, proxy.counts)
    assert len(proxy.requests) <= math.ceil(budget * 1.5), proxy.counts


def _two_tile_store(url: str) -> TileStore:
    """Two neighbouring tiles of the block (compressible content) with a release r1."""
    from tessera_pipeline.store.manifest import build_manifest
    from tessera_pipeline.store.releases import write_release

    store = write_block(url, ["grid_17.75_79.65", "grid_17.85_79.65"], compressible=True)
    write_release(store, "r1", build_manifest(store, YEAR), settle_s=0)
    return store


def test_points_and_regions_read_over_plain_http_through_a_release(tmp_path: Path) -> None:
    """A store behind an HTTP server with listings disabled: through its release, points and a region read the same
    as locally, with no listing request and no marker GET."""
    from httpserver import http_server

    local = _two_tile_store(str(tmp_path / "site" / "store.zarr"))
    pts = points(500, seed=9)
    box = (17.78, 79.62, 17.84, 79.66)
    want = open_reader(local, release="r1", landmask=landmask())
    with http_server(tmp_path / "site") as served:
        remote = open_reader(f"{served.url}/store.zarr", release="r1", landmask=landmask())
        got = remote.sample_points(pts, YEAR)
        np.testing.assert_array_equal(got.embeddings, want.sample_points(pts, YEAR).embeddings)
        assert (got.status == "valid").sum() > 50
        np.testing.assert_array_equal(remote.read_region(box, YEAR).values, want.read_region(box, YEAR).values)
        paths = [path for _method, path, _range in served.requests]
        assert not any(p.endswith("/") for p in paths) and not any("_commits" in p for p in paths)


def test_points_read_from_a_public_bucket_without_credentials(s3_block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_NO_SIGN_REQUEST=YES against a bucket that grants public GET only: points and a region read as with
    credentials, through current markers and through a release."""
    import json

    import boto3

    pts = points(500, seed=10)
    box = (17.80, 79.60, 17.86, 79.64)
    want = open_reader(s3_block, landmask=landmask())
    want_points, want_region = want.sample_points(pts, YEAR), want.read_region(box, YEAR).values
    public = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*",
                                                      "Action": ["s3:GetObject", "s3:HeadObject"],
                                                      "Resource": "arn:aws:s3:::read-block/*"}]}
    boto3.client("s3").put_bucket_policy(Bucket="read-block", Policy=json.dumps(public))
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    for reader in (open_reader(s3_block, landmask=landmask()), open_reader(s3_block, release="r1", landmask=landmask())):
        got = reader.sample_points(pts, YEAR)
        np.testing.assert_array_equal(got.embeddings, want_points.embeddings)
        assert list(got.status) == list(want_points.status)
        np.testing.assert_array_equal(reader.read_region(box, YEAR).values, want_region)


#: Four committed tiles whose centre pixel has data, and a water cell west of the block (no tile near it).
CENTRES = ((17.75, 79.55), (17.75, 79.65), (17.85, 79.55), (17.85, 79.65))
WATER = (17.45, 79.65)


def test_points_make_exactly_the_requests_they_need(s3_block: str, proxied: Any) -> None:
    """Points at four tiles' centres and one over water: through markers, one marker GET per cell that can hold a
    point (not nine), and per tile read its group metadata, scales, shard index and one chunk (and a HEAD before each
    whole-object GET, s3fs asking its size); through a release, the same without the marker GETs. A change that adds
    a request fails here."""
    pts = np.array(CENTRES + (WATER,))
    proxy = proxied(0.0)
    readers = {"markers": open_reader(s3_block, landmask=landmask()),
               "release": open_reader(s3_block, release="r1", landmask=landmask())}
    per_tile = 4  # zarr.json, scales/c/0/0, the embeddings shard index, one 128 x 128 chunk of the shard
    want = {"markers": len(pts) + per_tile * len(CENTRES), "release": per_tile * len(CENTRES)}
    for how, reader in readers.items():
        proxy.requests.clear()
        got = reader.sample_points(pts, YEAR)
        assert list(got.status) == ["valid"] * len(CENTRES) + ["water"], how
        assert proxy.taken("GET") == want[how], (how, proxy.requests)
        assert proxy.taken("HEAD") == 2 * len(CENTRES) == len(proxy.requests) - want[how], (how, proxy.requests)
