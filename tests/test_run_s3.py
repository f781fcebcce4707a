"""The run with inputs and store on S3 behind a loopback proxy that fails 10 % of requests (503 SlowDown
and dropped connections): every tile ends complete exactly once, `verify` is clean, the S3 input cache
is evicted per tile, and actors overlap the next tile's download with the current encode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tessera_pipeline.run.launch import start
from run_support import TILES, assert_complete_once, config, make_inputs, small_checkpoint, tileset, with_tests_on_path
from s3proxy import flaky_proxy

pytestmark = pytest.mark.slow


@pytest.fixture
def flaky_s3(s3_endpoint: str, new_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, object]]:
    """Inputs uploaded to a bucket; then AWS_ENDPOINT_URL points at a 10 %-failing proxy and a local Ray starts."""
    import ray

    bucket = new_bucket("run")
    make_inputs(tmp_path / "inputs")
    client = boto3.client("s3")
    for path in sorted((tmp_path / "inputs").rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"inputs/{path.relative_to(tmp_path / 'inputs').as_posix()}")
    with flaky_proxy(s3_endpoint, fail_rate=0.1, seed=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
        with_tests_on_path()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            yield bucket, proxy
        finally:
            ray.shutdown()


def test_flaky_s3_loses_nothing_and_evicts_the_input_cache(flaky_s3: tuple[str, object], tmp_path: Path) -> None:
    bucket, proxy = flaky_s3
    small_checkpoint(tmp_path / "ckpt.pt")
    store = f"s3://{bucket}/store.zarr"
    report = start(config(tmp_path, input=f"s3://{bucket}/inputs", store=store, max_attempts=8), tileset())
    assert report.outcome is not None
    assert report.outcome.progress.complete == len(TILES) and report.outcome.progress.failed == 0
    counts = proxy.counts  # type: ignore[attr-defined]
    assert counts["503"] >= 5 and counts["drop"] >= 5, counts
    assert_complete_once(store)
    leftovers = [p for p in (tmp_path / "cache").rglob("*.npy")] if (tmp_path / "cache").exists() else []
    assert leftovers == [], "the S3 input cache must be evicted after each tile"
    assert os.environ["AWS_ENDPOINT_URL"].endswith(str(proxy.server_port))  # type: ignore[attr-defined]
