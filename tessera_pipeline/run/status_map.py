"""The status map: a run's tiles coloured by state (complete, failed by reason, pending, awaiting input) on
the land mask, one PNG that reads for the whole globe and for a county alike.

Tiles are a raster of 0.1 degree cells, never one patch per tile, so 1.6 M tiles draw in seconds. A
globe is shrunk by keeping, in each block of cells, the state that most needs seeing (failed over
awaiting input over pending over complete), and failed and awaiting-input tiles are drawn 3 px wide,
so one failed tile among a million complete ones still shows. A small region is enlarged instead, with
each tile outlined and, where it fits, named.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tessera_pipeline.figures import pyplot
from tessera_pipeline.grid import (
    CELLS_PER_DEGREE,
    N_LAT,
    N_LON,
    index_from_point,
    name_from_index,
)
from tessera_pipeline.run.status import RunStatus

log = logging.getLogger(__name__)

COMPLETE, PENDING, AWAITING_INPUT, FAILED = "complete", "pending", "awaiting-input", "failed"
SEA, LAND = "#d4e6f4", "#eee6d2"
_COLOURS = {COMPLETE: "#1a9850", PENDING: "#9e9e9e", AWAITING_INPUT: "#3a7dd8"}
#: Failed states, one colour per reason (the most common first).
FAILED_COLOURS = ("#d7191c", "#ff8c00", "#8e24aa", "#e7298a", "#8c510a", "#ffd000")
#: What wins when cells are merged: the higher, the more it needs seeing.
_PRIORITY = {COMPLETE: 0, PENDING: 1, AWAITING_INPUT: 2}
#: Largest map raster, pixels; a plan wider than the world view's threshold is drawn on the whole world.
MAX_WIDTH, MAX_HEIGHT = 1800, 1000
WORLD_SPAN_CELLS = (600, 400)
#: The world view's latitudes: the land mask's band (60 S to 84 N) and a little more.
WORLD_SOUTH, WORLD_NORTH = -60.0, 85.0
#: Margins around the map, pixels: left, right (the legend), top (the title), bottom.
MARGINS = (80, 470, 90, 60)
_DPI = 100


@dataclass(frozen=True)
class MapFrame:
    """Where the map lies in the PNG: its lon/lat extent and its pixel box, so a tile's pixels can be found."""

    west: float
    south: float
    east: float
    north: float
    left: int
    top: int
    width: int
    height: int

    def pixel(self, lon: float, lat: float) -> tuple[int, int]:
        """(column, row) of the PNG pixel at (lon, lat)."""
        col = self.left + (lon - self.west) / (self.east - self.west) * self.width
        row = self.top + (self.north - lat) / (self.north - self.south) * self.height
        return int(col), int(row)


def state_colours(states: Sequence[str]) -> list[str]:
    """A colour per state name: fixed ones for complete / pending / awaiting-input, one per failed reason."""
    failed = [s for s in states if s.startswith(FAILED)]
    colours = []
    for s in states:
        if s in _COLOURS:
            colours.append(_COLOURS[s])
        elif s.startswith(FAILED):
            colours.append(FAILED_COLOURS[failed.index(s) % len(FAILED_COLOURS)])
        else:
            colours.append("#000000")
    return colours


def _priority(state: str) -> int:
    """Rank of a state when cells are merged (failed highest, then unknown states, awaiting input, ...)."""
    return _PRIORITY.get(state, 10 if state.startswith(FAILED) else 3)


def _extent(ix: np.ndarray, iy: np.ndarray) -> tuple[int, int, int, int, bool]:
    """Cells drawn (ix0, iy0, ix1, iy1, exclusive ends) and whether it is the world view."""
    south = int(round((WORLD_SOUTH + 90) * CELLS_PER_DEGREE))
    north = int(round((WORLD_NORTH + 90) * CELLS_PER_DEGREE))
    if ix.size == 0:
        return 0, south, N_LON, north, True
    span_x, span_y = int(ix.max() - ix.min()) + 1, int(iy.max() - iy.min()) + 1
    if span_x > WORLD_SPAN_CELLS[0] or span_y > WORLD_SPAN_CELLS[1]:
        return 0, min(south, int(iy.min())), N_LON, max(north, int(iy.max()) + 1), True
    margin = max(2, math.ceil(0.2 * max(span_x, span_y)))
    return (max(0, int(ix.min()) - margin), max(0, int(iy.min()) - margin),
            min(N_LON, int(ix.max()) + 1 + margin), min(N_LAT, int(iy.max()) + 1 + margin), False)


