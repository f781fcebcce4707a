"""The Zarr v3 embedding store: versioned per-tile writes, a commit marker written last, readers
that resolve the marker first. The protocol and layout are specified in docs/formats.md.

Write: read the marker and its tag; arrays go into a fresh, immutable version group
`{year}/{tile}/{version}`; once they are durable, one small marker `_commits/{year}/{tile}.json`
(checksums, shape, georeference, provenance) naming that version is put atomically *only if the
marker is still the one read* (`put_if`). A writer that lost that race deletes its own version and
raises CommitConflictError; a winner deletes the version it replaced and old debris, never a
version the marker names nor one younger than the cleanup grace period (a write in progress).
Read: resolve the marker, read the version it names, re-read the marker; if it moved, retry.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tessera_pipeline import __version__
from tessera_pipeline.errors import (
    CommitConflictError,
    StoreConflictError,
    StoreError,
    StoreIntegrityError,
    TileNotCompleteError,
)
from tessera_pipeline.quantisation import dequantise
from tessera_pipeline.store import layout, listing, pins
from tessera_pipeline.store.backend import Backend, open_backend
from tessera_pipeline.store.checksums import ALGORITHM, array_sha256
from tessera_pipeline.store.layout import TileKey

log = logging.getLogger(__name__)

#: Chunking chosen by measurement (docs/formats.md, "Chunking and compression").
EMBEDDING_CHUNK = 128
SCALES_NODATA = float("nan")
READ_RETRIES = 5
#: Seconds during which an uncommitted version is presumed to be a write in progress: cleanup
#: keeps it. Writes take seconds once encoded, so 15 minutes is far beyond any live writer.
CLEANUP_GRACE_S = 900.0

Window = tuple[slice, slice]


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


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars/arrays and paths, which provenance dicts often hold."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a dict with only JSON types (numpy scalars become numbers)."""
    try:
        plain: dict[str, Any] = json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"provenance is not plain JSON: {exc}") from exc
    return plain


def _group_json(attributes: Mapping[str, Any]) -> bytes:
    """A zarr v3 group metadata document (zarr.json)."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False).encode()


def _crs_attrs(epsg: int, transform: tuple[float, ...]) -> dict[str, Any]:
    """CF grid-mapping attributes plus GDAL's GeoTransform, so xarray/rioxarray/GDAL see the CRS."""
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    a, b, c, d, e, f = transform
    attrs: dict[str, Any] = dict(crs.to_cf())
    wkt = crs.to_wkt()
    attrs.update(crs_wkt=wkt, spatial_ref=wkt, GeoTransform=f"{c!r} {a!r} {b!r} {f!r} {d!r} {e!r}")
    attrs["proj:code"] = f"EPSG:{epsg}"
    return attrs


