"""Synthetic d-pixel tiles in upstream's exact format, for demos, tests and benchmarks.

A tile is a smooth landscape (water, soil and vegetation fractions from upsampled noise) seen through
a year of Sentinel-2 dates with spatially coherent clouds and swath gaps, and Sentinel-1 ascending and
descending dates with speckle and nodata borders; now and then an orbit is missing altogether.
Counts follow the seed benchmarks: ~91 S2 dates with ~55 clear per pixel on average, ~61 S1 dates.
Everything is vectorised numpy, seeded from the tile name and year, and generated in fixed 16-row
blocks (each with its own generator) so a full-size tile streams to disk in bounded memory and the
bytes do not depend on whether the tile is built in memory or on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from tessera_pipeline.errors import ArgumentError
from tessera_pipeline.grid import TileGeometry, tile_geometry
from tessera_pipeline.inputs.dpixel import ROI_FILE, tile_location

log = logging.getLogger(__name__)

#: The largest height and width of any grid tile raster (over all 6.48 M cells of the 0.1 degree grid).
MAX_TILE_SIZE = (1140, 1116)
#: Rows generated per block (fixed, so output bytes never depend on memory mode).
BLOCK_ROWS = 16
#: Pixels per coarse noise cell of the landscape and cloud fields.
LANDSCAPE_SCALE = 48
CLOUD_SCALE = 24

#: S2 DN per band (B04,B02,B03,B08,B8A,B05,B06,B07,B11,B12) for pure soil, vegetation, water, cloud.
SOIL = np.array([2500, 1800, 2100, 3000, 3100, 2800, 2900, 3000, 3500, 2800], np.float32)
VEG = np.array([400, 300, 600, 4500, 4600, 1000, 3000, 4000, 2000, 1000], np.float32)
WATER = np.array([300, 500, 600, 200, 150, 300, 200, 200, 100, 80], np.float32)
CLOUD = np.array([7000, 7300, 7100, 7200, 7100, 7000, 7100, 7200, 5500, 4500], np.float32)
#: S1 DN ((20 log10(amp) + 50) * 200) [VV, VH] for land and for water.
S1_LAND = np.array([5500, 3000], np.float32)
S1_WATER = np.array([2200, 900], np.float32)
#: Cloud cover per date: Beta(0.74, 1.26), mean 0.37; with swath gaps ~55 of 91 dates are clear.
CLOUD_BETA = (0.74, 1.26)
#: Chance that a date has a swath gap (no data on one side of a line).
GAP_PROB = 0.1
#: Chance, per orbit, that make_synthetic_tile leaves it empty.
MISSING_ORBIT_PROB = 0.08


def seed_for(tile: str, year: int | str) -> int:
    """A reproducible 63-bit seed from a tile name and year."""
    digest = hashlib.sha256(f"{tile}:{year}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _dates(rng: np.random.Generator, n: int) -> np.ndarray:
    """n sorted distinct days of year in 1..365."""
    return np.sort(rng.choice(np.arange(1, 366), size=n, replace=False))


@dataclass(frozen=True)
class _Plan:
    """Everything drawn once per tile: dates, per-date cloud/gap parameters and coarse noise grids."""

    height: int
    width: int
    seed: int
    doys: np.ndarray
    asc_doys: np.ndarray
    desc_doys: np.ndarray
    cloud_threshold: np.ndarray
    gaps: np.ndarray  # (T, 4): has_gap, cos, sin, offset (pixels)
    s1_gaps: np.ndarray  # (Ta+Td, 4)
    landscape: np.ndarray  # (4, h_lr, w_lr): water, vegetation, phase, brightness
    clouds: np.ndarray  # (T, h_lr, w_lr)


def _coarse(rng: np.random.Generator, lead: int, height: int, width: int, scale: int) -> np.ndarray:
    """Standard-normal noise on a coarse grid covering a height x width raster at `scale` px per cell."""
    return rng.standard_normal((lead, height // scale + 2, width // scale + 2), dtype=np.float32)


def _plan(height: int, width: int, seed: int, n_s2: int, n_asc: int, n_desc: int) -> _Plan:
    """Draw the tile-wide random choices (small arrays only)."""
    rng = np.random.default_rng([seed, 0])
    cover = rng.beta(*CLOUD_BETA, size=n_s2)
    # Bilinear upsampling of unit-variance noise has variance ~0.44 (mean of the weights' squares).
    std = float(np.sqrt(4 / 9))
    threshold = np.array([NormalDist().inv_cdf(min(max(c, 1e-6), 1 - 1e-6)) for c in cover], np.float32) * std
    diag = float(np.hypot(height, width))

    def gap_table(n: int) -> np.ndarray:
        angle = rng.uniform(0, 2 * np.pi, n)
        return np.column_stack(
            [rng.random(n) < GAP_PROB, np.cos(angle), np.sin(angle), rng.uniform(-0.3, 0.3, n) * diag]
        ).astype(np.float32)

    return _Plan(
        height=height,
        width=width,
        seed=seed,
        doys=_dates(rng, n_s2).astype(np.uint16),
        asc_doys=_dates(rng, n_asc).astype(np.int16),
        desc_doys=_dates(rng, n_desc).astype(np.int16),
        cloud_threshold=threshold,
        gaps=gap_table(n_s2),
        s1_gaps=gap_table(n_asc + n_desc),
        landscape=_coarse(rng, 4, height, width, LANDSCAPE_SCALE),
        clouds=_coarse(rng, n_s2, height, width, CLOUD_SCALE),
    )


def _upsample(coarse: np.ndarray, rows: np.ndarray, width: int, scale: int) -> np.ndarray:
    """Bilinear values of coarse grids (lead, h, w) at raster rows `rows` and all columns."""
    fy = rows.astype(np.float32) / scale
    fx = np.arange(width, dtype=np.float32) / scale
    y0, x0 = fy.astype(np.int64), fx.astype(np.int64)
    wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
    top = coarse[:, y0][:, :, x0] * (1 - wx) + coarse[:, y0][:, :, x0 + 1] * wx
    bottom = coarse[:, y0 + 1][:, :, x0] * (1 - wx) + coarse[:, y0 + 1][:, :, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _gap_mask(table: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """(n, rows, W) True where a date's swath gap removes data."""
    yy = rows.astype(np.float32)[None, :, None]
    xx = np.arange(width, dtype=np.float32)[None, None, :]
    has, cos, sin, off = (table[:, i][:, None, None] for i in range(4))
    return (has > 0) & (xx * cos + yy * sin > off)


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise with standard deviation `std` (4x cheaper than Gaussian, as realistic here)."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= std * float(np.sqrt(12.0))
    return noise


