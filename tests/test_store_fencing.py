"""Fenced commits: a writer that lost a race never leaves a marker naming a deleted version.

Two real writers of one tile, on a local path and on `s3://` (the moto server on loopback): writer A
is paused inside the `hook` at each stage of its write while writer B commits in full, then A
resumes. Also: the conditional-put API of both backends, the cleanup grace period, a marker PUT
whose answer is lost (applied upstream, then the connection dropped), and a store that ignores
conditional headers.
"""

from __future__ import annotations

import http.client
import logging
import pickle
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from s3proxy import flaky_proxy

from tessera_pipeline.errors import CommitConflictError, StoreUnreachableError
from tessera_pipeline.store import TileStore, layout
from tessera_pipeline.store.backend import open_backend

MODEL = {"model_version": "1.1", "checkpoint_sha256": "ab" * 32, "dimensions": 128}
OTHER_CHECKPOINT = "cd" * 32
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5900000.0)
EPSG = 32630
H, W = 19, 13
TILE = "grid_-1.55_53.25"
YEAR = 2024
STAGES = ["encoded", "embeddings", "scales", "metadata", "commit", "committed"]
PAUSE_S = 60.0


def make_tile(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random int8 embeddings and float32 scales."""
    rng = np.random.default_rng(seed)
    return rng.integers(-127, 128, (H, W, 128), dtype=np.int8), rng.uniform(0.005, 0.02, (H, W)).astype(np.float32)


def write(store: TileStore, seed: int, **provenance: Any) -> Any:
    """Write tile `seed` through the real write path."""
    emb, scales = make_tile(seed)
    return store.write_tile(
        YEAR, TILE, emb, scales, epsg=EPSG, transform=TRANSFORM, provenance={"seed": seed, **provenance}
    )


def version_dirs(store: TileStore) -> list[str]:
    """The version groups currently stored for the tile."""
    return [n for n in store.backend.list_children(layout.tile_key(YEAR, TILE)) if layout.is_version(n)]


def old_version(age_s: float) -> str:
    """A version id created `age_s` seconds ago (debris of a long-dead writer, when old enough)."""
    when = datetime.now(timezone.utc) - timedelta(seconds=age_s)
    return f"v{when:%Y%m%dT%H%M%S%f}Z-0badc0de"


def plant(store: TileStore, version: str) -> None:
    """Leave an uncommitted version group behind, as a writer would before its marker."""
    store.backend.put_many({f"{layout.version_key(YEAR, TILE, version)}/zarr.json": b"{}"})


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store location: a local directory or an s3:// prefix on the moto server."""
    if request.param == "local":
        yield str(tmp_path / "store")
    else:
        yield f"s3://{request.getfixturevalue('new_bucket')('fence')}/prefix/store"


class PausedWriter:
    """Writer A: a real `write_tile` in a thread, held inside the hook at one stage until released."""

    def __init__(self, url: str, stage: str, seed: int) -> None:
        self.stage, self.seed = stage, seed
        self.reached, self.resume = threading.Event(), threading.Event()
        self.record: Any = None
        self.error: BaseException | None = None
        self.store = TileStore(url, hook=self._hook)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _hook(self, name: str) -> None:
        if name == self.stage:
            self.reached.set()
            if not self.resume.wait(PAUSE_S):
                raise TimeoutError(f"writer A was never resumed at {name}")

    def _run(self) -> None:
        try:
            self.record = write(self.store, self.seed)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc

    def start_and_wait(self) -> None:
        """Start A and wait until it is paused at its stage."""
        self.thread.start()
        assert self.reached.wait(PAUSE_S), f"writer A never reached {self.stage}: {self.error!r}"

    def finish(self) -> None:
        """Release A and wait for it to end."""
        self.resume.set()
        self.thread.join(PAUSE_S)
        assert not self.thread.is_alive(), "writer A did not finish"


def assert_consistent(store: TileStore, seeds: dict[str, int]) -> dict[str, Any]:
    """The marker names a stored version, the tile verifies, and a read returns that version's data."""
    marker = store.marker(YEAR, TILE)
    assert marker is not None, "tile is not complete"
    versions = version_dirs(store)
    assert marker["version"] in versions, f"marker names {marker['version']}, store holds {versions}"
    result = store.verify_tile(YEAR, TILE)
    assert result.ok, result.problems
    data = store.read_tile(YEAR, TILE)
    assert data.version == marker["version"]
    seed = seeds[marker["version"]]
    assert data.provenance["seed"] == seed
    assert np.array_equal(data.embeddings, make_tile(seed)[0])
    return marker


@pytest.mark.parametrize("stage", STAGES)
def test_writer_paused_at_each_stage_while_another_commits(store_url: str, stage: str) -> None:
    setup = TileStore(store_url)
    setup.create(MODEL)
    base = write(setup, 0)  # a committed version both writers replace
    a = PausedWriter(store_url, stage, seed=1)
    a.start_and_wait()
    b = write(TileStore(store_url), 2, checkpoint_sha256=OTHER_CHECKPOINT)
    a.finish()
    store = TileStore(store_url)
    seeds = {b.version: 2, base.version: 0}
    if a.record is not None:
        seeds[a.record.version] = 1
    marker = assert_consistent(store, seeds)
    if stage == "committed":
        # A committed before B started; B then replaced A's commit. A succeeded; B's tile stands.
        assert a.error is None and a.record is not None
        assert marker["version"] == b.version
    else:
        assert isinstance(a.error, CommitConflictError), f"A should have lost at {stage}, got {a.error!r}"
        assert a.error.current_version == b.version
        assert a.error.current_checkpoint_sha256 == OTHER_CHECKPOINT
        assert TILE in str(a.error) and b.version in str(a.error)
    assert version_dirs(store) == [b.version], "the loser's or the superseded version was left behind"


def test_reviewers_scenario_stale_writer_cannot_name_a_deleted_version(store_url: str) -> None:
    """A pauses after its arrays are durable; B commits the tile in full; A then tries its marker."""
    TileStore(store_url).create(MODEL)
    a = PausedWriter(store_url, "commit", seed=1)
    a.start_and_wait()
    b = write(TileStore(store_url), 2)
    a.finish()
    store = TileStore(store_url)
    marker = assert_consistent(store, {b.version: 2})
    assert marker["version"] == b.version
    assert isinstance(a.error, CommitConflictError), a.error
    assert a.error.current_checkpoint_sha256 == MODEL["checkpoint_sha256"]  # same checkpoint: not a real conflict
    assert version_dirs(store) == [b.version]
    assert store.list_complete() == [layout.TileKey(YEAR, TILE)]


def test_cleanup_keeps_young_and_named_versions_and_deletes_old_debris(store_url: str) -> None:
    store = TileStore(store_url)
    store.create(MODEL)
    first = write(store, 0)
    young = layout.new_version()  # a writer still finishing its arrays
    debris = old_version(2 * 3600)  # a writer that crashed two hours ago
    plant(store, young)
    plant(store, debris)
    second = write(store, 1)
    left = version_dirs(store)
    assert young in left, "a version younger than the grace period was deleted"
    assert first.version not in left, "the superseded version (named by the replaced marker) was kept"
    assert debris not in left, "debris older than the grace period was kept"
    assert second.version in left
    newer = layout.new_version(after=second.version)
    plant(store, newer)
    eager = TileStore(store_url, cleanup_grace_s=0)
    deleted = eager.cleanup(YEAR, TILE, current=newer)  # a stale `current`: the marker names `second`
    assert second.version in version_dirs(store), "cleanup deleted the version the marker names"
    assert young in deleted and newer not in deleted
    assert eager.cleanup(YEAR, TILE) == [newer]
    assert version_dirs(store) == [second.version]
    assert_consistent(store, {second.version: 1})


def test_conflict_error_survives_pickling() -> None:
    err = CommitConflictError("lost", tile=TILE, current_version="v1", current_checkpoint_sha256="ab")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, CommitConflictError) and str(back) == str(err)
    assert (back.tile, back.current_version, back.current_checkpoint_sha256) == (TILE, "v1", "ab")