def _normalise_model_attrs(model_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Check and complete the model description kept in the root attributes."""
    attrs = dict(model_attrs)
    if "model_version" not in attrs and "version" in attrs:
        attrs["model_version"] = attrs.pop("version")
    missing = [k for k in ("model_version", "checkpoint_sha256") if k not in attrs]
    if missing:
        raise StoreError(f"model_attrs lacks {', '.join(missing)}")
    attrs["model_version"] = str(attrs["model_version"])
    attrs.setdefault("dimensions", 128)
    return attrs


def root_attributes(model_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The root group's attributes: store format, model, quantisation (see docs/formats.md)."""
    model = _normalise_model_attrs(model_attrs)
    return {
        "tessera:store_format": layout.STORE_FORMAT,
        "tessera:model": model,
        "tessera:quantisation": {
            "method": "per_pixel_symmetric_int8",
            "quantized_dtype": "int8",
            "scale_dtype": "float32",
            "scale_array": layout.SCALES,
            "dequantise": "embeddings.astype(float32) * scales[..., None]",
            "scale_nodata": "NaN",
        },
        "tessera:layout": {
            "tile_group": "{year}/{tile}/{version}",
            "commit_marker": f"{layout.COMMITS_PREFIX}/{{year}}/{{tile}}{layout.MARKER_SUFFIX}",
        },
        "geoemb:type": "pixel",
        "geoemb:dimensions": int(model["dimensions"]),
        "geoemb:data_type": "int8",
        "geoemb:gsd": 10.0,
        "geoemb:spatial_layout": "utm_tiles",
    }


def _encode_version(
    emb: np.ndarray,
    sc: np.ndarray,
    *,
    group_attrs: dict[str, Any],
    crs_attrs: dict[str, Any],
    transform: tuple[float, float, float, float, float, float],
) -> dict[str, bytes]:
    """Encode a tile's version group with zarr in memory: {key relative to the group: object bytes}.

    Encoding in memory and then uploading the objects in a few concurrent batches keeps a write to
    a handful of PUTs with no metadata round trips, on S3 and locally alike.
    """
    import zarr
    import zarr.storage
    from zarr.codecs import BloscCodec, ZstdCodec
    from zarr.core.array_spec import ArrayConfigParams

    height, width, dims = emb.shape
    buffers: dict[str, Any] = {}
    mem = zarr.storage.MemoryStore(buffers)
    group = zarr.create_group(mem, attributes=group_attrs)
    full: ArrayConfigParams = {"write_empty_chunks": True}
    a, _b, c, _d, e, f = transform
    coords = {
        "x": (c + a * (np.arange(width) + 0.5), "projection_x_coordinate", "easting of pixel centre"),
        "y": (f + e * (np.arange(height) + 0.5), "projection_y_coordinate", "northing of pixel centre"),
    }
    for name, (values, standard, long_name) in coords.items():
        group.create_array(
            name,
            data=values,
            dimension_names=[name],
            config=full,
            attributes={"standard_name": standard, "long_name": long_name, "units": "m"},
        )
    group.create_array(
        "band",
        data=np.arange(dims, dtype=np.int32),
        dimension_names=["band"],
        config=full,
        attributes={"long_name": "embedding dimension"},
    )
    group.create_array(
        "spatial_ref", shape=(), dtype="int32", fill_value=0, attributes=crs_attrs, dimension_names=[], config=full
    )
    chunk_h, chunk_w = min(EMBEDDING_CHUNK, height), min(EMBEDDING_CHUNK, width)
    emb_arr = group.create_array(
        layout.EMBEDDINGS,
        shape=emb.shape,
        dtype="int8",
        chunks=(chunk_h, chunk_w, dims),
        shards=(math.ceil(height / chunk_h) * chunk_h, math.ceil(width / chunk_w) * chunk_w, dims),
        compressors=ZstdCodec(level=1),
        fill_value=0,
        dimension_names=["y", "x", "band"],
        config=full,
        attributes={
            "grid_mapping": "spatial_ref",
            "coordinates": "spatial_ref",
            "long_name": "Tessera embedding, per-pixel symmetric int8",
            "tessera:dequantise": "embeddings.astype(float32) * scales[..., None]",
        },
    )
    emb_arr[...] = emb
    sc_arr = group.create_array(
        layout.SCALES,
        shape=sc.shape,
        dtype="float32",
        chunks=sc.shape,
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4),
        fill_value=SCALES_NODATA,
        dimension_names=["y", "x"],
        config=full,
        attributes={
            "grid_mapping": "spatial_ref",
            "coordinates": "spatial_ref",
            "long_name": "per-pixel dequantisation scale (NaN: no data)",
        },
    )
    sc_arr[...] = sc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(mem)
    return {key: buf.to_bytes() for key, buf in buffers.items()}


