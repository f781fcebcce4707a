"""Whole-store commands cost listings, not a request per tile: a reprocess's `status` and `resume` read
no marker its commit log already vouches for, `status` reads only the failure records it counts, and
the commit log itself loses no entry (pages of 1,000, an entry arriving mid-write, a driver killed
before its last page landed). Requests are counted by a loopback proxy in front of a real S3 server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from tessera_pipeline import landmask, region
from tessera_pipeline.grid import TileSet
from tessera_pipeline.run import completion
from tessera_pipeline.run.progress import RecordWriter
from tessera_pipeline.run.session import resume_split
from tessera_pipeline.run.status import run_status
from tessera_pipeline.run.workplan import plan_tiles
from tessera_pipeline.store import TileStore, layout
from tessera_pipeline.store.backend import LocalBackend
from tessera_pipeline.store.runlog import COMMIT_LOG_PAGE, RunLog, commit_log_key, encode_plan, failure_key, run_key

from s3proxy import FlakyProxy, flaky_proxy

YEAR = 2024
OLD, NEW = "a" * 64, "b" * 64
RUN_ID = "r20261128T100000Z-scale0"


def _tiles(n: int) -> list[str]:
    """`n` real land tiles (England and around)."""
    names = region.select_bbox((-6.0, 50.0, 2.0, 56.0), landmask.load_landmask("globe")).names()
    assert len(names) >= n
    return sorted(names)[:n]


def _marker(tile: str, sha: str, when: str) -> bytes:
    return json.dumps({"format": layout.COMMIT_FORMAT, "tile": tile, "year": YEAR, "committed_at": when,
                       "provenance": {"checkpoint_sha256": sha}}).encode()


@pytest.fixture
def s3_store(s3_endpoint: str, new_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FlakyProxy, Any]]:
    """An empty store prefix on the real S3 server, reached through a counting proxy with no faults."""
    bucket = new_bucket("scale")
    client = boto3.client("s3")
    with flaky_proxy(s3_endpoint, fail_rate=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        yield f"s3://{bucket}/store.zarr", proxy, lambda key, body: client.put_object(
            Bucket=bucket, Key=f"store.zarr/{key}", Body=body)


def test_a_reprocess_status_and_resume_read_only_the_markers_its_log_does_not_name(
        s3_store: tuple[str, FlakyProxy, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """250 tiles committed by an earlier run; a reprocess then committed 30 of them, its driver logging 25
    before it was killed. status must say 30 done by reading at most the 5 unlogged markers (not 250),
    and resume must leave exactly the other 220 to do."""
    store, proxy, put = s3_store
    tiles = _tiles(250)
    for tile in tiles:
        put(layout.marker_key(YEAR, tile), _marker(tile, OLD, "2026-01-01T00:00:00+00:00"))
    time.sleep(2.5)  # S3 times have 1 s resolution: the reprocess starts well after every old marker was written
    monkeypatch.setattr(completion, "CLOCK_SLACK_S", 1.0)
    started = datetime.now(timezone.utc).isoformat()
    plan = plan_tiles(TileSet.from_names(tiles), YEAR)
    record = {"format": "tessera-run/1", "run_id": RUN_ID, "kind": "reprocess", "created_at": started,
              "config": {}, "checkpoint": {"sha256": NEW}}
    put(run_key(RUN_ID, "plan.tsv.gz"), encode_plan(plan))
    put(run_key(RUN_ID, "run.json"), json.dumps(record).encode())
    put("_run/current.json", json.dumps({"run_id": RUN_ID}).encode())
    redone = tiles[:30]
    for tile in redone:
        put(layout.marker_key(YEAR, tile), _marker(tile, NEW, datetime.now(timezone.utc).isoformat()))
    put(commit_log_key(RUN_ID, "deadbeef-000000"), "".join(f"{YEAR}\t{t}\n" for t in redone[:25]).encode())

    proxy.requests.clear()
    st = run_status(store)
    assert (st.planned, st.complete, st.pending) == (250, 30, 220)
    marker_gets = proxy.taken("GET", "/_commits/")  # object GETs (a LIST's prefix is in its query, %2F-encoded)
    lists = proxy.taken("GET", "list-type")
    assert marker_gets <= 5, f"{marker_gets} marker GETs; only the 5 unlogged ones need reading"
    assert lists <= 30, f"{lists} LIST requests for 250 markers"

    proxy.requests.clear()
    tile_store = TileStore(store)
    runlog = RunLog(tile_store.backend)
    split, _ = resume_split(tile_store, runlog, runlog.load_run(), runlog.load_plan(RUN_ID))
    assert split.complete == 30 and sorted(split.todo.tiles) == sorted(tiles[30:])
    assert proxy.taken("GET", "/_commits/") <= 5


def test_status_reads_only_the_failure_records_it_counts(s3_store: tuple[str, FlakyProxy, Any]) -> None:
    """40 failed tiles: status reports all 40 failed (from the listing) but GETs only the 10 records whose
    reasons it counts, and says it counted 10."""
    store, proxy, put = s3_store
    tiles = _tiles(50)
    plan = plan_tiles(TileSet.from_names(tiles), YEAR)
    record = {"format": "tessera-run/1", "run_id": RUN_ID, "kind": "run", "config": {},
              "created_at": datetime.now(timezone.utc).isoformat(), "checkpoint": {"sha256": NEW}}
    put(run_key(RUN_ID, "plan.tsv.gz"), encode_plan(plan))
    put(run_key(RUN_ID, "run.json"), json.dumps(record).encode())
    put("_run/current.json", json.dumps({"run_id": RUN_ID}).encode())
    for tile in tiles[:10]:
        put(layout.marker_key(YEAR, tile), _marker(tile, NEW, record["created_at"]))
    for tile in tiles[10:]:
        put(failure_key(YEAR, tile), json.dumps({"reason": "bad-input:MissingFileError", "message": "x"}).encode())

    proxy.requests.clear()
    st = run_status(store, reasons_from=10, list_failed=5)
    assert (st.complete, st.failed, st.pending) == (10, 40, 0)
    assert st.failed_by_reason == {"bad-input:MissingFileError": 10} and st.reasons_counted == 10
    assert len(st.failed_tiles) == 5
    assert proxy.taken("GET", "/_run/failures/") == 10


class _SlowLog(RunLog):
    """A run log whose first write of the open (not yet full) page waits while the driver logs one more tile
    into that same page."""

    def __init__(self, backend: Any, writer: list[RecordWriter]) -> None:
        super().__init__(backend)
        self.writer = writer
        self.first = True

    def save_commit_page(self, run_id: str, page: str, entries: list[tuple[int, str]]) -> None:
        if self.first and len(entries) < COMMIT_LOG_PAGE:
            self.first = False
            arrived = threading.Thread(target=self.writer[0].log_commit, args=(YEAR, "grid_9.95_9.95"))
            arrived.start()
            arrived.join()
        super().save_commit_page(run_id, page, entries)


def test_the_commit_log_keeps_every_entry_in_pages_of_a_thousand(tmp_path: Path) -> None:
    """2,500 commits land in three pages; a tile logged while its page is being written is written too."""
    backend = LocalBackend(tmp_path / "s.zarr")
    holder: list[RecordWriter] = []
    runlog = _SlowLog(backend, holder)
    writer = RecordWriter(runlog, RUN_ID)
    holder.append(writer)
    names = [f"grid_{lon:.2f}_{lat:.2f}" for lon in np.arange(0.05, 5.0, 0.1) for lat in np.arange(0.05, 5.0, 0.1)]
    for name in names[:2500]:
        writer.log_commit(YEAR, name)
    assert writer.flush(30.0) == 0
    pages = sorted(p.name for p in (tmp_path / "s.zarr" / "_run" / "runs" / RUN_ID / "commits").iterdir())
    assert len(pages) == 3, pages
    logged = RunLog(backend).committed_by(RUN_ID)
    assert logged == {(YEAR, n) for n in names[:2500]} | {(YEAR, "grid_9.95_9.95")}


def test_a_reprocess_never_counts_done_a_logged_tile_whose_marker_was_rewritten_since(tmp_path: Path) -> None:
    """A reprocess logged its commit of a tile; another writer then put a marker naming another checkpoint.
    The log no longer vouches for that tile (its marker is newer than the page): status reads it and says
    pending, never complete on the old checkpoint."""
    store_dir = tmp_path / "store.zarr"
    backend = LocalBackend(store_dir)
    tiles = _tiles(3)
    started = datetime.now(timezone.utc).isoformat()
    plan = plan_tiles(TileSet.from_names(tiles), YEAR)
    record = {"format": "tessera-run/1", "run_id": RUN_ID, "kind": "reprocess", "created_at": started,
              "config": {}, "checkpoint": {"sha256": NEW}}
    backend.put_atomic(run_key(RUN_ID, "plan.tsv.gz"), encode_plan(plan))
    backend.put_atomic(run_key(RUN_ID, "run.json"), json.dumps(record).encode())
    backend.put_atomic("_run/current.json", json.dumps({"run_id": RUN_ID}).encode())
    now = datetime.now(timezone.utc).isoformat()
    for tile in tiles:
        backend.put_atomic(layout.marker_key(YEAR, tile), _marker(tile, NEW, now))
    backend.put_atomic(commit_log_key(RUN_ID, "deadbeef-000000"), "".join(f"{YEAR}\t{t}\n" for t in tiles).encode())
    time.sleep(0.05)
    backend.put_atomic(layout.marker_key(YEAR, tiles[0]), _marker(tiles[0], OLD, datetime.now(timezone.utc).isoformat()))
    st = run_status(str(store_dir))
    assert (st.complete, st.pending) == (2, 1), st.to_dict()
