"""Key layout of the embedding store: where roots, tiles, versions and commit markers live.

Every path here is a '/'-separated key relative to the store root, identical on a local path and
on `s3://`, so the layout is one definition shared by writers, readers, listing and docs/formats.md.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from tessera_pipeline.errors import StoreError

#: Format tag written into the root attributes and every commit marker.
STORE_FORMAT = "tessera-store/1"
COMMIT_FORMAT = "tessera-commit/1"

#: Prefix holding one commit marker per complete tile: `_commits/{year}/{tile}.json`.
COMMITS_PREFIX = "_commits"
MARKER_SUFFIX = ".json"

#: Array names inside a version group.
EMBEDDINGS = "embeddings"
SCALES = "scales"
#: Objects every version group holds, relative to it, fixed by the layout (one shard of `embeddings`,
#: one chunk of `scales`, docs/formats.md section 3): what a listing must show for a version to be whole.
VERSION_OBJECTS = (
    "zarr.json",
    f"{EMBEDDINGS}/zarr.json",
    f"{EMBEDDINGS}/c/0/0/0",
    f"{SCALES}/zarr.json",
    f"{SCALES}/c/0/0",
)

#: Prefix holding the immutable releases: `_releases/{name}.parquet` (a manifest, docs/formats.md section 10).
RELEASES_PREFIX = "_releases"
RELEASE_SUFFIX = ".parquet"

_TILE_RE = re.compile(r"^grid_-?\d+\.\d{2}_-?\d+\.\d{2}$")
_VERSION_RE = re.compile(r"^v\d{8}T\d{12}Z-[0-9a-f]{8}$")
_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class TileKey(NamedTuple):
    """A tile-year: the unit of writing, committing and listing."""

    year: int
    tile: str


def check_tile(tile: str) -> str:
    """Validate a tile name (`grid_{lon:.2f}_{lat:.2f}`) so it is safe to use as a key segment."""
    if not _TILE_RE.match(tile):
        raise StoreError(f"not a tile name: {tile!r} (expected grid_LON_LAT, e.g. grid_0.15_52.05)")
    return tile


def check_year(year: int) -> int:
    """Validate a year so it is a four-digit key segment."""
    if not isinstance(year, int) or not 1000 <= year <= 9999:
        raise StoreError(f"not a year: {year!r}")
    return year


def is_version(name: str) -> bool:
    """True when `name` is a version-group name made by `new_version`."""
    return bool(_VERSION_RE.match(name))


def is_tile(name: str) -> bool:
    """True when `name` is a valid tile-name key segment (listings skip anything else)."""
    return bool(_TILE_RE.match(name))


def version_time(version: str) -> datetime:
    """The UTC creation time encoded in a version id (used to tell old debris from a write in progress)."""
    if not is_version(version):
        raise StoreError(f"not a version id: {version!r}")
    return datetime.strptime(version[1:22], "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)


def new_version(after: str | None = None) -> str:
    """A fresh, unique version id `vYYYYMMDDTHHMMSSffffffZ-xxxxxxxx` that sorts after `after`.

    Ids sort by UTC creation time; when a writer's clock is behind the version it replaces, the
    id is moved to 1 microsecond after it, so "older than current" always means superseded.
    """
    when = datetime.now(timezone.utc)
    if after is not None and is_version(after):
        previous = datetime.strptime(after[1:22], "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)
        when = max(when, previous + timedelta(microseconds=1))
    return f"v{when:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"


def year_key(year: int) -> str:
    """Key of the year group."""
    return f"{check_year(year)}"


def tile_key(year: int, tile: str) -> str:
    """Key of the tile group, parent of every version of the tile."""
    return f"{check_year(year)}/{check_tile(tile)}"


def version_key(year: int, tile: str, version: str) -> str:
    """Key of one immutable version group of a tile (the group a reader opens)."""
    if not is_version(version):
        raise StoreError(f"not a version id: {version!r}", tile=tile)
    return f"{tile_key(year, tile)}/{version}"


def marker_key(year: int, tile: str) -> str:
    """Key of a tile's commit marker; its presence is what makes the tile complete."""
    return f"{COMMITS_PREFIX}/{check_year(year)}/{check_tile(tile)}{MARKER_SUFFIX}"


def marker_prefix(year: int | None = None) -> str:
    """Prefix to list for the markers of one year (or of every year)."""
    return COMMITS_PREFIX if year is None else f"{COMMITS_PREFIX}/{check_year(year)}"


def check_release(name: str) -> str:
    """Validate a release name (letters, digits, `.`, `_`, `-`; 100 at most) so it is a safe key segment."""
    if not isinstance(name, str) or not _RELEASE_RE.match(name) or name.endswith(RELEASE_SUFFIX):
        raise StoreError(f"not a release name: {name!r} (letters, digits, '.', '_', '-'; e.g. 2024-v1)")
    return name


def release_key(name: str) -> str:
    """Key of a release's manifest."""
    return f"{RELEASES_PREFIX}/{check_release(name)}{RELEASE_SUFFIX}"