class TileStore:
    """A Zarr v3 embedding store at a local path or `s3://bucket/prefix`; racing writers of a tile are fenced.

    `cleanup_grace_s`: uncommitted versions younger than this are never deleted (they may be writes
    in progress). `hook` is called with the name of each stage of a write (tests pause or crash there).
    """

    def __init__(
        self,
        url: str,
        *,
        durable: bool = True,
        hook: Callable[[str], None] | None = None,
        cleanup_grace_s: float = CLEANUP_GRACE_S,
    ) -> None:
        self.backend: Backend = open_backend(str(url))
        self.url = self.backend.url
        self.durable = durable
        self.cleanup_grace_s = float(cleanup_grace_s)
        self._hook = hook
        self._zstore: Any = None

    def __repr__(self) -> str:
        return f"TileStore({self.url!r})"

    @property
    def zarr_store(self) -> Any:
        """The zarr store object at the root (created lazily)."""
        if self._zstore is None:
            self._zstore = self.backend.zarr_store()
        return self._zstore

    def _stage(self, name: str) -> None:
        """Call the test hook at a named stage of a write (crash tests); no-op normally."""
        if self._hook is not None:
            self._hook(name)

    # --- root ------------------------------------------------------------------------

    def root_attrs(self) -> dict[str, Any] | None:
        """The root group's attributes, or None when there is no store here yet."""
        raw = self.backend.get("zarr.json")
        if raw is None:
            return None
        attrs: dict[str, Any] = json.loads(raw).get("attributes", {})
        if attrs.get("tessera:store_format") != layout.STORE_FORMAT:
            raise StoreConflictError(f"{self.url} is not a {layout.STORE_FORMAT} store")
        return attrs

    def create(self, model_attrs: Mapping[str, Any]) -> dict[str, Any]:
        """Create the root if absent; if present (or created by a racing writer), check it is the same model."""
        wanted = root_attributes(model_attrs)
        existing = self.root_attrs()
        if existing is None:
            if self.backend.put_if("zarr.json", _group_json(wanted), tag=None):
                log.info("created store %s", self.url)
            existing = self.root_attrs() or wanted
        self._check_model(existing, wanted)
        return existing

    def check_compatible(self, model_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
        """Raise StoreConflictError now if this store holds another model or data source (writes nothing).

        Writers call this before encoding, so a mismatch costs a second, not an encoded tile.
        Returns the root attributes, or None when there is no store yet (a write will create it).
        """
        existing = self.root_attrs()
        if existing is not None:
            self._check_model(existing, root_attributes(model_attrs))
        return existing

    def _check_model(self, existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
        """Refuse another model version, dimension count or data source; warn on another checkpoint."""
        have, want = existing["tessera:model"], wanted["tessera:model"]
        for key in ("model_version", "dimensions", "data_source"):
            if key == "data_source" and (key not in have or key not in want):
                if key in want:
                    log.warning("store %s records no data source; cannot check %s against it", self.url, want[key])
                continue
            if str(have.get(key)) != str(want.get(key)):
                raise StoreConflictError(
                    f"{self.url} holds {key}={have.get(key)!r}, refusing to add {key}={want.get(key)!r}"
                )
        if have.get("checkpoint_sha256") != want.get("checkpoint_sha256"):
            log.warning(
                "store %s was created with checkpoint %s; tiles written now record checkpoint %s",
                self.url,
                have.get("checkpoint_sha256"),
                want.get("checkpoint_sha256"),
            )

    def _ensure_group(self, key: str, attributes: Mapping[str, Any]) -> None:
        """Write a group's zarr.json if it is absent (same bytes from every writer, so races are benign)."""
        if self.backend.get(f"{key}/zarr.json") is None:
            self.backend.put_atomic(f"{key}/zarr.json", _group_json(attributes))

    # --- write -----------------------------------------------------------------------

    def write_tile(
        self,
        year: int,
        tile: str,
        embeddings: np.ndarray,
        scales: np.ndarray,
        *,
        epsg: int,
        transform: tuple[float, ...],
        provenance: Mapping[str, Any] | None = None,
    ) -> CommitRecord:
        """Write one tile into a fresh version, commit it with a fenced marker, then drop the version it replaced.

        Raises CommitConflictError (after deleting this write's version) when another writer
        committed the tile between this write's read of the marker and its marker put.
        """
        t0 = time.perf_counter()
        root = self.root_attrs()
        if root is None:
            raise StoreError(f"no store at {self.url}: create it first (write_encoded_tile does)", tile=tile)
        model = root["tessera:model"]
        emb, sc, transform6 = self._check_inputs(tile, embeddings, scales, transform, int(model["dimensions"]))
        height, width, dims = emb.shape
        epsg = int(epsg)

        self._ensure_group(layout.year_key(year), {"tessera:year": year})
        self._ensure_group(layout.tile_key(year, tile), {"tessera:tile": tile, "tessera:year": year})
        mkey = layout.marker_key(year, tile)
        replaced = self.backend.get_tagged(mkey)
        replaced_version = None if replaced is None else self._marker_version(tile, replaced[0])
        version = layout.new_version(after=replaced_version)
        vkey = layout.version_key(year, tile, version)
        prov = _plain_json(
            {
                "checkpoint_sha256": model.get("checkpoint_sha256"),
                "model_version": model.get("model_version"),
                "pipeline_version": __version__,
                **dict(provenance or {}),
            }
        )
        checksums = {layout.EMBEDDINGS: array_sha256(emb), layout.SCALES: array_sha256(sc)}
        objects = _encode_version(
            emb,
            sc,
            group_attrs={
                "tessera:tile": tile,
                "tessera:year": year,
                "tessera:version": version,
                "proj:code": f"EPSG:{epsg}",
                "spatial:transform": list(transform6),
                "spatial:shape": [height, width],
                "spatial:dimensions": ["y", "x"],
                "tessera:provenance": prov,
                "tessera:model": model,
            },
            crs_attrs=_crs_attrs(epsg, transform6),
            transform=transform6,
        )
        self._stage("encoded")
        for part in (layout.EMBEDDINGS, layout.SCALES, ""):
            batch = {k: v for k, v in objects.items() if part == "" or k.startswith(f"{part}/")}
            self.backend.put_many({f"{vkey}/{k}": v for k, v in batch.items()})
            for k in batch:
                del objects[k]
            self._stage(part or "metadata")
        if self.durable:
            self.backend.make_durable(vkey)
        self._stage("commit")
        write_s = time.perf_counter() - t0
        marker = {
            "format": layout.COMMIT_FORMAT,
            "year": year,
            "tile": tile,
            "version": version,
            "path": vkey,
            "committed_at": datetime.now(timezone.utc).isoformat(),
            "epsg": epsg,
            "transform": list(transform6),
            "shape": [height, width, dims],
            "checksum_algorithm": ALGORITHM,
            "arrays": {
                layout.EMBEDDINGS: {
                    "dtype": "int8",
                    "shape": [height, width, dims],
                    "sha256": checksums[layout.EMBEDDINGS],
                },
                layout.SCALES: {"dtype": "float32", "shape": [height, width], "sha256": checksums[layout.SCALES]},
            },
            "provenance": prov,
            "store_write_s": round(write_s, 4),
        }
        body = json.dumps(marker, indent=1, sort_keys=True, allow_nan=False).encode()
        if not self.backend.put_if(mkey, body, tag=None if replaced is None else replaced[1]):
            self._lost(year, tile, version)
        self._stage("committed")
        self._set_current_hint(year, tile, version)
        self.cleanup(year, tile, current=version, superseded=replaced_version)
        log.info("committed %s/%s as %s in %.2f s", year, tile, version, write_s)
        return CommitRecord(year, tile, version, self.url, height, width, dims, emb.nbytes + sc.nbytes, write_s)

    @staticmethod
    def _check_inputs(
        tile: str, embeddings: np.ndarray, scales: np.ndarray, transform: tuple[float, ...], dims: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float, float, float]]:
        """Validate shapes, dtypes and transform; return contiguous arrays and a float 6-tuple."""
        emb = np.asarray(embeddings)
        if emb.dtype != np.int8 or emb.ndim != 3 or emb.shape[2] != dims:
            raise StoreError(f"embeddings must be int8 (H, W, {dims}), got {emb.dtype} {emb.shape}", tile=tile)
        sc = np.asarray(scales)
        if sc.shape != emb.shape[:2] or sc.dtype.kind != "f":
            raise StoreError(f"scales must be float (H, W)={emb.shape[:2]}, got {sc.dtype} {sc.shape}", tile=tile)
        t = tuple(float(v) for v in transform)
        if len(t) != 6 or t[1] != 0.0 or t[3] != 0.0 or t[0] <= 0 or t[4] >= 0:
            raise StoreError(f"transform must be north-up (a, 0, c, 0, e<0, f), got {transform}", tile=tile)
        return np.ascontiguousarray(emb), np.ascontiguousarray(sc, dtype=np.float32), t  # type: ignore[return-value]

    @staticmethod
    def _marker_version(tile: str, raw: bytes) -> str | None:
        """The version a marker's bytes name, or None when unreadable (a rewrite repairs it)."""
        try:
            marker = json.loads(raw)
            version = marker.get("version") if marker.get("format") == layout.COMMIT_FORMAT else None
        except (ValueError, AttributeError):
            version = None
        if not isinstance(version, str) or not layout.is_version(version):
            log.warning("tile %s: replacing a tile with an unreadable marker", tile)
            return None
        return version

    def _lost(self, year: int, tile: str, version: str) -> None:
        """Another writer committed first: delete our unnamed version and raise CommitConflictError."""
        self.backend.delete_tree(layout.version_key(year, tile, version))
        try:
            winner = self.marker(year, tile) or {}
        except StoreIntegrityError:
            winner = {}
        current = winner.get("version")
        checkpoint = (winner.get("provenance") or {}).get("checkpoint_sha256")
        log.info("%s/%s: another writer committed %s first; discarded %s", year, tile, current, version)
        raise CommitConflictError(
            f"commit conflict in {year}: another writer committed version {current} (checkpoint {checkpoint}) "
            f"first; this write's version {version} was discarded",
            tile=tile,
            current_version=None if current is None else str(current),
            current_checkpoint_sha256=None if checkpoint is None else str(checkpoint),
        )

    def _set_current_hint(self, year: int, tile: str, version: str) -> None:
        """Record the current version in the tile group's attributes, for zarr/xarray browsing only."""
        attrs = {"tessera:tile": tile, "tessera:year": year, "tessera:current_version": version}
        self.backend.put_atomic(f"{layout.tile_key(year, tile)}/zarr.json", _group_json(attrs))

    def cleanup(
        self, year: int, tile: str, *, current: str | None = None, superseded: str | None = None
    ) -> list[str]:
        """Delete versions no marker names: `superseded` (the one a commit replaced) and debris past the grace period.

        Kept: the version the marker names now, `current` (the caller's own commit), every version
        younger than `cleanup_grace_s`, which may be another writer's write in progress, and every
        version a release names (learnt from a listing of `_releases/` made just before deleting).
        Returns the deleted version ids.
        """
        try:
            marker = self.marker(year, tile)
        except StoreIntegrityError:
            marker = None
        named = None if marker is None else str(marker.get("version"))
        if named is None and current is None:
            return []
        keep = {named, current}
        now = datetime.now(timezone.utc)
        stale = [
            name
            for name in self.backend.list_children(layout.tile_key(year, tile))
            if layout.is_version(name)
            and name not in keep
            and (name == superseded or (now - layout.version_time(name)).total_seconds() > self.cleanup_grace_s)
        ]
        kept = pins.pinned(self.backend, [layout.version_key(year, tile, name) for name in stale])
        if kept:
            log.info("kept %d superseded version(s) of %s/%s that a release names", len(kept), year, tile)
            stale = [name for name in stale if layout.version_key(year, tile, name) not in kept]
        for name in stale:
            self.backend.delete_tree(layout.version_key(year, tile, name))
        if stale:
            log.info("deleted %d unnamed version(s) of %s/%s", len(stale), year, tile)
        return stale

    # --- read ------------------------------------------------------------------------

    def marker(self, year: int, tile: str) -> dict[str, Any] | None:
        """The tile's commit marker, or None when the tile is not complete."""
        raw = self.backend.get(layout.marker_key(year, tile))
        if raw is None:
            return None
        try:
            marker: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise StoreIntegrityError(f"unreadable commit marker: {exc}", tile=tile) from exc
        if marker.get("format") != layout.COMMIT_FORMAT:
            raise StoreIntegrityError(f"commit marker has format {marker.get('format')!r}", tile=tile)
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

    # --- verify ----------------------------------------------------------------------

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


def write_encoded_tile(
    store_url: str,
    year: int,
    tile: str,
    embeddings: np.ndarray,
    scales: np.ndarray,
    *,
    epsg: int,
    transform: tuple[float, ...],
    provenance: Mapping[str, Any],
    model_attrs: Mapping[str, Any],
) -> CommitRecord:
    """Create the store if absent (root attributes from `model_attrs`), then write and commit one tile."""
    store = TileStore(store_url)
    store.create(model_attrs)
    return store.write_tile(year, tile, embeddings, scales, epsg=epsg, transform=transform, provenance=provenance)
