"""The run with inputs and store on S3 behind a loopback proxy that fails requests (503 SlowDown, dropped
connections, writes applied whose answer is lost, targeted faults, a whole outage): every tile ends
complete exactly once, `verify` is clean, the driver's own retry path runs, the input cache is evicted
after each tile, a failure record that cannot be written does not end the run, and an outage of a
minute pauses the run instead of failing its tiles."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from tessera_pipeline.cli.main import cli
from tessera_pipeline.run.session import start
from run_support import TILES, YEAR, assert_complete_once, config, make_inputs, small_checkpoint, tileset, with_tests_on_path
from s3proxy import flaky_proxy

pytestmark = pytest.mark.slow

#: The outage's length: a minute in the suite; `TESSERA_TEST_OUTAGE_S=300` runs the five-minute soak by hand.
OUTAGE_S = float(os.environ.get("TESSERA_TEST_OUTAGE_S", "60"))
EIGHT = [*TILES, "grid_-1.65_53.25", "grid_-1.65_53.35", "grid_-1.75_53.25", "grid_-1.75_53.35"]


def _upload(client: Any, bucket: str, root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"inputs/{path.relative_to(root).as_posix()}")


@pytest.fixture
def s3_run(s3_endpoint: str, new_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Inputs for eight tiles in a bucket; AWS_ENDPOINT_URL then points at a proxy (no random faults unless a
    test sets `fail_rate`) and a local Ray starts."""
    import ray

    bucket = new_bucket("run")
    make_inputs(tmp_path / "inputs", EIGHT)
    _upload(boto3.client("s3"), bucket, tmp_path / "inputs")
    small_checkpoint(tmp_path / "ckpt.pt")
    with flaky_proxy(s3_endpoint, fail_rate=0.0, seed=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
        with_tests_on_path()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            yield {"bucket": bucket, "proxy": proxy, "work": tmp_path}
        finally:
            ray.shutdown()


def test_flaky_s3_loses_nothing_retries_and_evicts_each_tile(s3_run: dict[str, Any]) -> None:
    bucket, proxy, work = s3_run["bucket"], s3_run["proxy"], s3_run["work"]
    proxy.fail_rate = 0.1
    # Beyond the HTTP client's own retries: one tile's array writes refused for a while (the worker gives up,
    # the driver retries the tile), and one marker PUT applied upstream whose answer is lost (its retry gets
    # 412: our own success, not a conflict).
    proxy.add_rule(method="PUT", path_contains=f"{TILES[1]}/v", action="503", times=30)
    proxy.add_rule(method="PUT", path_contains="_commits/", action="lost", times=1)
    store = f"s3://{bucket}/store.zarr"
    record = work / "evictions.txt"
    report = start(config(work, input=f"s3://{bucket}/inputs", store=store, region={"tiles": "x"}),
                   tileset(EIGHT), processor="run_faults:EvictionProbe", processor_options={"record": str(record)})
    assert report.outcome is not None
    progress = report.outcome.progress
    assert (progress.complete, progress.failed) == (len(EIGHT), 0), progress.to_dict()
    assert progress.retries_by_reason.get("io-error", 0) >= 1, (progress.retries_by_reason, proxy.counts)
    counts = proxy.counts
    assert counts["503"] >= 5 and counts["drop"] >= 3 and counts["lost"] == 1, counts
    assert_complete_once(store, EIGHT)
    evictions = [line.split() for line in record.read_text().splitlines()]
    assert len(evictions) >= len(EIGHT) and all(n == "0" for _, n in evictions), evictions


def test_a_failure_record_that_cannot_be_written_does_not_end_the_run(s3_run: dict[str, Any]) -> None:
    bucket, proxy, work = s3_run["bucket"], s3_run["proxy"], s3_run["work"]
    client = boto3.client("s3")
    bad = f"inputs/{YEAR}/{TILES[2]}/bands.npy"
    client.put_object(Bucket=bucket, Key=bad, Body=b"\x93NUMPY truncated")
    proxy.add_rule(method="PUT", path_contains="_run/failures/", action="503", times=40)
    store = f"s3://{bucket}/store.zarr"
    report = start(config(work, input=f"s3://{bucket}/inputs", store=store, region={"tiles": "x"}), tileset(EIGHT))
    assert report.outcome is not None
    progress = report.outcome.progress
    assert (progress.complete, progress.failed) == (len(EIGHT) - 1, 1), progress.to_dict()
    assert proxy.counts["503"] >= 10, proxy.counts
    result = CliRunner().invoke(cli, ["status", "--store", store, "--json"])
    assert result.exit_code == 1 and '"failed": 1' in result.output and TILES[2] in result.output, result.output


def test_an_s3_outage_of_a_minute_pauses_the_run_and_fails_no_tile(s3_run: dict[str, Any]) -> None:
    bucket, proxy, work = s3_run["bucket"], s3_run["proxy"], s3_run["work"]
    store = f"s3://{bucket}/store.zarr"
    seen: dict[str, Any] = {"paused": False, "started": None}

    def outage_after_two(p: Any) -> None:
        if seen["started"] is None and p.complete >= 2:
            seen["started"] = time.monotonic()
            proxy.outage = True
            threading.Timer(OUTAGE_S, lambda: setattr(proxy, "outage", False)).start()
        seen["paused"] = seen["paused"] or p.paused

    report = start(config(work, input=f"s3://{bucket}/inputs", store=store, region={"tiles": "x"}), tileset(EIGHT),
                   processor_options={"delay_s": 1.0}, on_progress=outage_after_two)
    assert seen["started"] is not None, "the outage never started"
    assert proxy.counts["outage"] >= 10, proxy.counts
    assert report.outcome is not None
    progress = report.outcome.progress
    assert (progress.complete, progress.failed) == (len(EIGHT), 0), progress.to_dict()
    assert seen["paused"], "the run should have paused while every request failed"
    assert_complete_once(store, EIGHT, debris=True)
    # The outage cost no tile an attempt: the driver's probe proved it, and what it had charged was refunded.
    from tessera_pipeline.store import TileStore

    attempts = {t: TileStore(store).marker(YEAR, t)["provenance"]["attempt"] for t in EIGHT}
    assert set(attempts.values()) == {1}, attempts


def test_a_lost_lease_renewal_reply_then_30_s_of_503s_never_depose_the_driver(s3_run: dict[str, Any]) -> None:
    """The renewal at 20 s lands but its answer is lost; every lease PUT then fails for 30 s more. The driver
    holds back new tiles meanwhile, then finds the lease still its own and finishes (the run lasts past the
    renewal at 60 s, where a driver judging by its stale tag alone would depose itself)."""
    bucket, proxy, work = s3_run["bucket"], s3_run["proxy"], s3_run["work"]
    store = f"s3://{bucket}/store.zarr"
    armed: dict[str, Any] = {"at": None}

    def arm(p: Any) -> None:
        if armed["at"] is None:
            armed["at"] = time.monotonic()
            proxy.add_rule(method="PUT", path_contains="_run/lease", action="lost", times=1)
            proxy.add_rule(method="PUT", path_contains="_run/lease", action="503", times=10_000)
            threading.Timer(50.0, proxy.rules.clear).start()

    report = start(config(work, input=f"s3://{bucket}/inputs", store=store, region={"tiles": "x"}, window=1),
                   tileset(EIGHT), processor_options={"delay_s": 12.0}, on_progress=arm)
    assert report.outcome is not None
    progress = report.outcome.progress
    assert (progress.complete, progress.failed) == (len(EIGHT), 0), progress.to_dict()
    assert proxy.counts["lost"] == 1 and proxy.counts["503"] >= 3, proxy.counts
    assert time.monotonic() - armed["at"] > 62, "the run ended before a stale-tag renewal could depose it"
    assert_complete_once(store, EIGHT)
