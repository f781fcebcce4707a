"""Reading the embedding store: resolve a tile's commit marker, read the version it names, check it.

Never a mix of two versions (the marker is read again after the data), never silent damage (the
objects a version needs are checked, and whole-tile reads compare checksums with the marker).
Works on any backend `open_backend` returns, including read-only HTTPS, where nothing is listed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tessera_pipeline.errors import StoreConflictError, StoreError, StoreIntegrityError, TileNotCompleteError
from tessera_pipeline.quantisation import dequantise
from tessera_pipeline.store import layout, listing
from tessera_pipeline.store.backend import Backend, open_backend
from tessera_pipeline.store.checksums import array_sha256
from tessera_pipeline.store.layout import TileKey
from tessera_pipeline.store.records import CommitMarker, RootAttributes, modernised, own
from tessera_pipeline.store.results import IncompleteTile, TileData, VerifyResult

log = logging.getLogger(__name__)

READ_RETRIES = 5

Window = tuple[slice, slice]


class TileReader:
    """The read side of a store at a local path, `s3://bucket/prefix` or `https://host/path` (read-only)."""

    def __init__(self, url: str) -> None:
        self.backend: Backend = open_backend(str(url))
        self.url = self.backend.url
        self._zstore: Any = None

    def __repr__(self) -> str:
        """The class and the store URL."""
        return f"{type(self).__name__}({self.url!r})"

    @property
    def zarr_store(self) -> Any:
        """The zarr store object at the root (created lazily)."""
        if self._zstore is None:
            self._zstore = self.backend.zarr_store()
        return self._zstore

    def root_attrs(self) -> dict[str, Any] | None:
        """The root group's attributes (checked against `RootAttributes`; legacy `tessera:` keys read under our
        prefix), or None when there is no store here yet."""
        raw = self.backend.get("zarr.json")
        if raw is None:
            return None
        try:
            attrs = modernised(json.loads(raw).get("attributes", {}))
        except (ValueError, AttributeError) as exc:
            raise StoreConflictError(f"{self.url}/zarr.json is not a zarr group document ({exc})") from exc
        if attrs.get(own("store_format")) != layout.STORE_FORMAT:
            raise StoreConflictError(f"{self.url} is not a {layout.STORE_FORMAT} store")
        RootAttributes.parse(attrs, where=f"{self.url}/zarr.json", error=StoreConflictError)
        return attrs

    def marker(self, year: int, tile: str) -> dict[str, Any] | None:
        """The tile's commit marker, or None when the tile is not complete (its format checked; `read_tile`
        checks every field it reads against `CommitMarker`)."""
        raw = self.backend.get(layout.marker_key(year, tile))
        if raw is None:
            return None
        try:
            marker: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise StoreIntegrityError(f"unreadable commit marker: {exc}", tile=tile) from exc
        if not isinstance(marker, dict) or marker.get("format") != layout.COMMIT_FORMAT:
            found = marker.get("format") if isinstance(marker, dict) else type(marker).__name__
            raise StoreIntegrityError(f"commit marker has format {found!r}", tile=tile)
        return marker

    def is_complete(self, year: int, tile: str) -> bool:
        """True when the tile has a commit marker (written only after its data was durable)."""
        return self.backend.get(layout.marker_key(year, tile)) is not None

    def list_complete(self, year: int | None = None) -> list[TileKey]:
        """Every complete tile (of one year or all), from listings of the marker prefix (no GETs)."""
        years = [layout.check_year(year)] if year is not None else listing.committed_years(self.backend)
        return sorted(TileKey(y, t) for y in years for t in listing.committed(self.backend, y).tiles)

    def committed(self, year: int) -> listing.Committed:
        """The year's committed tiles as compact arrays (names, marker times): what whole-store commands use."""
        return listing.committed(self.backend, layout.check_year(year))

    def _open_version(self, marker: Mapping[str, Any]) -> Any:
        """Open the version group a marker names (metadata from its consolidated zarr.json)."""
        import zarr

        return zarr.open_group(self.backend.zarr_store(str(marker["path"])), mode="r")

    def read_tile(
        self,
        year: int,
        tile: str,
        *,
        dequantise: bool = False,
        window: Window | None = None,
        verify: bool = True,
    ) -> TileData:
        """Read a complete tile (or a window of it); never a mix of two versions, never silent damage.

        Every read checks that the objects the marker's version needs exist (a missing chunk would
        otherwise read as fill values); a whole-tile read with `verify` (the default) also compares
        the sha256 checksums with the marker. Either failure is a StoreIntegrityError naming the object.
        """
        for attempt in range(READ_RETRIES):
            marker = self.marker(year, tile)
            if marker is None:
                raise TileNotCompleteError(f"no complete tile in {self.url} for {year}", tile=tile)
            CommitMarker.parse(marker, where="commit marker", error=StoreIntegrityError, tile=tile)
            vkey = str(marker["path"])
            error: Exception | None = None
            where = vkey
            missing: list[str] = []
            arrays: dict[str, np.ndarray] = {}
            try:
                group = self._open_version(marker)
                stored = {name: group[name] for name in (layout.EMBEDDINGS, layout.SCALES)}
                missing = self._missing_objects(vkey, stored)
                sel = window if window is not None else (slice(None), slice(None))
                for name, array in stored.items():
                    where = f"{vkey}/{name}"
                    arrays[name] = np.asarray(array[sel])
            except Exception as exc:  # a superseded version can vanish mid-read; decided below
                error = exc
            again = self.marker(year, tile)
            if again is not None and again["version"] == marker["version"]:
                if error is not None:
                    missing = missing or self._missing_objects(vkey, None)
                if missing:
                    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                    raise StoreIntegrityError(f"missing object {missing[0]}{more} in {self.url}", tile=tile)
                if error is not None:
                    raise StoreError(f"cannot read {where} in {self.url}: {error}", tile=tile) from error
                emb, sc = arrays[layout.EMBEDDINGS], arrays[layout.SCALES]
                if verify and window is None:
                    problems = _compare(marker, emb, sc)
                    if problems:
                        raise StoreIntegrityError("; ".join(problems), tile=tile)
                return TileData(
                    year=year,
                    tile=tile,
                    version=str(marker["version"]),
                    embeddings=_dequantise(emb, sc) if dequantise else emb,
                    scales=sc,
                    epsg=int(marker["epsg"]),
                    transform=tuple(float(v) for v in marker["transform"]),  # type: ignore[arg-type]
                    marker=marker,
                )
            log.info("%s/%s was replaced while being read (attempt %d); reading again", year, tile, attempt + 1)
        raise StoreError(f"tile kept changing during {READ_RETRIES} reads", tile=tile)

    def _missing_objects(self, vkey: str, arrays: Mapping[str, Any] | None) -> list[str]:
        """Keys a version needs that are absent: group and array metadata and, given the arrays, every chunk.

        One listing where the backend can list; a HEAD per needed object where it cannot (HTTPS).
        """
        needed = [f"{vkey}/zarr.json"] + [f"{vkey}/{name}/zarr.json" for name in (layout.EMBEDDINGS, layout.SCALES)]
        for name, array in (arrays or {}).items():
            # Stored objects follow the metadata's chunk grid (whole shards for a sharded array), not
            # `cdata_shape`, which counts the inner chunks of a shard.
            outer = array.metadata.chunk_grid.chunk_shape
            grid = itertools.product(*(range(math.ceil(n / c)) for n, c in zip(array.shape, outer)))
            needed += [f"{vkey}/{name}/{array.metadata.encode_chunk_key(coords)}" for coords in grid]
        if not self.backend.listable:
            return [key for key, found in zip(needed, self.backend.exists(needed)) if not found]
        present = set(self.backend.list_keys(vkey))
        return [key for key in needed if key not in present]

    def open_dataset(self, year: int, tile: str, *, verify: bool = True) -> Any:
        """The current version of a tile as a lazy xarray Dataset (CRS on `spatial_ref`).

        With `verify` (the default) the tile is first read whole and checked against its marker
        (objects present, checksums equal), raising StoreIntegrityError naming the object otherwise.
        """
        import xarray as xr

        if verify:
            marker = self.read_tile(year, tile, verify=True).marker
        else:
            found = self.marker(year, tile)
            if found is None:
                raise TileNotCompleteError(f"no complete tile in {self.url} for {year}", tile=tile)
            marker = found
        return xr.open_zarr(self.backend.zarr_store(str(marker["path"])), consolidated=True)

    def verify_tile(self, year: int, tile: str) -> VerifyResult:
        """Recompute a committed tile's checksums and compare shapes, dtypes and sums with its marker."""
        try:
            data = self.read_tile(year, tile, verify=False)
        except TileNotCompleteError:
            return VerifyResult(year, tile, False, None, ("not complete (no commit marker)",))
        except StoreError as exc:
            return VerifyResult(year, tile, False, None, (str(exc).removeprefix(f"tile {tile}: "),))
        problems = _compare(data.marker, data.embeddings, data.scales)
        return VerifyResult(year, tile, not problems, data.version, tuple(problems))

    def verify_named(self, year: int, tile: str, marker: Mapping[str, Any]) -> VerifyResult:
        """Check the version a marker-shaped record names (a release row), not the current one: objects, checksums."""
        vkey, version = str(marker["path"]), str(marker["version"])
        error: Exception | None = None
        arrays: dict[str, np.ndarray] = {}
        try:
            group = self._open_version(marker)
            stored = {name: group[name] for name in (layout.EMBEDDINGS, layout.SCALES)}
            missing = self._missing_objects(vkey, stored)
            if not missing:
                arrays = {name: np.asarray(array[...]) for name, array in stored.items()}
        except Exception as exc:  # a deleted or damaged version: named below
            error, missing = exc, self._missing_objects(vkey, None)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            return VerifyResult(year, tile, False, version, (f"missing object {missing[0]}{more}",))
        if error is not None:
            return VerifyResult(year, tile, False, version, (f"cannot read {vkey}: {' '.join(str(error).split())}",))
        problems = _compare(marker, arrays[layout.EMBEDDINGS], arrays[layout.SCALES])
        return VerifyResult(year, tile, not problems, version, tuple(problems))

    def verify(self, year: int | None = None, *, workers: int = 4) -> list[VerifyResult]:
        """Verify every complete tile (of one year or all), a few tiles at a time."""
        keys = self.list_complete(year)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(lambda k: self.verify_tile(k.year, k.tile), keys))

    def list_incomplete(self, year: int | None = None) -> list[IncompleteTile]:
        """Tiles that hold version data but no commit marker: an interrupted first write, or a lost marker."""
        if year is None:
            years = [int(n) for n in self.backend.list_children("") if n.isdigit() and len(n) == 4]
        else:
            years = [layout.check_year(year)]
        complete = set(self.list_complete(year))
        now = datetime.now(timezone.utc)
        found: list[IncompleteTile] = []
        for y in years:
            for name in self.backend.list_children(layout.year_key(y)):
                if not layout.is_tile(name) or TileKey(y, name) in complete:
                    continue
                versions = [v for v in self.backend.list_children(layout.tile_key(y, name)) if layout.is_version(v)]
                if versions:
                    age = (now - layout.version_time(max(versions))).total_seconds()
                    found.append(IncompleteTile(y, name, tuple(sorted(versions)), age))
        return found


def _dequantise(emb: np.ndarray, sc: np.ndarray) -> np.ndarray:
    """Module-level alias so `read_tile`'s keyword does not shadow the function."""
    return dequantise(emb, sc)


def _compare(marker: Mapping[str, Any], emb: np.ndarray, sc: np.ndarray) -> list[str]:
    """Differences between arrays read back and what their marker says was written, naming each array."""
    problems: list[str] = []
    for name, arr in ((layout.EMBEDDINGS, emb), (layout.SCALES, sc)):
        want = marker["arrays"][name]
        where = f"{marker['path']}/{name}"
        if list(arr.shape) != list(want["shape"]) or str(arr.dtype) != want["dtype"]:
            problems.append(f"{name}: {arr.dtype} {list(arr.shape)} != marker {want['dtype']} {want['shape']} ({where})")
        elif array_sha256(arr) != want["sha256"]:
            problems.append(f"{name}: sha256 mismatch, damaged object(s) under {where}")
    return problems