def test_put_if_semantics(store_url: str) -> None:
    backend = open_backend(store_url)
    key = "_lease/driver.json"
    assert backend.conditional_writes is True
    assert backend.get_tagged(key) is None
    assert backend.put_if(key, b"one", tag=None)
    found = backend.get_tagged(key)
    assert found is not None and found[0] == b"one"
    tag1 = found[1]
    assert backend.put_if(key, b"one", tag=None), "a retried create whose first try landed is the writer's success"
    assert not backend.put_if(key, b"two", tag=None), "create over an existing object"
    assert backend.put_if(key, b"two", tag=tag1)
    found = backend.get_tagged(key)
    assert found is not None and found[0] == b"two" and found[1] != tag1
    assert not backend.put_if(key, b"three", tag=tag1), "a stale tag"
    assert backend.get(key) == b"two"
    assert not backend.put_if("_lease/absent.json", b"x", tag=found[1]), "a tag for an absent object"
    assert backend.get("_lease/absent.json") is None
    assert sorted(backend.list_keys("")) == [key], "lock files or probe objects are visible"


def test_local_put_if_is_a_compare_and_swap_under_contention(tmp_path: Path) -> None:
    key, threads, rounds = "counter", 4, 25

    def bump(me: int) -> None:
        backend = open_backend(str(tmp_path))
        for _ in range(rounds):
            while True:
                found = backend.get_tagged(key)
                value = int(found[0].split()[0]) if found else 0
                # Each writer's bytes are its own: equal bytes would read as "my earlier try landed".
                if backend.put_if(key, f"{value + 1} {me}".encode(), tag=found[1] if found else None):
                    break

    workers = [threading.Thread(target=bump, args=(me,)) for me in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    final = open_backend(str(tmp_path)).get(key)
    assert final is not None and int(final.split()[0]) == threads * rounds


def test_create_races_do_not_clobber_the_root(store_url: str) -> None:
    first = TileStore(store_url).create(MODEL)
    again = TileStore(store_url).create({**MODEL, "checkpoint_sha256": OTHER_CHECKPOINT})
    assert again == first  # the second creator found the root and kept it


def test_marker_put_applied_but_answer_lost_commits_once(
    s3_endpoint: str, new_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket("lost")
    with flaky_proxy(s3_endpoint, fail_rate=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        store = TileStore(f"s3://{bucket}/store")
        store.create(MODEL)
        proxy.add_rule(method="PUT", path_contains=f"/{layout.COMMITS_PREFIX}/", action="lost", times=1)
        record = write(store, 5)
        assert proxy.counts["lost"] == 1 and not proxy.rules
        marker = assert_consistent(store, {record.version: 5})
        assert marker["version"] == record.version
        assert version_dirs(store) == [record.version]


def test_store_ignoring_conditional_headers_falls_back_and_warns(
    s3_endpoint: str, new_bucket: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = new_bucket("noif")
    with flaky_proxy(s3_endpoint, fail_rate=0.0) as proxy:
        proxy.ignore_conditional = True
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        url = f"s3://{bucket}/store"
        backend = open_backend(url)
        with caplog.at_level(logging.WARNING, logger="tessera_pipeline.store.backends.s3"):
            assert backend.conditional_writes is False
            assert backend.put_if("k", b"one", tag=None)
            assert not backend.put_if("k", b"two", tag=None)
            found = backend.get_tagged("k")
            assert found is not None and backend.put_if("k", b"two", tag=found[1])
            assert not backend.put_if("k", b"three", tag=found[1])
        warnings = [r for r in caplog.records if "conditional" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert backend.list_keys("") == ["k"]
        store = TileStore(url)
        store.create(MODEL)
        record = write(store, 6)
        assert_consistent(store, {record.version: 6})


def test_proxy_rules_and_outage(s3_endpoint: str, new_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket("outage")
    with flaky_proxy(s3_endpoint, fail_rate=0.0) as proxy:

        def status(path: str) -> int | str:
            """One plain GET through the proxy, no retries: its HTTP status, or "dropped"."""
            conn = http.client.HTTPConnection("127.0.0.1", proxy.server_port, timeout=10)
            try:
                conn.request("GET", path)
                return conn.getresponse().status
            except (http.client.RemoteDisconnected, ConnectionError):
                return "dropped"
            finally:
                conn.close()

        proxy.add_rule(method="GET", path_contains="k.json", action="503", times=2)
        proxy.add_rule(method="GET", path_contains="k.json", action="drop", times=1)
        key = f"/{bucket}/k.json"
        assert [status(f"/{bucket}/other"), status(key), status(key), status(key), status(key)] == [
            404, 503, 503, "dropped", 404
        ]
        assert not proxy.rules and proxy.counts["503"] == 2 and proxy.counts["drop"] == 1
        proxy.outage = True
        assert [status(key), status(key)] == [503, "dropped"] and proxy.counts["outage"] == 2
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        backend = open_backend(f"s3://{bucket}/store")
        with pytest.raises(StoreUnreachableError) as caught:
            backend.get_tagged("k.json")  # botocore's retries all meet the outage
        assert "\n" not in str(caught.value) and proxy.counts["outage"] >= 2 + 3
        proxy.outage = False
        assert backend.put_if("k.json", b"x", tag=None) and backend.get("k.json") == b"x"
