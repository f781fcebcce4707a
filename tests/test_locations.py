"""Locations: URL parsing, one S3 client factory, anonymous S3, and a store read over plain HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpserver import http_server

from tessera_pipeline import locations
from tessera_pipeline.errors import StoreError
from tessera_pipeline.store import TileStore, layout, write_encoded_tile
from tessera_pipeline.store.backend import HttpBackend, open_backend

MODEL = {"model_version": "1.1", "checkpoint_sha256": "ab" * 32, "dimensions": 128}
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5900000.0)
TILE = "grid_-1.55_53.25"
YEAR = 2024


def write_tile(url: str, h: int = 300, w: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Commit one random tile (several inner chunks of one shard, so reads are byte ranges); return its arrays."""
    rng = np.random.default_rng(7)
    emb = rng.integers(-127, 128, (h, w, 128), dtype=np.int8)
    scales = rng.uniform(0.005, 0.02, (h, w)).astype(np.float32)
    scales[0, 0] = np.nan
    write_encoded_tile(url, YEAR, TILE, emb, scales, epsg=32630, transform=TRANSFORM,
                       provenance={"precision": "fp32"}, model_attrs=MODEL)
    return emb, scales


def test_parse_tells_locations_apart() -> None:
    assert locations.parse("s3://bucket/a/b/") == locations.Location("s3", "s3://bucket/a/b/", bucket="bucket", key="a/b")
    assert locations.parse("file:///tmp/x").path == "/tmp/x"
    assert locations.parse(Path("rel/dir")).scheme == "file"
    assert locations.parse("HTTPS://host/s.zarr").scheme == "https"
    assert locations.is_http("http://h/x") and not locations.is_http("s3://b/k")
    with pytest.raises(ValueError, match="unsupported location"):
        locations.parse("gs://bucket/x")
    with pytest.raises(StoreError, match="unsupported store URL"):
        open_backend("gs://bucket/x")


def test_inputs_store_and_checkpoint_share_one_s3_client_factory() -> None:
    from tessera_pipeline.inputs import s3 as inputs_s3
    from tessera_pipeline.model import checkpoint
    from tessera_pipeline.store import backend

    assert inputs_s3.s3_client is backend.s3_client is checkpoint.s3_client is locations.s3_client
    assert inputs_s3.is_s3 is backend.is_s3 is locations.is_s3


def test_s3_timeouts_fit_the_operation_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt of a call fits S3_OPERATION_BUDGET_S; AWS_MAX_ATTEMPTS / AWS_RETRY_MODE are honoured."""
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.setattr(locations, "S3_OPERATION_BUDGET_S", 3.0)
    config = locations.s3_config_kwargs()
    assert config["connect_timeout"] <= 1.0 and config["read_timeout"] <= 1.0
    assert config["retries"] == {"max_attempts": locations.S3_ATTEMPTS, "mode": "standard"}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "6")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    config = locations.s3_config_kwargs()
    assert config["read_timeout"] <= 0.5 and config["retries"] == {"max_attempts": 6, "mode": "adaptive"}


def test_no_credentials_means_anonymous(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no key, no profile, no files and no metadata service, S3 is read unsigned (s3fs anon)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_NO_SIGN_REQUEST", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert locations.s3_anonymous() and locations.s3_storage_options()["anon"] is True
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert not locations.s3_anonymous() and "anon" not in locations.s3_storage_options()
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    assert locations.s3_anonymous()


def test_anonymous_s3_read(new_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_NO_SIGN_REQUEST=YES on a public-read bucket: the client sends unsigned requests (no Authorization
    header) and a tile reads whole."""
    bucket = new_bucket("anon")
    url = f"s3://{bucket}/store.zarr"
    emb, scales = write_tile(url, 40, 30)
    # Public read of objects, no ListBucket. moto checks a HEAD against "s3:HeadObject" (AWS: s3:GetObject).
    public = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*",
                                                      "Action": ["s3:GetObject", "s3:HeadObject"],
                                                      "Resource": f"arn:aws:s3:::{bucket}/*"}]}
    locations.s3_client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(public))
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    sent: list[dict[str, Any]] = []
    client = locations.s3_client()
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(dict(request.headers)))
    data = TileStore(url).read_tile(YEAR, TILE, verify=True)
    assert np.array_equal(data.embeddings, emb) and np.array_equal(data.scales, scales, equal_nan=True)
    assert sent and not any("Authorization" in headers for headers in sent)
    assert not TileStore(url).backend.listable, "anonymous reads check objects by HEAD, not LIST"
    assert locations.s3_storage_options()["anon"] is True


