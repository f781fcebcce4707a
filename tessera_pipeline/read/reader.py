"""`Reader`: point, probe and region reads of a store, through its current markers, a manifest or a release."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera_pipeline.errors import StoreError, StoreIntegrityError
from tessera_pipeline.landmask import LandMask, load_landmask
from tessera_pipeline.read import lattice, region
from tessera_pipeline.read.index import MarkerIndex, TableIndex, TileIndex, TileRef
from tessera_pipeline.read.points import PointSamples, sample
from tessera_pipeline.read.tiles import VersionReader
from tessera_pipeline.store.records import own

if TYPE_CHECKING:
    import xarray as xr

    from tessera_pipeline.store import TileStore

log = logging.getLogger(__name__)

#: Reads through current markers start again this many times when a version is replaced mid-read.
MOVED_RETRIES = 2


class Reader:
    """Reads embeddings of one store across tiles: `sample_points`, `probe`, `read_region`.

    `release` (a name under the store's `_releases/`) or `manifest` (a manifest file or table) fixes
    the tile versions read and needs no LIST request (a read-only HTTPS front works); without them the
    current commit markers are read, one GET per tile touched. `landmask` tells water from pending
    land (default: the land mask runs use).
    """

    def __init__(self, store: str | TileStore, *, release: str | None = None, manifest: str | Path | Any = None,
                 landmask: str | LandMask | None = "globe") -> None:
        from tessera_pipeline.store import TileStore
        from tessera_pipeline.store.manifest import read_manifest
        from tessera_pipeline.store.releases import read_release

        self.store = store if isinstance(store, TileStore) else TileStore(str(store))
        if release is not None and manifest is not None:
            raise StoreError("read through a release or a manifest, not both")
        self.index: TileIndex
        if release is not None:
            self.index = TableIndex(read_release(self.store, release), f"{self.store.url} release {release}")
        elif manifest is not None:
            table = read_manifest(Path(manifest).read_bytes()) if isinstance(manifest, (str, Path)) else manifest
            self.index = TableIndex(table, f"manifest {manifest}" if isinstance(manifest, (str, Path)) else "manifest")
        else:
            self.index = MarkerIndex(self.store)
        self._landmask = landmask
        self.tiles = VersionReader(self.store.backend, self.store.url)

    @property
    def landmask(self) -> LandMask:
        """The land mask, loaded when first needed (region reads never need it)."""
        if not isinstance(self._landmask, LandMask):
            self._landmask = load_landmask(self._landmask)
        return self._landmask

    def _lookup(self, year: int) -> Any:
        """A per-call memo of the index: each tile looked up once, again only when asked for fresh.

        A release or manifest without the year is an error (every point would read `pending` otherwise)."""
        if isinstance(self.index, TableIndex) and year not in (years := self.index.years()):
            raise StoreError(f"{self.index.source} holds no tiles of {year} "
                             f"(its years: {', '.join(map(str, years)) or 'none'})")
        memo: dict[str, TileRef | None] = {}

        def lookup(names: list[str], fresh: bool) -> dict[str, TileRef]:
            todo = names if fresh else [n for n in names if n not in memo]
            if todo:
                found = self.index.lookup(year, todo)
                memo.update({n: found.get(n) for n in todo})
            return {n: ref for n in names if (ref := memo.get(n)) is not None}

        return lookup

    def _moving(self, call: Any) -> Any:
        """Run a read; through current markers, start again when a version it read was replaced meanwhile."""
        for attempt in range(MOVED_RETRIES + 1):
            try:
                return call(attempt > 0)
            except (StoreIntegrityError, FileNotFoundError) as exc:
                if not self.index.moving or attempt == MOVED_RETRIES:
                    raise
                log.info("a tile changed during a read of %s (%s); reading again", self.index.source, exc)
                self.tiles = VersionReader(self.store.backend, self.store.url)
        raise AssertionError("unreachable")

    def sample_points(self, points: Sequence[tuple[float, float]] | np.ndarray, year: int, *,
                      dequantise: bool = True) -> PointSamples:
        """Embeddings at N lon/lat points (an (N, 2) array or (lon, lat) pairs), with a status per point:
        valid, water, no-observations, pending or outside. Rows without data are NaN (or 0 with a NaN scale)."""
        xy = np.asarray(points, np.float64).reshape(-1, 2)

        def run(fresh: bool) -> PointSamples:
            lookup = self._lookup(year)
            return sample(lambda n, f: lookup(n, f or fresh), self.tiles, self.landmask, xy[:, 0], xy[:, 1],
                          dequantised=dequantise)

        return self._moving(run)

    def probe(self, lon: float, lat: float, year: int) -> str:
        """What a point holds: valid, water, no-observations, pending or outside."""
        return str(self.sample_points([(lon, lat)], year).status[0])

    def read_region(self, bbox: region.Bbox, year: int, *, dequantise: bool = True, crs: Any = None,
                    res: float | None = None, chunk: int = region.CHUNK) -> xr.DataArray:
        """A lazy DataArray (band, y, x) of a lon/lat box (west, south, east, north).

        In one UTM zone: the zone's canonical CRS (EPSG:326zz) and 10 m lattice, the tiles' own pixels.
        Across zones or with `crs`: resampled by nearest neighbour onto `crs` (default: the zone of the
        box's centre) at `res` (default 10 m, 0.0001 degree for a geographic CRS), said in attrs.
        float32 with NaN where there is no data, or with `dequantise=False` int8 with a `scales` coordinate.
        """
        bbox = region.check_bbox(bbox)
        zones = region.zones_spanned(bbox)
        kind = "dequantised" if dequantise else "int8"
        if crs is None and len(zones) == 1:
            return self._zone_region(bbox, year, zones[0], kind, chunk)
        return self._resampled_region(bbox, year, zones, kind, chunk, crs, res)

    def _zone_region(self, bbox: region.Bbox, year: int, zone: int, kind: str, chunk: int) -> xr.DataArray:
        """A box inside one zone, on the zone lattice."""
        row0, col0, height, width = region.zone_window(bbox, zone)
        lookup = self._lookup(year)
        names = region.cells_around(bbox, zone)
        placed = region.placed(lookup(names, False).values())
        mosaic = region.ZoneMosaic(self.tiles, placed, row0, col0, height, width)

        def read(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
            def once(fresh: bool) -> tuple[np.ndarray, np.ndarray]:
                if fresh:
                    mosaic.placed = region.placed(lookup(names, True).values())
                    mosaic.reader = self.tiles
                return mosaic.read(rows, cols)

            return self._moving(once)

        x, y = lattice.pixel_centres(np.arange(row0, row0 + height), np.arange(col0, col0 + width))
        attrs = {own("grid"): f"UTM zone {zone} 10 m lattice (geotessera's zone grid), tiles snapped by floor",
                 own("overlap"): "the tile later in (lon, lat) order that has data wins",
                 own("tiles"): ", ".join(f"{p.ref.tile}@{p.ref.version}" for p in placed)}
        return self._data_array(read, (height, width), kind, chunk, x, y, lattice.canonical_epsg(zone), year, attrs)

    def _resampled_region(self, bbox: region.Bbox, year: int, zones: list[int], kind: str, chunk: int, crs: Any,
                          res: float | None) -> xr.DataArray:
        """A box across zones or in another CRS, by nearest neighbour through the point reader."""
        from pyproj import CRS, Transformer

        west, south, east, north = bbox
        target = CRS.from_user_input(crs) if crs is not None else CRS.from_epsg(
            lattice.canonical_epsg(int(lattice.zones_of(np.array([(west + east) / 2]))[0])))
        res = float(res) if res is not None else region.default_res(target)
        x0, y0, height, width = region.target_grid(bbox, target, res)
        back = Transformer.from_crs(target, "EPSG:4326", always_xy=True).transform
        lookup = self._lookup(year)

        def points(lon: np.ndarray, lat: np.ndarray) -> PointSamples:
            return self._moving(lambda fresh: sample(lambda n, f: lookup(n, f or fresh), self.tiles, self.landmask,
                                                     lon, lat, dequantised=False))

        read = region.sampled_window(points, back, x0, y0, res)
        x = x0 + (np.arange(width) + 0.5) * res
        y = y0 - (np.arange(height) + 0.5) * res
        attrs = {own("grid"): f"{target.to_string()} at {res:g}",
                 own("resampled"): f"nearest neighbour from UTM zone(s) {', '.join(map(str, zones))}: each pixel "
                                      "takes the zone-lattice pixel its centre falls in",
                 own("overlap"): "the tile later in (lon, lat) order that has data wins"}
        return self._data_array(read, (height, width), kind, chunk, x, y, target, year, attrs)

    def _data_array(self, read: Any, shape: tuple[int, int], kind: str, chunk: int, x: np.ndarray, y: np.ndarray,
                    crs: Any, year: int, attrs: dict[str, str]) -> xr.DataArray:
        """The lazy DataArray with coordinates, CRS and transform (rioxarray), and a lazy scales coordinate."""
        import rioxarray  # noqa: F401  (registers .rio)
        import xarray as xr

        data = region.lazy(read, shape, kind, chunk)
        coords: dict[str, Any] = {"band": np.arange(128), "y": y, "x": x}
        if kind == "int8":
            coords["scales"] = (("y", "x"), region.lazy(read, shape, "scales", chunk))
        out = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, name="embeddings",
                           attrs={**attrs, own("source"): self.index.source, own("year"): year,
                                  own("dequantised"): kind == "dequantised"})
        return out.rio.write_crs(crs)


def open_reader(store: str | TileStore, *, release: str | None = None, manifest: str | Path | None = None,
                landmask: str | LandMask | None = "globe") -> Reader:
    """A `Reader` of a store location (local path, s3:// or https://), through a release or manifest if given."""
    return Reader(store, release=release, manifest=manifest, landmask=landmask)
