"""What the embedding store hands back: small, picklable results of writes, reads and checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CommitRecord:
    """What a committed write returns: small, picklable metadata for the run layer's ledger."""

    year: int
    tile: str
    version: str
    store_url: str
    height: int
    width: int
    dims: int
    raw_bytes: int
    write_s: float

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class PriorMarker:
    """A tile's marker as read before its new version was encoded: the tag its commit is conditional on, the
    version it names and the lease generation it was committed under (all None when the tile had no marker)."""

    tag: str | None
    version: str | None
    generation: int | None


@dataclass(frozen=True)
class TileData:
    """One tile read back: int8 embeddings (or dequantised float32), scales, georeference, marker."""

    year: int
    tile: str
    version: str
    embeddings: np.ndarray
    scales: np.ndarray
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    marker: dict[str, Any] = field(repr=False)

    @property
    def provenance(self) -> dict[str, Any]:
        """The provenance recorded when the tile was committed."""
        prov: dict[str, Any] = self.marker.get("provenance", {})
        return prov


@dataclass(frozen=True)
class IncompleteTile:
    """A tile with version data but no commit marker; `age_s` is the newest version's age."""

    year: int
    tile: str
    versions: tuple[str, ...]
    age_s: float

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready)."""
        d = asdict(self)
        d["versions"] = list(self.versions)
        return d


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of recomputing one committed tile's checksums."""

    year: int
    tile: str
    ok: bool
    version: str | None = None
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready)."""
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d