def _block(plan: _Plan, r0: int, r1: int, index: int) -> dict[str, np.ndarray]:
    """Generate rows r0..r1 of every array; block `index` seeds its own generator."""
    rng = np.random.default_rng([plan.seed, 1, index])
    rows = np.arange(r0, r1)
    w = plan.width
    water_f, veg_f, phase_f, bright_f = _upsample(plan.landscape, rows, w, LANDSCAPE_SCALE)
    water = water_f > 0.55  # ~15 % open water in lakes and rivers
    veg = np.where(water, 0.0, np.clip(0.5 + 0.8 * veg_f, 0.0, 1.0)).astype(np.float32)
    phase = 170.0 + 40.0 * phase_f  # peak greenness day varies across the tile
    bright = (1.0 + 0.15 * bright_f)[..., None]

    # Sentinel-2: surface = base + greenness * (vegetation - soil), per pixel and date; then noise,
    # clouds (bright, masked) and swath gaps (0, masked). Arrays are updated in place to save passes.
    base = np.where(water[..., None], WATER, SOIL) * bright
    delta = np.where(water[..., None], 0.0, VEG - SOIL) * bright
    t = plan.doys.astype(np.float32)[:, None, None]
    green = veg[None] * (0.3 + 0.7 * np.clip(np.cos((2 * np.pi / 365.0) * (t - phase[None])), 0.0, 1.0))
    surface = _uniform_noise(rng, (t.shape[0], rows.size, w, 10), 80.0)
    surface += base[None]
    surface += green[..., None] * delta[None]
    cloudy = _upsample(plan.clouds, rows, w, CLOUD_SCALE) < plan.cloud_threshold[:, None, None]
    n_cloudy = int(np.count_nonzero(cloudy))
    surface[cloudy] = CLOUD * (1.0 + 0.05 * rng.standard_normal((n_cloudy, 1), dtype=np.float32))
    np.clip(surface, 1.0, 65535.0, out=surface)
    bands = surface.astype(np.uint16)
    gap = _gap_mask(plan.gaps, rows, w)
    bands[gap] = 0
    masks = (~cloudy & ~gap).astype(np.uint8)

    # Sentinel-1: backscatter from water/vegetation with speckle; swath borders are nodata (0).
    n_asc = plan.asc_doys.size
    s1_doys = np.concatenate([plan.asc_doys, plan.desc_doys]).astype(np.float32)[:, None, None]
    season = np.cos((2 * np.pi / 365.0) * (s1_doys - phase[None]))
    sar = _uniform_noise(rng, (s1_doys.shape[0], rows.size, w, 2), 450.0)
    sar += np.where(water[..., None], S1_WATER, S1_LAND)[None]
    sar += (400.0 * veg[None] * season)[..., None] * np.array([0.3, 1.0], np.float32)
    np.clip(sar, 1.0, 32767.0, out=sar)
    sar_i = sar.astype(np.int16)
    sar_i[_gap_mask(plan.s1_gaps, rows, w)] = 0
    return {
        "bands": bands,
        "masks": masks,
        "sar_ascending": sar_i[:n_asc],
        "sar_descending": sar_i[n_asc:],
    }


