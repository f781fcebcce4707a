"""Store benchmark: time to write and read back one tile, and the chunking/compression comparison.

`bench_store` is what `tessera-pipeline bench` reports. `compare_layouts` produced the table in
docs/formats.md: `python -m tessera_pipeline.bench.store_bench --layouts`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TILE = "grid_-1.55_53.25"
YEAR = 2024
MODEL_ATTRS = {"model_version": "bench", "checkpoint_sha256": "0" * 64, "dimensions": 128}
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5900000.0)
EPSG = 32630
WINDOW = 256


def realistic_tile(height: int, width: int, dims: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic int8 embeddings and scales with the statistics of real Tessera v1.1 output.

    A spatially smooth Laplace field (8-pixel blocks) plus per-pixel Laplace noise, quantised per
    pixel to max |x| = 127: std ~37 and ~7.2 bits/value entropy, as measured on the golden v1.1
    tile, so compressors see realistic entropy. Scales are ~0.01 with some spatial structure.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.laplace(0.0, 1.0, (height // 8 + 1, width // 8 + 1, dims)).astype(np.float32)
    x = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    x += rng.laplace(0.0, 0.6, (height, width, dims)).astype(np.float32)
    peak = np.abs(x).max(axis=-1)
    q = np.rint(x * (127.0 / peak)[..., None]).astype(np.int8)
    scales = (peak * (0.01 / peak.mean())).astype(np.float32)
    return q, scales


def _tree_bytes(path: Path) -> int:
    """Bytes of every file under a directory."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_store(height: int = 1126, width: int = 690, workdir: Path | None = None) -> dict[str, Any]:
    """Write one realistic tile into a fresh local store and read it back; seconds and bytes."""
    from tessera_pipeline.store import TileStore

    emb, scales = realistic_tile(height, width)
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-", dir=workdir))
    try:
        store = TileStore(str(tmp / "store"))
        store.create(MODEL_ATTRS)
        t0 = time.perf_counter()
        record = store.write_tile(YEAR, TILE, emb, scales, epsg=EPSG, transform=TRANSFORM, provenance={})
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = store.read_tile(YEAR, TILE, verify=False)  # raw read; the verified read is timed as verify
        read_s = time.perf_counter() - t0
        r0, c0 = max(0, height // 2 - WINDOW // 2), max(0, width // 2 - WINDOW // 2)
        t0 = time.perf_counter()
        store.read_tile(YEAR, TILE, window=(slice(r0, r0 + WINDOW), slice(c0, c0 + WINDOW)))
        window_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = store.verify_tile(YEAR, TILE).ok
        verify_s = time.perf_counter() - t0
        if not (ok and np.array_equal(back.embeddings, emb)):
            raise RuntimeError("store benchmark read back different data")
        return {
            "store_tile": f"{height}x{width}x{emb.shape[2]}",
            "store_write_s": round(write_s, 4),
            "store_read_s": round(read_s, 4),
            "store_window_read_s": round(window_s, 4),
            "store_verify_s": round(verify_s, 4),
            "store_bytes": _tree_bytes(tmp / "store"),
            "store_raw_bytes": record.raw_bytes,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare_layouts(height: int = 1126, width: int = 690, workdir: Path | None = None) -> list[dict[str, Any]]:
    """Write/read time, 256x256-window read time, bytes and object count for candidate layouts."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    def up(n: int, k: int) -> int:
        return -(-n // k) * k

    emb, _scales = realistic_tile(height, width)
    candidates: dict[str, dict[str, Any]] = {
        "chunks 256x256x128, raw": {"chunks": (256, 256, 128), "compressors": None},
        "chunks 256x256x128, zstd 1": {"chunks": (256, 256, 128), "compressors": ZstdCodec(level=1)},
        "chunks 256x256x128, blosc zstd 3 bitshuffle": {
            "chunks": (256, 256, 128),
            "compressors": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
        },
        "chunks 128x128x128, zstd 1": {"chunks": (128, 128, 128), "compressors": ZstdCodec(level=1)},
        "1 shard/tile, inner 64x64x128, zstd 1": {
            "chunks": (64, 64, 128),
            "shards": (up(height, 64), up(width, 64), 128),
            "compressors": ZstdCodec(level=1),
        },
        "1 shard/tile, inner 128x128x128, raw": {
            "chunks": (128, 128, 128),
            "shards": (up(height, 128), up(width, 128), 128),
            "compressors": None,
        },
        "1 shard/tile, inner 128x128x128, zstd 1 (chosen)": {
            "chunks": (128, 128, 128),
            "shards": (up(height, 128), up(width, 128), 128),
            "compressors": ZstdCodec(level=1),
        },
        "1 shard/tile, inner 128x128x128, zstd 3": {
            "chunks": (128, 128, 128),
            "shards": (up(height, 128), up(width, 128), 128),
            "compressors": ZstdCodec(level=3),
        },
    }
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="store-layouts-", dir=workdir))
    rng = np.random.default_rng(1)
    windows = [
        (int(r), int(c))
        for r, c in zip(rng.integers(0, height - WINDOW, 5), rng.integers(0, width - WINDOW, 5), strict=True)
    ]
    try:
        for name, kwargs in candidates.items():
            path = tmp / "a"
            shutil.rmtree(path, ignore_errors=True)
            t0 = time.perf_counter()
            arr = zarr.create_array(
                str(path), shape=emb.shape, dtype="int8", fill_value=0, config={"write_empty_chunks": True}, **kwargs
            )
            arr[...] = emb
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = zarr.open_array(str(path), mode="r")[...]
            read_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for r, c in windows:
                zarr.open_array(str(path), mode="r")[r : r + WINDOW, c : c + WINDOW]
            window_s = (time.perf_counter() - t0) / len(windows)
            if not np.array_equal(back, emb):
                raise RuntimeError(f"layout {name} did not round-trip")
            rows.append(
                {
                    "layout": name,
                    "write_s": round(write_s, 3),
                    "read_s": round(read_s, 3),
                    "window_read_ms": round(window_s * 1000, 1),
                    "mb": round(_tree_bytes(path) / 1e6, 1),
                    "ratio": round(_tree_bytes(path) / emb.nbytes, 3),
                    "objects": sum(1 for f in path.rglob("*") if f.is_file()) - 1,
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    """Print `bench_store` (default) or the layout comparison (`--layouts`) as JSON / a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layouts", action="store_true", help="compare chunking/compression candidates")
    parser.add_argument("--size", default="1126x690", help="tile HxW")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    if args.layouts:
        rows = compare_layouts(height, width)
        print("| layout | write s | read s | 256x256 read ms | MB | ratio | objects |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['layout']} | {row['write_s']} | {row['read_s']} | {row['window_read_ms']} | "
                f"{row['mb']} | {row['ratio']} | {row['objects']} |"
            )
    else:
        print(json.dumps(bench_store(height, width), indent=2))


if __name__ == "__main__":
    main()
