"""One suite every store backend passes: local (a temporary folder), S3 (the moto server on loopback),
in-memory (`memory://`), and the read side of HTTPS (a plain HTTP server over a local store folder, where
every write and listing must raise StoreError)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from httpserver import http_server

from tessera_pipeline.errors import StoreError
from tessera_pipeline.store import TileKey, TileStore, write_encoded_tile
from tessera_pipeline.store.backends import Backend, LocalBackend, open_backend

MODEL = {"model_version": "1.1", "checkpoint_sha256": "ab" * 32, "dimensions": 128}
YEAR, TILE = 2024, "grid_-1.55_53.25"
WRITABLE = ["local", "s3", "memory"]


@dataclass
class Case:
    """A backend under test, where its objects can be written from (itself, or the folder an HTTP server serves),
    and how long to wait for its clock to tick (S3 dates have second resolution)."""

    kind: str
    url: str
    backend: Backend
    writer: Backend
    tick_s: float


@pytest.fixture(params=[*WRITABLE, "http"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    """A fresh, empty store of each kind."""
    kind = request.param
    if kind == "http":
        with http_server(tmp_path / "site") as served:
            writer = LocalBackend(tmp_path / "site" / "store.zarr")
            url = f"{served.url}/store.zarr"
            yield Case(kind, url, open_backend(url), writer, 0.05)
        return
    if kind == "s3":
        url = f"s3://{request.getfixturevalue('new_bucket')('conf')}/prefix/store"
    elif kind == "memory":
        url = f"memory://conformance-{uuid.uuid4().hex[:8]}/store"
    else:
        url = str(tmp_path / "store")
    backend = open_backend(url)
    yield Case(kind, url, backend, backend, 1.1 if kind == "s3" else 0.05)


def test_declares_its_capabilities(case: Case) -> None:
    b = case.backend
    assert isinstance(b, Backend)
    flags = (b.writable, b.deletes, b.listable, b.conditional_writes, b.ranged_reads)
    assert all(isinstance(f, bool) for f in (*flags, b.concurrent_listing))
    assert flags == ((False, False, False, False, True) if case.kind == "http" else (True, True, True, True, True))


def test_absent_objects_read_as_none(case: Case) -> None:
    b = case.backend
    assert b.get("nope") is None and b.get_tagged("nope") is None
    assert b.exists(["nope", "a/nope"]) == [False, False]
    if case.kind != "http":
        assert b.get_timed("nope") is None


def test_reads_see_what_was_written(case: Case) -> None:
    case.writer.put_atomic("a/one", b"first")
    case.writer.put_many({"a/b/two": b"2", "c": b"3"})
    b = case.backend
    assert b.get("a/one") == b"first" and b.get("a/b/two") == b"2"
    tagged = b.get_tagged("c")
    assert tagged is not None and tagged[0] == b"3" and isinstance(tagged[1], str) and tagged[1]
    assert b.exists(["a/one", "a/b/two", "a/b", "zz"]) == [True, True, False, False]
    case.writer.put_atomic("a/one", b"second")
    assert b.get("a/one") == b"second"


@pytest.mark.parametrize("case", WRITABLE, indirect=True)
def test_put_if_compares_and_swaps(case: Case) -> None:
    b = case.backend
    assert b.put_if("m", b"one", tag=None), "absent: written"
    assert not b.put_if("m", b"two", tag=None), "present: refused"
    assert b.put_if("m", b"one", tag=None), "same bytes: a retry whose first try landed"
    found = b.get_tagged("m")
    assert found is not None and found[0] == b"one"
    assert b.put_if("m", b"two", tag=found[1]), "matching tag: written"
    assert b.get("m") == b"two"
    assert not b.put_if("m", b"three", tag=found[1]), "stale tag: refused"
    assert b.put_if("m", b"two", tag=found[1]), "stale tag but same bytes: a landed retry"
    assert b.get("m") == b"two"
    assert not b.put_if("absent", b"x", tag=found[1]), "a tag on an absent object: refused"
    assert b.get("absent") is None


@pytest.mark.parametrize("case", WRITABLE, indirect=True)
def test_get_timed_ages_on_the_stores_clock(case: Case) -> None:
    b = case.backend
    b.put_atomic("lease", b"held")
    first = b.get_timed("lease")
    assert first is not None and first.data == b"held" and first.age_s >= 0
    assert first.tag == (b.get_tagged("lease") or (b"", ""))[1]
    time.sleep(case.tick_s)
    later = b.get_timed("lease")
    assert later is not None and first.age_s < later.age_s < case.tick_s + 2


@pytest.mark.parametrize("case", WRITABLE, indirect=True)
def test_listings_scans_and_deletes(case: Case) -> None:
    b = case.backend
    b.put_many({"t/x/1": b"1", "t/x/2": b"2", "t/y": b"3", "t/ya": b"4", "u": b"5"})
    b.make_durable("t")
    assert b.list_children("t") == ["x", "y", "ya"]
    assert set(b.list_children("")) == {"t", "u"}
    assert b.list_children("none") == []
    assert sorted(b.list_keys("t")) == ["t/x/1", "t/x/2", "t/y", "t/ya"]
    assert b.list_keys("none") == []
    now = time.time()
    scanned = dict(b.scan("t/"))
    assert sorted(scanned) == ["t/x/1", "t/x/2", "t/y", "t/ya"]
    assert all(abs(mtime - now) < 600 for mtime in scanned.values())
    assert sorted(k for k, _ in b.scan("t/y")) == ["t/y", "t/ya"], "a partial name scans by prefix"
    assert list(b.scan("none/")) == []
    b.delete("t/y")
    b.delete("t/y")  # absent: fine
    assert b.get("t/y") is None and b.get("t/ya") == b"4"
    b.delete_tree("t/x")
    b.delete_tree("t/x")
    assert sorted(b.list_keys("t")) == ["t/ya"] and b.get("u") == b"5"


@pytest.mark.parametrize("case", ["http"], indirect=True)
def test_read_only_https_refuses_writes_and_listings(case: Case) -> None:
    b = case.backend
    calls: list[Callable[[], object]] = [
        lambda: b.put_atomic("k", b"x"), lambda: b.put_if("k", b"x", tag=None), lambda: b.put_many({"k": b"x"}),
        lambda: b.list_children(""), lambda: b.list_keys(""), lambda: list(b.scan("")),
        lambda: b.delete("k"), lambda: b.delete_tree("k"), lambda: b.make_durable("k"), lambda: b.get_timed("k"),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="cannot be listed or written"):
            call()


def test_a_tile_round_trips_through_tilestore(case: Case) -> None:
    rng = np.random.default_rng(3)
    emb = rng.integers(-127, 128, (19, 11, 128), dtype=np.int8)
    scales = rng.uniform(0.005, 0.02, (19, 11)).astype(np.float32)
    scales[0, 0] = np.nan
    write_url = case.writer.url
    record = write_encoded_tile(write_url, YEAR, TILE, emb, scales, epsg=32630,
                                transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 5900000.0),
                                provenance={"precision": "bf16"}, model_attrs=MODEL)
    store = TileStore(case.url)
    data = store.read_tile(YEAR, TILE, verify=True)
    assert np.array_equal(data.embeddings, emb) and np.array_equal(data.scales, scales, equal_nan=True)
    assert data.version == record.version and store.is_complete(YEAR, TILE)
    assert store.verify_tile(YEAR, TILE).ok
    if case.kind == "http":
        with pytest.raises(StoreError):
            store.list_complete(YEAR)
    else:
        assert store.list_complete(YEAR) == [TileKey(YEAR, TILE)]


def test_zarr_arrays_round_trip_with_ranged_reads(case: Case) -> None:
    """A sharded array written through the writer's zarr store reads back, a window of it too (byte ranges)."""
    import zarr

    values = np.arange(40 * 30, dtype=np.float32).reshape(40, 30)
    group = zarr.open_group(case.writer.zarr_store("z"), mode="w-", zarr_format=3)
    group.create_array("a", shape=values.shape, chunks=(10, 10), shards=(20, 30), dtype="f4")[:] = values
    read = zarr.open_group(case.backend.zarr_store("z"), mode="r", zarr_format=3, use_consolidated=False)
    assert np.array_equal(read["a"][:], values)
    assert np.array_equal(read["a"][12:17, 3:8], values[12:17, 3:8])