def _empty(plan: _Plan) -> dict[str, np.ndarray]:
    """Allocate the large output arrays in memory."""
    return {key: np.zeros(shape, dtype) for key, (dtype, shape) in _empty_shapes(plan).items()}


def _fill(plan: _Plan, out: dict[str, np.ndarray]) -> None:
    """Write every block of the tile into `out` (in-memory arrays or memmaps)."""
    for index, r0 in enumerate(range(0, plan.height, BLOCK_ROWS)):
        r1 = min(r0 + BLOCK_ROWS, plan.height)
        for key, block in _block(plan, r0, r1, index).items():
            out[key][:, r0:r1] = block


def _fill_files(plan: _Plan, directory: Path) -> None:
    """Write the large arrays as .npy files block by block, mapping only one block's rows at a time."""
    paths = {}
    for key, (dtype, shape) in _empty_shapes(plan).items():
        paths[key] = directory / f"{key}.npy"
        np.lib.format.open_memmap(paths[key], mode="w+", dtype=dtype, shape=shape).flush()
    for index, r0 in enumerate(range(0, plan.height, BLOCK_ROWS)):
        r1 = min(r0 + BLOCK_ROWS, plan.height)
        for key, block in _block(plan, r0, r1, index).items():
            if block.size == 0:
                continue
            target = np.load(paths[key], mmap_mode="r+")
            target[:, r0:r1] = block
            target.flush()
            del target  # unmap, so written pages leave this process's resident set


def _fill_blocks(plan: _Plan, directory: Path, indices: list[int]) -> None:
    """Write blocks `indices` of a plan into the .npy files already created in `directory`."""
    targets = {
        key: np.load(directory / f"{key}.npy", mmap_mode="r+")
        for key, (_, shape) in _empty_shapes(plan).items()
        if int(np.prod(shape))
    }
    for index in indices:
        r0 = index * BLOCK_ROWS
        for key, block in _block(plan, r0, min(r0 + BLOCK_ROWS, plan.height), index).items():
            if key in targets:
                targets[key][:, r0 : r0 + block.shape[1]] = block
    for target in targets.values():
        target.flush()


def write_synthetic_arrays(
    directory: Path, height: int, width: int, *, seed: int, workers: int = 1, n_s2: int = 91, n_s1_asc: int = 31, n_s1_desc: int = 30
) -> Path:
    """Write `synthetic_arrays(height, width, seed=...)` as a d-pixel directory (the seven .npy files, no roi.tiff).

    The same bytes as in memory; blocks are generated by `workers` processes in parallel, so a
    full-size tile takes seconds on a many-core machine (benchmarks make theirs this way).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    plan = _plan(height, width, seed, n_s2, n_s1_asc, n_s1_desc)
    directory.mkdir(parents=True, exist_ok=True)
    for key, (dtype, shape) in _empty_shapes(plan).items():
        np.lib.format.open_memmap(directory / f"{key}.npy", mode="w+", dtype=dtype, shape=shape).flush()
    blocks = list(range(-(-height // BLOCK_ROWS)))
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            list(pool.map(_fill_blocks, [plan] * workers, [directory] * workers, [blocks[i::workers] for i in range(workers)]))
    else:
        _fill_blocks(plan, directory, blocks)
    np.save(directory / "doys.npy", plan.doys)
    np.save(directory / "sar_ascending_doy.npy", plan.asc_doys)
    np.save(directory / "sar_descending_doy.npy", plan.desc_doys)
    return directory


def synthetic_arrays(
    height: int,
    width: int,
    *,
    seed: int,
    n_s2: int = 91,
    n_s1_asc: int = 31,
    n_s1_desc: int = 30,
) -> dict[str, np.ndarray]:
    """A synthetic tile's seven arrays in memory, keyed like DPixelTile fields (bands, masks, doys, ...)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"tile size must be positive, got {height} x {width}")
    plan = _plan(height, width, seed, n_s2, n_s1_asc, n_s1_desc)
    out = _empty(plan)
    _fill(plan, out)
    out["doys"] = plan.doys
    out["sar_ascending_doy"] = plan.asc_doys
    out["sar_descending_doy"] = plan.desc_doys
    return out


