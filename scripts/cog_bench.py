"""Time `export --cog` of all 128 bands of one box: `python scripts/cog_bench.py [--runs N] [--store DIR] [--geotiff F]`.

The store (two realistic full-size tiles near 15 E 10 N, made once under --store) and the box (239 x 805 pixels)
are fixed. `--geotiff` takes `write_region_cog` from another version of read/geotiff.py (e.g. `git show
COMMIT:tessera_pipeline/read/geotiff.py > old.py`), so two versions are timed side by side on the same box."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

BOX = (15.02, 10.03005, 15.0934, 10.0516)
TILES = ("grid_15.05_10.05", "grid_15.15_10.05")
YEAR = 2024


def make_store(url: str) -> None:
    """Two neighbouring full-size tiles with realistic embedding statistics (made once)."""
    from tessera_pipeline.bench.store_bench import MODEL_ATTRS, realistic_tile
    from tessera_pipeline.grid import tile_geometry
    from tessera_pipeline.store import TileStore

    store = TileStore(url)
    if store.root_attrs() is not None:
        return
    store.create(MODEL_ATTRS)
    for seed, tile in enumerate(TILES):
        g = tile_geometry(tile)
        emb, scales = realistic_tile(g.height, g.width, seed=seed)
        store.write_tile(YEAR, tile, emb, scales, epsg=g.epsg, transform=g.transform, provenance={})


def main() -> None:
    """Export the box as a COG `--runs` times; print each run's seconds and the box's size as JSON."""
    import importlib.util

    import tessera_pipeline.read.geotiff as code
    from tessera_pipeline.read import open_reader

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="/tmp/cog-bench/store.zarr")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--geotiff", default=None, help="Another read/geotiff.py to take write_region_cog from.")
    args = parser.parse_args()
    if args.geotiff:
        spec = importlib.util.spec_from_file_location("other_geotiff", args.geotiff)
        assert spec is not None and spec.loader is not None
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
    make_store(args.store)
    out = Path(args.store).parent / "box.tif"
    seconds = []
    for _ in range(args.runs):
        da = open_reader(args.store, landmask="none").read_region(BOX, YEAR)
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        code.write_region_cog(da, out)
        seconds.append(round(time.perf_counter() - t0, 2))
    print(json.dumps({"code": code.__file__, "shape": [da.sizes["band"], da.sizes["y"], da.sizes["x"]],
                      "seconds": seconds}))


if __name__ == "__main__":
    main()
