"""Which version of which tile a read uses: the store's current commit markers, or a manifest or release.

A reader asks for the tiles it needs by name; a store answers with one marker GET per tile (no LIST),
a manifest or release from its table (no request at all), so a store behind a read-only HTTPS front
opens through a release.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tessera_pipeline.store import layout
from tessera_pipeline.store.listing import parallel_map

if TYPE_CHECKING:
    import pyarrow as pa

    from tessera_pipeline.store import TileStore


@dataclass(frozen=True)
class TileRef:
    """One committed tile version: where its group is and how it sits on the ground."""

    year: int
    tile: str
    version: str
    path: str
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int
    scales_sha256: str | None

    @property
    def overlay_order(self) -> tuple[float, float]:
        """Where the tile falls in the overlap rule: its centre (lon, lat); a later tile wins where it has data."""
        from tessera_pipeline.grid import parse_tile_name

        return parse_tile_name(self.tile)

    @classmethod
    def from_marker(cls, year: int, tile: str, marker: Mapping[str, Any]) -> TileRef:
        """The reference a commit marker (docs/formats.md section 5) names."""
        shape = marker["shape"]
        arrays = marker.get("arrays") or {}
        return cls(year=year, tile=tile, version=str(marker["version"]), path=str(marker["path"]),
                   epsg=int(marker["epsg"]), transform=tuple(float(v) for v in marker["transform"]),  # type: ignore[arg-type]
                   height=int(shape[0]), width=int(shape[1]),
                   scales_sha256=(arrays.get(layout.SCALES) or {}).get("sha256"))


class TileIndex(Protocol):
    """The tiles a reader may use: by (year, names), the committed ones with their versions."""

    #: What the index reads from, for messages and result attributes.
    source: str
    #: True when versions may be replaced while read (current markers); False for a fixed release.
    moving: bool

    def lookup(self, year: int, tiles: Iterable[str]) -> dict[str, TileRef]:
        """The committed versions of those tiles that have one."""
        ...


class MarkerIndex:
    """The store's current tiles, one marker GET per tile asked for (never a LIST)."""

    moving = True

    def __init__(self, store: TileStore) -> None:
        self.store = store
        self.source = store.url

    def lookup(self, year: int, tiles: Iterable[str]) -> dict[str, TileRef]:
        """The current markers of the tiles asked for, fetched side by side."""
        names = sorted(set(tiles))
        markers = parallel_map(lambda t: self.store.marker(year, t), names)
        return {t: TileRef.from_marker(year, t, m) for t, m in zip(names, markers) if m is not None}


class TableIndex:
    """The tiles of a manifest or release table: fixed versions, no request to look one up."""

    moving = False

    def __init__(self, table: pa.Table, source: str) -> None:
        self.source = source
        rows = table.select(["year", "tile", "version", "path", "epsg", "transform", "height", "width",
                             "scales_sha256"]).to_pylist()
        self._rows = {(int(r["year"]), str(r["tile"])): TileRef(
            year=int(r["year"]), tile=str(r["tile"]), version=str(r["version"]), path=str(r["path"]),
            epsg=int(r["epsg"]), transform=tuple(float(v) for v in r["transform"]),  # type: ignore[arg-type]
            height=int(r["height"]), width=int(r["width"]), scales_sha256=r["scales_sha256"]) for r in rows}

    def lookup(self, year: int, tiles: Iterable[str]) -> dict[str, TileRef]:
        """The table's rows for those tiles."""
        found = (self._rows.get((year, t)) for t in set(tiles))
        return {ref.tile: ref for ref in found if ref is not None}

    def refs(self, year: int) -> list[TileRef]:
        """Every tile version the table holds for a year."""
        return [ref for (y, _t), ref in sorted(self._rows.items()) if y == year]

    def years(self) -> list[int]:
        """The years the table holds."""
        return sorted({y for y, _ in self._rows})