def parse_size(text: str) -> tuple[int, int]:
    """Parse "HxW" (e.g. "64x64") into (height, width); an ArgumentError (a ValueError) otherwise."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError as exc:
        raise ArgumentError(f"size must be HxW, e.g. 64x64, got {text!r}") from exc
    if height <= 0 or width <= 0:
        raise ArgumentError(f"size must be positive, got {text!r}")
    return height, width


def check_size_fits(tile: str, size: tuple[int, int]) -> TileGeometry:
    """The tile's grid geometry, after checking that a reduced size H x W fits inside it."""
    grid = tile_geometry(tile)
    height, width = size
    if height > grid.height or width > grid.width:
        raise ArgumentError(
            f"size {height}x{width} does not fit the tile, which is {grid.height}x{grid.width} "
            "(a reduced size is the top-left part of the tile)",
            tile=tile,
        )
    return grid


def write_roi(path: Path, geometry: TileGeometry) -> None:
    """Write a roi.tiff (uint8 ones, LZW) declaring the tile's reduced raster, as upstream's retiler does."""
    import rasterio
    from rasterio.transform import Affine

    profile = {
        "driver": "GTiff",
        "dtype": "uint8",
        "count": 1,
        "height": geometry.height,
        "width": geometry.width,
        "crs": f"EPSG:{geometry.epsg}",
        "transform": Affine(*geometry.transform),
        "compress": "lzw",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((1, geometry.height, geometry.width), np.uint8))


def make_synthetic_tile(
    root: str | os.PathLike[str],
    year: int | str,
    tile: str,
    size: tuple[int, int] | None = None,
    seed: int | None = None,
) -> Path:
    """Write a synthetic tile to `{root}/{year}/{tile}/` and return that directory.

    At the tile's true grid size by default; with `size=(H, W)` the raster is the top-left H x W of the
    tile (same CRS and origin) and a roi.tiff says so. Replaces any previous copy atomically.
    """
    grid = tile_geometry(tile) if size is None else check_size_fits(tile, size)
    height, width = size if size is not None else (grid.height, grid.width)
    geometry = TileGeometry(grid.name, grid.lon, grid.lat, grid.epsg, int(height), int(width), grid.transform)
    seed = seed_for(tile, year) if seed is None else seed
    rng = np.random.default_rng([seed, 2])
    counts = [max(1, int(round(rng.normal(91, 6)))), int(round(rng.normal(31, 3))), int(round(rng.normal(30, 3)))]
    for orbit in (1, 2):
        if rng.random() < MISSING_ORBIT_PROB:
            counts[orbit] = 0
    plan = _plan(geometry.height, geometry.width, seed, *(max(c, 0) for c in counts))

    final = Path(tile_location(root, year, tile))
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{tile}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _fill_files(plan, work)
        np.save(work / "doys.npy", plan.doys)
        np.save(work / "sar_ascending_doy.npy", plan.asc_doys)
        np.save(work / "sar_descending_doy.npy", plan.desc_doys)
        if size is not None:
            write_roi(work / ROI_FILE, geometry)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "synthetic tile %s: %d x %d, S2 %d, S1 %d+%d dates -> %s",
        tile, geometry.height, geometry.width, plan.doys.size, plan.asc_doys.size, plan.desc_doys.size, final,
    )
    return final


def _empty_shapes(plan: _Plan) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Dtype and shape of each large array of a plan."""
    h, w = plan.height, plan.width
    return {
        "bands": (np.dtype(np.uint16), (plan.doys.size, h, w, 10)),
        "masks": (np.dtype(np.uint8), (plan.doys.size, h, w)),
        "sar_ascending": (np.dtype(np.int16), (plan.asc_doys.size, h, w, 2)),
        "sar_descending": (np.dtype(np.int16), (plan.desc_doys.size, h, w, 2)),
    }
