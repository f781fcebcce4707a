"""The demo's picture of its region: each tile outlined and named where it lies, with the pixels it encoded
at their true place, and beside the map each tile's data cropped and enlarged (first three principal
components of the embeddings as RGB, fitted over all tiles so colours compare)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tessera_pipeline.figures import pyplot
from tessera_pipeline.grid import index_from_name, tile_bounds, tile_geometry
from tessera_pipeline.store.results import TileData

#: Shown where a pixel has no data.
NO_DATA_GREY = 0.35


def pca_rgb(rasters: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The first three principal components of (H, W, D) rasters, fitted jointly, as (H, W, 3) floats in [0, 1]
    (2-98 % stretched); NaN where a pixel has no data."""
    flat = np.concatenate([r.reshape(-1, r.shape[-1]) for r in rasters]).astype(np.float64)
    valid = ~np.isnan(flat).any(axis=1)
    rgb = np.full((len(flat), 3), np.nan)
    if valid.any():
        data = flat[valid] - flat[valid].mean(axis=0)
        _, _, vt = np.linalg.svd(data, full_matrices=False)
        pcs = data @ vt[:3].T
        lo, hi = np.percentile(pcs, 2, axis=0), np.percentile(pcs, 98, axis=0)
        rgb[valid] = 0.0
        rgb[valid, :pcs.shape[1]] = np.clip((pcs - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    sizes = np.cumsum([r.shape[0] * r.shape[1] for r in rasters])[:-1]
    return [part.reshape(r.shape[0], r.shape[1], 3) for part, r in zip(np.split(rgb, sizes), rasters)]


def crop_to_data(rgb: np.ndarray) -> np.ndarray:
    """The smallest window of an (H, W, 3) picture holding every pixel with data (all of it when none has)."""
    valid = ~np.isnan(rgb).any(axis=2)
    if not valid.any():
        return rgb
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    return rgb[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _outline(tile: str, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """The tile's 0.1 degree cell as a closed line in EPSG `epsg` (edges densified: a cell is curved in UTM)."""
    from pyproj import Transformer

    west, south, east, north = tile_bounds(tile)
    t = np.linspace(0.0, 1.0, 21)
    across, up = west + (east - west) * t, south + (north - south) * t
    lon = np.concatenate([across, np.full_like(t, east), across[::-1], np.full_like(t, west)])
    lat = np.concatenate([np.full_like(t, south), up, np.full_like(t, north), up[::-1]])
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def _shown(rgb: np.ndarray) -> np.ndarray:
    """The picture with no-data pixels grey."""
    return np.where(np.isnan(rgb), NO_DATA_GREY, rgb)


def draw_region_tiles(tiles: Sequence[TileData], path: str | Path, *, title: str) -> None:
    """A PNG of the tiles: a map (tile outlines, names, each tile's data at its true place, boxed) and each tile's
    data cropped and enlarged, panels laid out as the tiles lie."""
    from matplotlib.gridspec import GridSpec
    from matplotlib.patches import Rectangle

    plt = pyplot()
    pictures = pca_rgb([t.embeddings for t in tiles])
    epsg = tiles[0].epsg
    cells = [index_from_name(t.tile) for t in tiles]
    ix0, iy1 = min(c[0] for c in cells), max(c[1] for c in cells)
    ncols, nrows = max(c[0] for c in cells) - ix0 + 1, iy1 - min(c[1] for c in cells) + 1
    fig = plt.figure(figsize=(15, 8.5), dpi=100)
    grid = GridSpec(nrows, 1 + ncols, figure=fig, width_ratios=[ncols * 1.4] + [1] * ncols, wspace=0.25, hspace=0.3,
                    left=0.06, right=0.98, top=0.86, bottom=0.16)
    overview = fig.add_subplot(grid[:, 0])
    xs, ys = [], []
    for tile, rgb, (ix, iy) in zip(tiles, pictures, cells):
        x, y = _outline(tile.tile, epsg)
        xs += [x.min(), x.max()]
        ys += [y.min(), y.max()]
        overview.plot(x, y, color="black", linewidth=1.2)
        overview.text(x.mean(), y.mean(), tile.tile, ha="center", va="center", fontsize=11)
        a, _b, c, _d, e, f = tile.transform
        h, w = rgb.shape[:2]
        span = max(x.max() - x.min(), y.max() - y.min())
        if tile.epsg == epsg:
            overview.imshow(_shown(rgb), extent=(c, c + a * w, f + e * h, f), interpolation="nearest", zorder=3)
            pad = 0.015 * span  # a box a person can find around data far smaller than the tile
            overview.add_patch(Rectangle((c - pad, f + e * h - pad), a * w + 2 * pad, -e * h + 2 * pad, fill=False,
                                         edgecolor="#d7191c", linewidth=2, zorder=4))
        panel = fig.add_subplot(grid[iy1 - iy, 1 + ix - ix0])
        crop = crop_to_data(rgb)
        panel.imshow(_shown(crop), interpolation="nearest")
        geo = tile_geometry(tile.tile)
        panel.set_title(f"{tile.tile}\n{crop.shape[0]} x {crop.shape[1]} px of its {geo.height} x {geo.width}",
                        fontsize=10)
        panel.set_xticks([])
        panel.set_yticks([])
        for spine in panel.spines.values():
            spine.set_edgecolor("#d7191c")
            spine.set_linewidth(2)
    pad = 0.03 * max(max(xs) - min(xs), max(ys) - min(ys))
    overview.set_xlim(min(xs) - pad, max(xs) + pad)
    overview.set_ylim(min(ys) - pad, max(ys) + pad)
    overview.set_aspect("equal")
    overview.set_xlabel(f"x (m, EPSG:{epsg})")
    overview.set_ylabel(f"y (m, EPSG:{epsg})")
    overview.ticklabel_format(style="plain", useOffset=False)
    overview.tick_params(labelsize=8)
    overview.set_title("the region: tiles outlined and named; red boxes: the pixels each tile encoded", fontsize=10)
    fig.suptitle(title, fontsize=13)
    fig.text(0.06, 0.02, "Colour: the embeddings' first three principal components as red, green, blue (fitted over "
             f"all tiles, so colours compare); grey: no data.\nRight: each tile's encoded pixels, enlarged, "
             "laid out as the tiles lie.", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
