"""The Zarr embedding store: round trip, commit protocol under crashes, concurrency, reprocess races.

Every test runs twice: on a local path and on `s3://` against the moto server on loopback.
"""

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

import numpy as np
import pytest

from tessera_pipeline.errors import StoreConflictError, StoreError, TileNotCompleteError
from tessera_pipeline.store import TileKey, TileStore, dequantise, layout, write_encoded_tile

MODEL = {"model_version": "1.1", "checkpoint_sha256": "ab" * 32, "dimensions": 128}
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5900000.0)
EPSG = 32630
H, W = 37, 23
TILE = "grid_-1.55_53.25"
REPO = Path(__file__).resolve().parents[1]


def make_tile(seed: int, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """Random int8 embeddings and float32 scales (one NaN: a no-data pixel)."""
    rng = np.random.default_rng(seed)
    emb = rng.integers(-127, 128, (h, w, 128), dtype=np.int8)
    scales = rng.uniform(0.005, 0.02, (h, w)).astype(np.float32)
    scales[0, 0] = np.nan
    return emb, scales


def write(url: str, year: int, tile: str, seed: int, **kwargs: object) -> object:
    """Write one random tile through the public entry point."""
    emb, scales = make_tile(seed)
    return write_encoded_tile(
        url,
        year,
        tile,
        emb,
        scales,
        epsg=EPSG,
        transform=TRANSFORM,
        provenance={"precision": "bf16", "device_kind": "cpu", "seed": seed},
        model_attrs=MODEL,
        **kwargs,
    )


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store location: a local directory or an s3:// prefix on the moto server."""
    if request.param == "local":
        yield str(tmp_path / "store")
    else:
        bucket = request.getfixturevalue("new_bucket")("store")
        yield f"s3://{bucket}/prefix/store"


def run_python(code: str) -> subprocess.Popen[bytes]:
    """Start a Python subprocess (the environment, S3 endpoint included, is inherited)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Wait for a subprocess and fail with its stderr if it failed."""
    _out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


def version_dirs(store: TileStore, year: int, tile: str) -> list[str]:
    """The version groups currently stored for a tile."""
    return [n for n in store.backend.list_children(layout.tile_key(year, tile)) if layout.is_version(n)]


def test_round_trip_is_bit_exact(store_url: str) -> None:
    emb, scales = make_tile(1)
    record = write(store_url, 2024, TILE, 1)
    store = TileStore(store_url)
    data = store.read_tile(2024, TILE, verify=True)
    assert data.embeddings.dtype == np.int8 and np.array_equal(data.embeddings, emb)
    assert data.scales.dtype == np.float32 and np.array_equal(data.scales, scales, equal_nan=True)
    assert data.epsg == EPSG and data.transform == TRANSFORM
    assert data.version == record.version  # type: ignore[attr-defined]
    assert data.provenance["precision"] == "bf16"
    assert data.provenance["checkpoint_sha256"] == MODEL["checkpoint_sha256"]
    assert data.provenance["pipeline_version"]
    deq = store.read_tile(2024, TILE, dequantise=True).embeddings
    assert deq.dtype == np.float32
    np.testing.assert_array_equal(deq, dequantise(emb, scales))
    assert np.isnan(deq[0, 0]).all()
    window = store.read_tile(2024, TILE, window=(slice(5, 17), slice(3, 20)))
    assert np.array_equal(window.embeddings, emb[5:17, 3:20])
    root = store.root_attrs()
    assert root is not None and root["tessera-pipeline:model"]["checkpoint_sha256"] == MODEL["checkpoint_sha256"]
    assert root["geoemb:dimensions"] == 128


def test_listing_and_completeness(store_url: str) -> None:
    store = TileStore(store_url)
    assert store.list_complete() == [] and not store.is_complete(2024, TILE)
    with pytest.raises(TileNotCompleteError):
        store.read_tile(2024, TILE)
    tiles = ["grid_0.15_52.05", "grid_-1.55_53.25", "grid_10.05_-3.95"]
    for i, tile in enumerate(tiles):
        write(store_url, 2024, tile, i)
    write(store_url, 2023, tiles[0], 9)
    assert store.list_complete(2024) == sorted(TileKey(2024, t) for t in tiles)
    assert store.list_complete() == sorted([TileKey(2023, tiles[0])] + [TileKey(2024, t) for t in tiles])
    assert store.is_complete(2023, tiles[0]) and not store.is_complete(2023, tiles[1])
    assert all(r.ok for r in store.verify())


@pytest.mark.parametrize("stage", ["encoded", "embeddings", "scales", "metadata", "commit"])
def test_write_interrupted_leaves_tile_incomplete(store_url: str, stage: str) -> None:
    def crash(name: str) -> None:
        if name == stage:
            raise RuntimeError(f"simulated crash at {name}")

    emb, scales = make_tile(2)
    store = TileStore(store_url, hook=crash)
    store.create(MODEL)
    with pytest.raises(RuntimeError):
        store.write_tile(2024, TILE, emb, scales, epsg=EPSG, transform=TRANSFORM)
    assert not store.is_complete(2024, TILE) and store.list_complete() == []
    assert len(version_dirs(store, 2024, TILE)) == (stage != "encoded")  # an orphan, invisible to readers
    write(store_url, 2024, TILE, 3)
    clean = TileStore(store_url)
    assert clean.is_complete(2024, TILE) and clean.verify_tile(2024, TILE).ok
    assert np.array_equal(clean.read_tile(2024, TILE).embeddings, make_tile(3)[0])
    orphans = int(stage != "encoded")  # kept while younger than the grace period: it may be a live write
    assert len(version_dirs(clean, 2024, TILE)) == 1 + orphans
    assert len(TileStore(store_url, cleanup_grace_s=0).cleanup(2024, TILE)) == orphans
    assert len(version_dirs(clean, 2024, TILE)) == 1 and clean.verify_tile(2024, TILE).ok


def test_sigkill_mid_write_leaves_tile_incomplete(store_url: str, tmp_path: Path) -> None:
    flag = tmp_path / "between-arrays"
    proc = run_python(f"""
        import pathlib, time
        import numpy as np
        from tessera_pipeline.store import TileStore
        def hook(stage):
            if stage == "embeddings":
                pathlib.Path({str(flag)!r}).write_text("now")
                time.sleep(600)
        store = TileStore({store_url!r}, hook=hook)
        store.create({MODEL!r})
        emb = np.ones(({H}, {W}, 128), np.int8); scales = np.ones(({H}, {W}), np.float32)
        store.write_tile(2024, {TILE!r}, emb, scales, epsg={EPSG}, transform={TRANSFORM!r})
    """)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "writer never reached the point between arrays"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = TileStore(store_url)
    assert not store.is_complete(2024, TILE) and store.list_complete() == []
    assert not store.verify_tile(2024, TILE).ok
    write(store_url, 2024, TILE, 4)
    assert store.is_complete(2024, TILE) and store.verify_tile(2024, TILE).ok
    assert len(version_dirs(store, 2024, TILE)) == 2  # the killed writer's version, young: kept
    assert len(TileStore(store_url, cleanup_grace_s=0).cleanup(2024, TILE)) == 1
    assert len(version_dirs(store, 2024, TILE)) == 1 and store.verify_tile(2024, TILE).ok


def test_reprocess_replaces_and_cleans_up(store_url: str) -> None:
    first = write(store_url, 2024, TILE, 5)
    second = write(store_url, 2024, TILE, 6)
    store = TileStore(store_url)
    data = store.read_tile(2024, TILE)
    assert data.version == second.version != first.version  # type: ignore[attr-defined]
    assert np.array_equal(data.embeddings, make_tile(6)[0])
    assert version_dirs(store, 2024, TILE) == [second.version]  # type: ignore[attr-defined]
    assert store.list_complete() == [TileKey(2024, TILE)]


def test_concurrent_writers_lose_nothing(store_url: str) -> None:
    TileStore(store_url).create(MODEL)
    writers, per_writer = 3, 2
    procs = [
        run_python(f"""
            import numpy as np
            from tessera_pipeline.store import write_encoded_tile
            for k in range({per_writer}):
                seed = {w} * 100 + k
                rng = np.random.default_rng(seed)
                emb = rng.integers(-127, 128, ({H}, {W}, 128), dtype=np.int8)
                scales = rng.uniform(0.005, 0.02, ({H}, {W})).astype(np.float32)
                tile = f"grid_{{seed / 10 + 0.05:.2f}}_{w}.05"
                write_encoded_tile({store_url!r}, 2024, tile, emb, scales, epsg={EPSG},
                                   transform={TRANSFORM!r}, provenance={{"seed": seed}}, model_attrs={MODEL!r})
        """)
        for w in range(writers)
    ]
    for proc in procs:
        finish(proc)
    store = TileStore(store_url)
    keys = store.list_complete(2024)
    assert len(keys) == writers * per_writer
    results = store.verify(2024)
    assert len(results) == writers * per_writer and all(r.ok for r in results), results
    for key in keys:
        seed = store.read_tile(key.year, key.tile).provenance["seed"]
        rng = np.random.default_rng(seed)
        assert np.array_equal(
            store.read_tile(key.year, key.tile).embeddings, rng.integers(-127, 128, (H, W, 128), dtype=np.int8)
        )


def test_reader_racing_reprocess_never_sees_a_mix(store_url: str, tmp_path: Path) -> None:
    def uniform(k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((H, W, 128), k, np.int8), np.full((H, W), k, np.float32)

    store = TileStore(store_url)
    store.create(MODEL)
    store.write_tile(2024, TILE, *uniform(1), epsg=EPSG, transform=TRANSFORM)
    rewrites = 6
    writer = run_python(f"""
        import numpy as np
        from tessera_pipeline.store import TileStore
        store = TileStore({store_url!r})
        for k in range(2, {rewrites + 2}):
            store.write_tile(2024, {TILE!r}, np.full(({H}, {W}, 128), k, np.int8),
                             np.full(({H}, {W}), k, np.float32), epsg={EPSG}, transform={TRANSFORM!r})
    """)
    seen: set[int] = set()
    while writer.poll() is None:
        data = store.read_tile(2024, TILE)
        k = int(data.scales[0, 0])
        assert (data.scales == k).all() and (data.embeddings == k).all(), "a read mixed two versions"
        seen.add(k)
    finish(writer)
    final = store.read_tile(2024, TILE, verify=True)
    assert (final.embeddings == rewrites + 1).all()
    assert len(version_dirs(store, 2024, TILE)) == 1
    assert seen, "the reader never completed a read"


def test_verify_detects_corruption(store_url: str) -> None:
    import zarr

    write(store_url, 2024, TILE, 7)
    write(store_url, 2024, "grid_0.15_52.05", 8)
    store = TileStore(store_url)
    marker = store.marker(2024, TILE)
    assert marker is not None
    arr = zarr.open_array(store.backend.zarr_store(f"{marker['path']}/embeddings"), mode="r+")
    arr[3, 4, 5] = np.int8(arr[3, 4, 5] ^ 1)
    results = {r.tile: r for r in store.verify()}
    assert results["grid_0.15_52.05"].ok
    bad = results[TILE]
    assert not bad.ok and any("sha256" in p for p in bad.problems)
    with pytest.raises(StoreError):
        store.read_tile(2024, TILE, verify=True)


def test_rejects_bad_input_and_other_models(store_url: str) -> None:
    emb, scales = make_tile(9)
    store = TileStore(store_url)
    with pytest.raises(StoreError):
        store.write_tile(2024, TILE, emb, scales, epsg=EPSG, transform=TRANSFORM)  # no root yet
    store.create(MODEL)
    with pytest.raises(StoreError):
        store.write_tile(2024, TILE, emb.astype(np.int16), scales, epsg=EPSG, transform=TRANSFORM)
    with pytest.raises(StoreError):
        store.write_tile(2024, TILE, emb, scales[:-1], epsg=EPSG, transform=TRANSFORM)
    with pytest.raises(StoreError):
        store.write_tile(2024, "not-a-tile", emb, scales, epsg=EPSG, transform=TRANSFORM)
    with pytest.raises(StoreConflictError):
        store.create({**MODEL, "model_version": "1.0"})
    assert store.list_complete() == []


def test_tile_opens_with_xarray_and_rioxarray(store_url: str) -> None:
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    emb, scales = make_tile(10)
    write(store_url, 2024, TILE, 10)
    store = TileStore(store_url)
    ds = store.open_dataset(2024, TILE)
    assert ds.embeddings.dims == ("y", "x", "band") and ds.scales.dims == ("y", "x")
    assert ds.rio.crs.to_epsg() == EPSG and ds.embeddings.rio.crs.to_epsg() == EPSG
    assert tuple(ds.rio.transform())[:6] == TRANSFORM
    np.testing.assert_array_equal(ds.embeddings.values, emb)
    assert float(ds.x[0]) == TRANSFORM[2] + 5.0 and float(ds.y[0]) == TRANSFORM[5] - 5.0
    marker = store.marker(2024, TILE)
    assert marker is not None
    if not store_url.startswith("s3://"):
        plain = xr.open_zarr(f"{store_url}/{marker['path']}")
        assert plain.rio.crs.to_epsg() == EPSG
    raw = json.loads(store.backend.get(f"{layout.tile_key(2024, TILE)}/zarr.json") or b"{}")
    assert raw["attributes"]["tessera-pipeline:current_version"] == marker["version"]


def test_version_ids_sort_after_the_version_they_replace() -> None:
    future = "v29991231T235959999999Z-00000000"
    after = layout.new_version(after=future)
    assert layout.is_version(after) and after > future
    assert layout.new_version() < future


def test_provenance_with_numpy_values_is_recorded(tmp_path: Path) -> None:
    emb, scales = make_tile(11)
    url = str(tmp_path / "store")
    write_encoded_tile(
        url,
        2024,
        TILE,
        emb,
        scales,
        epsg=EPSG,
        transform=TRANSFORM,
        model_attrs=MODEL,
        provenance={"timings": {"encode_s": np.float32(1.5)}, "pixels": np.int64(851)},
    )
    prov = TileStore(url).read_tile(2024, TILE).provenance
    assert prov["timings"] == {"encode_s": 1.5} and prov["pixels"] == 851
    with pytest.raises(StoreError):
        write_encoded_tile(
            url,
            2024,
            TILE,
            emb,
            scales,
            epsg=EPSG,
            transform=TRANSFORM,
            model_attrs=MODEL,
            provenance={"bad": object()},
        )


def test_rewrite_repairs_a_corrupt_marker(store_url: str) -> None:
    write(store_url, 2024, TILE, 12)
    store = TileStore(store_url)
    store.backend.put_atomic(layout.marker_key(2024, TILE), b"{not json")
    assert not store.verify_tile(2024, TILE).ok
    write(store_url, 2024, TILE, 13)
    assert store.verify_tile(2024, TILE).ok
    assert np.array_equal(store.read_tile(2024, TILE).embeddings, make_tile(13)[0])
