"""The in-memory form of one d-pixel tile: the upstream stacker's seven arrays, usually memory-mapped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The files of a d-pixel tile directory, as upstream's stackers and retiler write them.
DPIXEL_FILES: tuple[str, ...] = (
    "bands.npy",
    "masks.npy",
    "doys.npy",
    "sar_ascending.npy",
    "sar_ascending_doy.npy",
    "sar_descending.npy",
    "sar_descending_doy.npy",
)


@dataclass(frozen=True)
class DPixelTile:
    """One tile's inputs. Arrays keep their on-disk dtypes and are typically `np.memmap`s.

    bands (T,H,W,10) uint16 S2 DN in order B04,B02,B03,B08,B8A,B05,B06,B07,B11,B12;
    masks (T,H,W) uint8 (1 = clear); doys (T,) day of year;
    sar_ascending / sar_descending (Ta|Td,H,W,2) int16 [VV,VH], 0 = nodata, with their doys.
    `geometry` is the tile's georeference when known (grid geometry or the tile's roi.tiff).
    """

    name: str
    bands: np.ndarray
    masks: np.ndarray
    doys: np.ndarray
    sar_ascending: np.ndarray
    sar_ascending_doy: np.ndarray
    sar_descending: np.ndarray
    sar_descending_doy: np.ndarray
    geometry: Any | None = None

    @property
    def height(self) -> int:
        """Rows of the tile raster."""
        return int(self.bands.shape[1])

    @property
    def width(self) -> int:
        """Columns of the tile raster."""
        return int(self.bands.shape[2])

    @property
    def n_pixels(self) -> int:
        """Pixels in the tile (H*W)."""
        return self.height * self.width
