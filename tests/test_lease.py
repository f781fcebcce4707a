"""The store's lease, as an operator of a month-long spot run relies on it: a live driver is never taken over
(not with --takeover, not from a host whose clock runs ahead), a heartbeat keeps it live, its own lost reply
never deposes it, a dead driver on this host is taken over at once, and every commit is fenced by the
lease's generation on the store's side."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_pipeline.errors import CommitConflictError, FencedError
from tessera_pipeline.run.lease import LeaseHeldError, StoreLease
from tessera_pipeline.store import TileStore
from tessera_pipeline.store.backend import open_backend
from tessera_pipeline.store.fencing import Fence, read_lease
from s3proxy import flaky_proxy

HOLDER = """
import sys, time
from tessera_pipeline.store.backend import open_backend
from tessera_pipeline.run.lease import StoreLease
lease = StoreLease(open_backend(sys.argv[1]), "holder-run", ttl_s=float(sys.argv[2]))
lease.acquire()
lease.start_heartbeat()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Any]:
    """Factory: a live driver in another process holding the store's lease (TTL, lifetime), killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str, ttl_s: float, live_s: float = 120.0) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(ttl_s), str(live_s)], stdout=subprocess.PIPE,
                                text=True, env=dict(os.environ))
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_live_driver_is_never_taken_over_even_with_takeover(tmp_path: Path, holder: Any) -> None:
    url = str(tmp_path / "store.zarr")
    holder(url, ttl_s=60)
    with pytest.raises(LeaseHeldError, match=r"lapses in \d+ s.*--takeover") as info:
        StoreLease(open_backend(url), "second", ttl_s=60).acquire()
    assert "holder-run" in str(info.value)
    with pytest.raises(LeaseHeldError):
        StoreLease(open_backend(url), "second", ttl_s=60, takeover=True).acquire()


def test_the_heartbeat_keeps_a_driver_live_past_its_ttl(tmp_path: Path, holder: Any) -> None:
    url = str(tmp_path / "store.zarr")
    holder(url, ttl_s=1.5)
    time.sleep(4.0)
    with pytest.raises(LeaseHeldError):
        StoreLease(open_backend(url), "second", ttl_s=1.5, takeover=True).acquire()


def test_a_host_whose_clock_runs_ahead_cannot_take_over_a_live_driver(tmp_path: Path, holder: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "store.zarr")
    holder(url, ttl_s=60)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 90.0)
    with pytest.raises(LeaseHeldError):
        StoreLease(open_backend(url), "skewed", ttl_s=60, takeover=True).acquire()


def test_a_dead_driver_on_this_host_is_taken_over_at_once(tmp_path: Path, holder: Any) -> None:
    url = str(tmp_path / "store.zarr")
    proc = holder(url, ttl_s=60)
    proc.kill()
    proc.wait()
    with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}.*gone from this host.*pass --takeover.*resume --store"):
        StoreLease(open_backend(url), "next", ttl_s=60).acquire()
    lease = StoreLease(open_backend(url), "next", ttl_s=60, takeover=True)
    lease.acquire()
    assert lease.generation == 2


def test_generations_only_grow_across_drivers(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "store.zarr"))
    gens = []
    for run in range(3):
        lease = StoreLease(backend, f"run{run}", ttl_s=60)
        lease.acquire()
        gens.append(lease.generation)
        lease.release()
    assert gens == [1, 2, 3]
    found = read_lease(backend)
    assert found is not None and found.record.released and not found.live()


def _tile(store: TileStore, fence: Fence | None, prior: Any = None, value: int = 1) -> Any:
    emb = np.full((4, 3, 16), value, dtype=np.int8)
    sc = np.ones((4, 3), dtype=np.float32)
    return store.write_tile(2024, "grid_0.05_0.05", emb, sc, epsg=32631, transform=(10.0, 0.0, 0.0, 0.0, -10.0, 0.0),
                            provenance={"writer": value}, prior=prior, fence=fence)


def _store(url: str) -> TileStore:
    store = TileStore(url)
    store.create({"model_version": "v1.1", "dimensions": 16, "checkpoint_sha256": "0" * 64})
    return store


def test_a_commit_is_refused_once_a_newer_generation_holds_the_store(tmp_path: Path) -> None:
    url = str(tmp_path / "store.zarr")
    store = _store(url)
    a = StoreLease(store.backend, "A", ttl_s=1.0)
    a.acquire()
    prior = store.prior_marker(2024, "grid_0.05_0.05", a.fence)  # read before A's slow encode
    time.sleep(1.2)  # A cannot renew: its lease lapses
    with pytest.raises(FencedError, match="not renewed"):
        _tile(store, a.fence, prior, value=1)
    b = StoreLease(store.backend, "B", ttl_s=60, takeover=True)
    b.acquire()
    _tile(store, b.fence, value=2)
    with pytest.raises((FencedError, CommitConflictError)):
        _tile(store, a.fence, prior, value=1)  # A's worker finishing late: never over B's commit
    with pytest.raises(FencedError, match="generation 2"):
        store.prior_marker(2024, "grid_0.05_0.05", a.fence)
    assert store.marker(2024, "grid_0.05_0.05")["provenance"]["writer"] == 2
    assert store.marker(2024, "grid_0.05_0.05")["lease_generation"] == 2


def test_a_lost_renewal_reply_then_errors_never_depose_the_driver(s3_endpoint: str, new_bucket: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket("lease")
    with flaky_proxy(s3_endpoint, fail_rate=0.0, seed=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        backend = open_backend(f"s3://{bucket}/store.zarr")
        lease = StoreLease(backend, "mine", ttl_s=60)
        lease.acquire()
        proxy.add_rule(method="PUT", path_contains="_run/lease", action="lost", times=1)
        proxy.add_rule(path_contains="_run/lease", action="503", times=40)
        lease.beat()
        proxy.rules.clear()
        assert lease.beat() and lease.beat(), lease.lost_reason
        lease.check()
        with pytest.raises(LeaseHeldError):
            StoreLease(open_backend(f"s3://{bucket}/store.zarr"), "other", ttl_s=60, takeover=True).acquire()