def _ranks(ix: np.ndarray, iy: np.ndarray, ranks: np.ndarray, box: tuple[int, int, int, int],
           land: np.ndarray | None) -> np.ndarray:
    """The drawn cells' ranks, north row first: 0 sea, 1 land, 2+ a tile's state (the highest where tiles
    share a cell)."""
    ix0, iy0, ix1, iy1 = box
    grid = np.ones((iy1 - iy0, ix1 - ix0), dtype=np.uint8)
    if land is not None:
        grid = land[iy0:iy1, ix0:ix1].astype(np.uint8)
    np.maximum.at(grid, (iy - iy0, ix - ix0), ranks)
    return grid[::-1]


def _shrink(grid: np.ndarray, factor: int) -> np.ndarray:
    """Merge blocks of factor x factor cells, keeping each block's highest rank."""
    if factor <= 1:
        return grid
    ny, nx = grid.shape
    padded = np.zeros((-(-ny // factor) * factor, -(-nx // factor) * factor), dtype=grid.dtype)
    padded[:ny, :nx] = grid
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).max(axis=(1, 3))


def _widen(grid: np.ndarray, urgent: int) -> np.ndarray:
    """Draw cells of rank `urgent` or above 3 x 3 px (over their neighbours), so a lone failed tile shows on a globe."""
    marks = np.where(grid >= urgent, grid, 0)
    padded = np.pad(marks, 1)
    h, w = grid.shape
    widest = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    return np.maximum(grid, widest)


def _scale(shape: tuple[int, int], mid_lat: float, world: bool) -> tuple[int, int, int]:
    """(shrink factor, px per cell across, px per cell down): fit the map in MAX_WIDTH x MAX_HEIGHT;
    a region's cells are as wide as they are on the ground (cos of its latitude)."""
    ny, nx = shape
    factor = max(1, math.ceil(nx / MAX_WIDTH), math.ceil(ny / MAX_HEIGHT))
    if factor > 1 or world:
        return factor, 1, 1
    squeeze = max(math.cos(math.radians(mid_lat)), 0.2)
    down = max(1, min(MAX_HEIGHT // ny, int(MAX_WIDTH / (nx * squeeze))))
    return 1, max(1, round(down * squeeze)), down


def _raster(grid: np.ndarray, palette: np.ndarray, sx: int, sy: int) -> np.ndarray:
    """RGB pixels of the ranks, each cell sx x sy px; cells of 8 px or more get a darker outline."""
    image = palette[grid].repeat(sy, axis=0).repeat(sx, axis=1)
    if sx >= 8 and sy >= 8:
        image[::sy] = image[::sy] // 2
        image[:, ::sx] = image[:, ::sx] // 2
        image[-1] //= 2
        image[:, -1] //= 2
    return image


def _name_size(sx: int, sy: int, n_tiles: int) -> tuple[float, bool]:
    """Font size (px) of tile names and whether they go on two lines (when that makes them larger); 0 when
    they would be too small to read."""
    if n_tiles > 400:
        return 0.0, False
    one = min(0.9 * sx / (0.62 * 16), 0.8 * sy / 1.3, 16.0)
    two = min(0.9 * sx / (0.62 * 10), 0.8 * sy / 2.6, 16.0)
    size, two_lines = (two, True) if two > 1.2 * one else (one, False)
    return (size, two_lines) if size >= 9 else (0.0, False)


def _short(label: str, limit: int = 44) -> str:
    """A legend label cut to `limit` characters (long failure reasons would push the legend off the picture)."""
    return label if len(label) <= limit else label[: limit - 3] + "..."


def _rgb(colour: str) -> list[int]:
    """#rrggbb as [r, g, b]."""
    return [int(colour[i:i + 2], 16) for i in (1, 3, 5)]


def draw_status_map(lon: np.ndarray, lat: np.ndarray, codes: np.ndarray, states: Sequence[str], path: str | Path,
                    *, title: str = "", land: np.ndarray | None = None) -> MapFrame:
    """Draw tiles (centres `lon`, `lat`; state `states[codes[i]]`) on `land` ([iy, ix] grid, True = land) to a PNG.

    Returns where the map lies in the PNG. Failed states are those whose name starts with "failed".
    """
    from matplotlib.patches import Patch
    from matplotlib.patheffects import withStroke

    plt = pyplot()
    codes = np.asarray(codes, np.int64)
    cells = index_from_point(np.asarray(lon, np.float64), np.asarray(lat, np.float64))
    ix, iy = (np.asarray(v, np.int64) for v in cells)
    order = sorted(range(len(states)), key=lambda c: _priority(states[c]))
    rank_of_code = np.zeros(max(len(states), 1), dtype=np.uint8)
    rank_of_code[order] = np.arange(2, 2 + len(order), dtype=np.uint8)
    colours = state_colours(states)
    palette = np.array([_rgb(SEA), _rgb(LAND)] + [_rgb(colours[c]) for c in order], dtype=np.uint8)
    ix0, iy0, ix1, iy1, world = _extent(ix, iy)
    west, east = ix0 / CELLS_PER_DEGREE - 180.0, ix1 / CELLS_PER_DEGREE - 180.0
    south, north = iy0 / CELLS_PER_DEGREE - 90.0, iy1 / CELLS_PER_DEGREE - 90.0
    grid = _ranks(ix, iy, rank_of_code[codes], (ix0, iy0, ix1, iy1), land)
    factor, sx, sy = _scale(grid.shape, (south + north) / 2, world)
    grid = _shrink(grid, factor)
    urgent = [rank_of_code[c] for c in range(len(states)) if _priority(states[c]) >= _PRIORITY[AWAITING_INPUT]]
    if sx == 1 and urgent:
        grid = _widen(grid, min(urgent))
    image = _raster(grid, palette, sx, sy)
    h, w = image.shape[:2]
    left, right, top, bottom = MARGINS
    fig_w, fig_h = left + w + right, top + h + bottom
    fig = plt.figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, w / fig_w, h / fig_h))
    ax.imshow(image, extent=(west, east, south, north), interpolation="nearest", aspect="auto")
    ax.set_xlabel("longitude (degrees)")
    ax.set_ylabel("latitude (degrees)")
    if world:
        ax.set_xticks(range(-180, 181, 30))
        ax.set_yticks(range(-60, 86, 30))
    size, two_lines = _name_size(sx, sy, codes.size)
    if size:
        for x, y in zip(ix.tolist(), iy.tolist()):
            name = name_from_index(x, y)
            text = name.replace("_", "\n", 2).replace("\n", "_", 1) if two_lines else name
            ax.text((x + 0.5) / CELLS_PER_DEGREE - 180.0, (y + 0.5) / CELLS_PER_DEGREE - 90.0, text,
                    ha="center", va="center", fontsize=size * 72 / _DPI,
                    path_effects=[withStroke(linewidth=2.5, foreground="white")])
    counts = np.bincount(codes, minlength=len(states))
    handles = [Patch(facecolor=colours[c], edgecolor="black", label=f"{_short(states[c])}: {counts[c]:,}")
               for c in reversed(order) if counts[c]]
    handles += [Patch(facecolor=LAND, edgecolor="black", label="land, not in the run"),
                Patch(facecolor=SEA, edgecolor="black", label="sea (no tiles)")]
    cell_note = (f"one pixel = {factor} x {factor} tiles\n(a block shows its most urgent state)" if factor > 1
                 else "one pixel = one 0.1 degree tile" if sx == 1 else "outlined cells are 0.1 degree tiles")
    if sx == 1 and urgent:
        cell_note += "\nfailed and awaiting-input tiles drawn 3 px wide"
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=((left + w + 20) / fig_w, 1 - top / fig_h),
               fontsize=13, title=f"{codes.size:,} tiles\n{cell_note}", title_fontsize=11, frameon=False,
               alignment="left")
    fig.suptitle(title, x=left / fig_w, y=1 - 15 / fig_h, ha="left", va="top", fontsize=16)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    log.info("status map of %d tiles: %s", codes.size, path)
    return MapFrame(west, south, east, north, left, top, w, h)


def draw_run_map(st: RunStatus, path: str | Path) -> MapFrame:
    """The status map of a run (`run_status(..., with_tiles=True)`) on the embedded land mask, titled with its
    counts."""
    from tessera_pipeline.landmask import globe_land_grid

    if st.tiles is None:
        raise ValueError("draw_run_map needs the tiles' states: run_status(..., with_tiles=True)")
    title = (f"{st.kind} {st.run_id} ({st.state}): {st.complete:,} of {st.planned:,} tiles complete, "
             f"{st.failed:,} failed, {st.pending:,} pending")
    t = st.tiles
    return draw_status_map(t.lon, t.lat, t.codes, t.names, path, title=title, land=globe_land_grid())
