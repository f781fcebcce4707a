"""Chaos on a multi-node Ray cluster: 40 tiles with inputs and store on S3 behind a proxy failing 10 % of
requests, one actor that fails every tile, workers SIGKILLed three times, a node removed, the driver SIGKILLed,
a second driver refused by the live lease, then `resume --takeover`: every tile complete exactly once, none
failed, `verify` clean, and every tile's arrays identical to a clean encode of its inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from tessera_pipeline.store import TileStore
from run_support import TESTS_DIR, YEAR, assert_complete_once, make_inputs, small_checkpoint, with_tests_on_path
from s3proxy import flaky_proxy

pytestmark = pytest.mark.slow

FORTY = [f"grid_{-1.95 + 0.1 * i:.2f}_{lat}" for lat in ("53.25", "53.35", "53.45", "53.55") for i in range(10)]
TTL_S = 20.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tessera_pipeline.cli", *args]


@pytest.fixture(scope="module")
def chaos(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Inputs in a bucket, the proxy in front of moto, then (so every Ray process reaches S3 through the proxy)
    a cluster: a head with no CPUs and four one-CPU worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    work = tmp_path_factory.mktemp("chaos")
    bucket = f"chaos-{os.getpid()}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    make_inputs(work / "inputs", FORTY)
    for path in sorted((work / "inputs").rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"inputs/{path.relative_to(work / 'inputs').as_posix()}")
    small_checkpoint(work / "ckpt.pt")
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "TESSERA_CACHE_DIR")}
    with flaky_proxy(s3_endpoint, fail_rate=0.1, seed=11) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.server_port}"
        os.environ["TESSERA_CACHE_DIR"] = str(work / "cache")
        with_tests_on_path()
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
        nodes = [cluster.add_node(num_cpus=1) for _ in range(4)]
        cluster.wait_for_nodes()
        try:
            yield {"work": work, "bucket": bucket, "proxy": proxy, "cluster": cluster, "nodes": nodes,
                   "direct": boto3.client("s3", endpoint_url=s3_endpoint)}
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _markers(direct: Any, bucket: str) -> int:
    pages = direct.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"store.zarr/_commits/{YEAR}/")
    return sum(len(page.get("Contents", [])) for page in pages)


def _kill_a_worker() -> bool:
    found = subprocess.run(["pgrep", "-f", "ray::TileWorker"], capture_output=True, text=True).stdout.split()
    if not found:
        return False
    os.kill(int(found[0]), signal.SIGKILL)
    return True


def test_chaos_ends_with_every_tile_complete_once_and_identical(chaos: dict[str, Any]) -> None:
    work, bucket, proxy, cluster, direct = chaos["work"], chaos["bucket"], chaos["proxy"], chaos["cluster"], chaos["direct"]
    store = f"s3://{bucket}/store.zarr"
    script = textwrap.dedent(f"""
        from tessera_pipeline.grid import TileSet
        from tessera_pipeline.run.config import build_config
        from tessera_pipeline.run.session import start
        config = build_config({{"input": "s3://{bucket}/inputs", "store": "{store}", "checkpoint": {str(work / 'ckpt.pt')!r},
                                "year": {YEAR}, "region": {{"tiles": "x"}}, "address": {cluster.address!r},
                                "lease_ttl_s": {TTL_S}, "retry_backoff_s": 0.5, "refresh_s": 1.0, "progress_every_s": 2.0}})
        start(config, TileSet.from_names({FORTY!r}), processor="run_faults:BrokenActor",
              processor_options={{"flag": {str(work / 'broken')!r}, "delay_s": 1.0}})
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True, env=env)
    events: list[str] = []
    plan = [(3, "kill"), (6, "kill"), (9, "remove"), (12, "kill"), (18, "driver")]
    deadline = time.monotonic() + 300
    while plan and time.monotonic() < deadline:
        assert driver.poll() is None, (driver.stderr.read().decode() if driver.stderr else "")[-3000:]
        done = _markers(direct, bucket)
        at, what = plan[0]
        if done >= at:
            if what == "kill" and not _kill_a_worker():
                time.sleep(0.2)
                continue
            if what == "remove":
                cluster.remove_node(chaos["nodes"][-1], allow_graceful=False)
            if what == "driver":
                os.kill(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
            events.append(f"{what}@{done}")
            plan.pop(0)
        time.sleep(0.2)
    assert not plan, f"chaos did not finish: {events}, {_markers(direct, bucket)} markers"
    assert (work / "broken").exists(), "no actor was broken"
    assert _markers(direct, bucket) < len(FORTY), "the driver was killed after the run ended"

    # A second driver while the killed one's lease is live: refused, one line naming the run and its host.
    second = subprocess.run(_cli("resume", "--store", store, "--address", cluster.address), capture_output=True,
                            text=True, timeout=120, env=env)
    assert second.returncode == 2 and "is in use by run" in second.stderr, second.stderr[-2000:]
    time.sleep(TTL_S)
    resumed = subprocess.run(_cli("resume", "--store", store, "--address", cluster.address, "--takeover", "--json"),
                             capture_output=True, text=True, timeout=400, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    proxy.fail_rate = 0.0
    status = json.loads(subprocess.run(_cli("status", "--store", store, "--json"), capture_output=True, text=True,
                                       timeout=120, env=env).stdout)
    assert (status["complete"], status["failed"], status["pending"]) == (len(FORTY), 0, 0), status
    verify = subprocess.run(_cli("verify", "--store", store), capture_output=True, text=True, timeout=300, env=env)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    assert_complete_once(store, FORTY, debris=True)

    from tessera_pipeline.encode.setup import build_encoder
    from tessera_pipeline.hardware import detect
    from tessera_pipeline.inputs.dpixel import open_tile_at
    from tessera_pipeline.run.policy import builtin_policy

    policy = builtin_policy(detect("cpu").kind)
    encoder, _ = build_encoder(str(work / "ckpt.pt"), precision=policy.precision, batch_size=policy.batch_size, threads=1)
    tiles = TileStore(store)
    for tile in FORTY:
        data = tiles.read_tile(YEAR, tile)
        clean = encoder.encode(open_tile_at(work / "inputs", YEAR, tile))
        assert np.array_equal(data.embeddings, clean.embeddings), tile
        assert np.array_equal(data.scales, clean.scales, equal_nan=True), tile