def test_store_reads_over_plain_http_without_listing(tmp_path: Path) -> None:
    """A committed tile served by a plain HTTP server (no listings, byte ranges) reads the same as locally."""
    local = tmp_path / "site" / "store.zarr"
    emb, scales = write_tile(str(local))
    want = TileStore(str(local)).read_tile(YEAR, TILE)
    with http_server(tmp_path / "site") as served:
        base, requests = served.url, served.requests
        store = TileStore(f"{base}/store.zarr")
        assert isinstance(store.backend, HttpBackend)
        marker = store.marker(YEAR, TILE)
        assert marker == want.marker
        got = store.read_tile(YEAR, TILE, verify=True)
        assert np.array_equal(got.embeddings, emb) and np.array_equal(got.scales, scales, equal_nan=True)
        assert got.version == want.version and got.transform == want.transform and got.epsg == want.epsg
        window = store.read_tile(YEAR, TILE, window=(slice(130, 140), slice(5, 9)), dequantise=True)
        assert np.array_equal(window.embeddings, want.embeddings[130:140, 5:9].astype(np.float32)
                              * want.scales[130:140, 5:9, None], equal_nan=True)
        assert any(rng for _method, _path, rng in requests), "sharded reads should use byte ranges"
        assert not any(path.endswith("/") for _method, path, _rng in requests), "a read must not list"
        for call in (lambda: store.list_complete(YEAR), lambda: write_tile(f"{base}/store.zarr"),
                     lambda: store.backend.list_keys(layout.COMMITS_PREFIX)):
            with pytest.raises(StoreError, match="https store cannot be listed or written.*release or a manifest"):
                call()


def test_http_missing_object_and_server_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 404 is None (absent); 5xx is retried, then a typed error; a deleted chunk is a typed integrity
    error; an unreachable server names the URL."""
    monkeypatch.setattr(locations, "HTTP_BACKOFF_S", 0.0)
    local = tmp_path / "site" / "store.zarr"
    write_tile(str(local), 20, 20)
    marker = TileStore(str(local)).marker(YEAR, TILE)
    assert marker is not None
    mkey = layout.marker_key(YEAR, TILE)
    with http_server(tmp_path / "site") as served:
        base = served.url
        backend = HttpBackend(f"{base}/store.zarr")
        assert backend.get("no/such/key") is None
        assert backend.exists([f"{marker['path']}/zarr.json", "no/such/key"]) == [True, False]
        served.outages[f"/store.zarr/{mkey}"] = locations.HTTP_ATTEMPTS - 1
        assert backend.get(mkey) == (local / mkey).read_bytes()
        served.outages[f"/store.zarr/{mkey}"] = locations.HTTP_ATTEMPTS
        with pytest.raises(StoreError, match=f"{base}/store.zarr/{mkey}: GET answered HTTP 503"):
            backend.get(mkey)
        shard = f"/store.zarr/{marker['path']}/{layout.EMBEDDINGS}/c/0/0/0"
        served.outages[shard] = locations.HTTP_ATTEMPTS - 1  # the shard's index, then its chunk: retried
        assert np.array_equal(TileStore(f"{base}/store.zarr").read_tile(YEAR, TILE).embeddings,
                              TileStore(str(local)).read_tile(YEAR, TILE).embeddings)
        assert served.outages[shard] == 0
        shutil.rmtree(local / marker["path"] / layout.SCALES / "c")
        with pytest.raises(StoreError, match=f"missing object {marker['path']}/scales/c/0/0"):
            TileStore(f"{base}/store.zarr").read_tile(YEAR, TILE)
    with pytest.raises(StoreError, match=f"{base}/store.zarr/zarr.json: unreachable"):
        HttpBackend(f"{base}/store.zarr").get("zarr.json")
