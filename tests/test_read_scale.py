"""`sample` at scale: 10^5 scattered points over a store of 10^5 committed tiles stay in bounded memory (peak RSS of
a child process, not time). The store is cheap to make: 100 real tiles of 8 x 8 pixels at their cells' centres, and
10^5 - 100 markers copied from them (8 x 8 rasters at their cells' corners, no objects: no point falls on one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tessera_pipeline.bench.store_bench import MODEL_ATTRS
from tessera_pipeline.grid import N_LAT, geometry_arrays, names_from_index
from tessera_pipeline.read import lattice
from tessera_pipeline.store import TileStore, layout

YEAR = 2024
#: 10^5 cells: 1,000 columns (lon -180 to -80) by 100 rows (lat 10 to 20 N), every 1,000th a real tile.
COLUMNS, ROWS, REAL_EVERY = 1000, 100, 1000
POINTS = 100_000
#: Peak RSS the whole child may reach (the issue's bound for `sample` of 10^5 points over 10^5 tiles).
MAX_RSS_MB = 1536


def _cells() -> tuple[np.ndarray, np.ndarray]:
    """Cell indices (ix, iy) of the store's tiles."""
    ix, iy = np.meshgrid(np.arange(COLUMNS), 1000 + np.arange(ROWS), indexing="ij")
    return ix.ravel(), iy.ravel()


def _origins(ix: np.ndarray, iy: np.ndarray, centred: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPSG and the (x, y) corner of an 8 x 8 raster at each cell's centre pixel, or at its grid raster's corner."""
    g = geometry_arrays(ix, iy)
    if not centred:
        return g["epsg"], np.floor(g["origin_e"] / 10) * 10, np.ceil(g["origin_n"] / 10) * 10
    x, y = np.zeros(len(ix)), np.zeros(len(ix))
    for code in np.unique(g["epsg"]):
        sel = g["epsg"] == code
        x[sel], y[sel] = lattice.project(g["lon"][sel], g["lat"][sel], int(code) % 100)
    return g["epsg"], np.floor(x / 10) * 10 - 40, np.floor(y / 10) * 10 + 40


def write_real(store: TileStore, ix: np.ndarray, iy: np.ndarray) -> None:
    """Commit 8 x 8 tiles at these cells' centre pixels: every pixel has data, scale 0.001 x (k + 1) for the k-th."""
    names = names_from_index(ix, iy)
    epsg, x0, y0 = _origins(ix, iy, centred=True)
    emb = np.full((8, 8, 128), 127, np.int8)
    for k, name in enumerate(names):
        store.write_tile(YEAR, name, emb, np.full((8, 8), 0.001 * (k + 1), np.float32), epsg=int(epsg[k]),
                         transform=(10.0, 0.0, float(x0[k]), 0.0, -10.0, float(y0[k])), provenance={})


def points_on(ix: np.ndarray, iy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A point (lon, lat) at a random pixel of the 8 x 8 raster `write_real` puts at each of these cells."""
    epsg, x, y = _origins(ix, iy, centred=True)
    x, y = x + 10 * rng.integers(0, 8, len(x)) + 5, y - 10 * rng.integers(0, 8, len(y)) - 5
    lon, lat = np.zeros(len(x)), np.zeros(len(x))
    for code in np.unique(epsg):
        sel = epsg == code
        lon[sel], lat[sel] = lattice.unproject(x[sel], y[sel], int(code) % 100)
    return np.stack([lon, lat], 1)


def build(root: Path) -> np.ndarray:
    """Write the store; return the 10^5 points (half on real tiles' pixels, half at other cells' centres)."""
    store = TileStore(str(root))
    store.create(MODEL_ATTRS)
    ix, iy = _cells()
    names = names_from_index(ix, iy)
    real = np.arange(0, len(ix), REAL_EVERY)
    write_real(store, ix[real], iy[real])
    template = json.loads(store.backend.get(layout.marker_key(YEAR, names[0])) or b"{}")
    fake = np.setdiff1d(np.arange(len(ix)), real)
    epsg_f, x_f, y_f = _origins(ix[fake], iy[fake], centred=False)
    folder = root / layout.COMMITS_PREFIX / str(YEAR)
    for k, i in enumerate(fake.tolist()):
        marker = {**template, "tile": names[i], "path": f"{YEAR}/{names[i]}/{template['version']}",
                  "epsg": int(epsg_f[k]), "transform": [10.0, 0.0, float(x_f[k]), 0.0, -10.0, float(y_f[k])]}
        (folder / f"{names[i]}{layout.MARKER_SUFFIX}").write_text(json.dumps(marker))
    rng = np.random.default_rng(3)
    on_real = rng.choice(real, POINTS // 2)
    elsewhere = rng.choice(fake, POINTS - POINTS // 2, replace=False)
    g = geometry_arrays(ix[elsewhere], iy[elsewhere])
    return np.concatenate([points_on(ix[on_real], iy[on_real], rng), np.stack([g["lon"], g["lat"]], 1)])


def child(root: str, points: str) -> None:
    """Sample the points and print the peak RSS (MB), the seconds `sample_points` took and the statuses' counts, as
    JSON (`python tests/test_read_scale.py STORE POINTS.npy`: the benchmark in docs/benchmarks.md)."""
    import time

    from tessera_pipeline.grid import N_LON
    from tessera_pipeline.landmask import LandMask
    from tessera_pipeline.read import open_reader

    reader = open_reader(root, landmask=LandMask(grid=np.zeros((N_LAT, N_LON), bool), source="test"))
    start = time.perf_counter()
    got = reader.sample_points(np.load(points), YEAR)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss across fork and exec
    status = Path("/proc/self/status").read_text().split("\n")
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    scales = sorted(set(got.scales[got.status == "valid"].astype(np.float64).round(3).tolist()))[:3]
    print(json.dumps({"peak_mb": peak, "seconds": seconds, "counts": got.counts(), "scales": scales}))


def test_points_over_a_hundred_thousand_tiles_stay_in_bounded_memory(tmp_path: Path) -> None:
    pts = build(tmp_path / "store.zarr")
    np.save(tmp_path / "points.npy", pts)
    out = subprocess.run([sys.executable, __file__, str(tmp_path / "store.zarr"), str(tmp_path / "points.npy")],
                         capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result)
    assert result["counts"]["valid"] == POINTS // 2 and result["counts"]["no-observations"] == POINTS - POINTS // 2
    assert result["scales"] == [0.001, 0.002, 0.003]
    assert result["peak_mb"] < MAX_RSS_MB, result


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])
