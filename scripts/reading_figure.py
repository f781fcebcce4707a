"""Draw docs/reading-zone-grid.png: four neighbouring tiles' rasters on their zone's 10 m lattice (floor snapping),
their overlaps, and which tile a pixel in an overlap reads. Run: python scripts/reading_figure.py docs/"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Polygon, Rectangle  # noqa: E402

from tessera_pipeline.grid import tile_geometry  # noqa: E402
from tessera_pipeline.read import lattice  # noqa: E402

TILES = [(17.85, 79.65), (17.95, 79.65), (17.85, 79.75), (17.95, 79.75)]
COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red"]


def main(out_dir: Path) -> Path:
    """Write the figure into out_dir; returns its path."""
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(12, 6.5), gridspec_kw={"width_ratios": [1, 1.3]})
    for ax in (whole, zoom):
        for (lon, lat), colour in zip(TILES, COLOURS):
            g = tile_geometry((lon, lat))
            row0, col0 = lattice.tile_origin(g.transform, g.epsg)
            ax.add_patch(Rectangle((col0 * 10, -(row0 + g.height) * 10), g.width * 10, g.height * 10, fill=True,
                                   alpha=0.18, color=colour, lw=1.5, label=f"{g.name} raster (snapped)"))
            cell = [(lon - 0.05, lat + 0.05), (lon + 0.05, lat + 0.05), (lon + 0.05, lat - 0.05), (lon - 0.05, lat - 0.05)]
            x, y = lattice.project(np.array([c[0] for c in cell]), np.array([c[1] for c in cell]), 33)
            ax.add_patch(Polygon(np.stack([x, y], 1), closed=True, fill=False, ec=colour, ls="--", lw=1.2))
    jx, jy = lattice.project(np.array([17.9]), np.array([79.7]), 33)
    cx, cy = float(jx[0]), float(jy[0])
    whole.autoscale()
    whole.set_aspect("equal")
    whole.set_title("four tiles, UTM zone 33, 79.7 N\ndashed: 0.1 degree cells\nshaded: rasters (overlap ~55 px)",
                    fontsize=10)
    zoom.set_xlim(cx - 500, cx + 500)
    zoom.set_ylim(cy - 400, cy + 600)
    zoom.set_aspect("equal")
    for v in np.arange(np.floor((cx - 500) / 10) * 10, cx + 510, 10):
        zoom.axvline(v, color="0.9", lw=0.3, zorder=0)
    for v in np.arange(np.floor((cy - 400) / 10) * 10, cy + 610, 10):
        zoom.axhline(v, color="0.9", lw=0.3, zorder=0)
    zoom.set_title("where the four meet (grey: the zone's 10 m lattice).\nIn an overlap the tile later in (lon, lat) "
                   "order wins\nwhere it has data; no-data never hides a neighbour's data", fontsize=10)
    whole.legend(fontsize=7, loc="lower left")
    for ax in (whole, zoom):
        ax.set_xlabel("easting (m)")
        ax.set_ylabel("northing (m)")
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    out = out_dir / "reading-zone-grid.png"
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")))
