"""Writing the embedding store: versioned per-tile writes, a commit marker written last, fenced.

Arrays go into a fresh, immutable version group `{year}/{tile}/{version}`; once they are durable,
one small marker `_commits/{year}/{tile}.json` naming that version is put atomically *only if the
marker is still the one read* (`put_if`). A writer that lost that race deletes its own version and
raises CommitConflictError; a winner deletes the version it replaced and old debris, never a
version the marker names nor one younger than the cleanup grace period (a write in progress).
The protocol is specified in docs/formats.md section 5.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tessera_pipeline import __version__
from tessera_pipeline.errors import CommitConflictError, FencedError, StoreError, StoreIntegrityError
from tessera_pipeline.store import layout, pins
from tessera_pipeline.store.fencing import Fence
from tessera_pipeline.store.checksums import ALGORITHM, array_sha256
from tessera_pipeline.store.encoding import crs_attrs, encode_version, georef_attributes, group_json, plain_json
from tessera_pipeline.store.reader import TileReader
from tessera_pipeline.store.records import CommitMarker, check_model, own, root_attributes
from tessera_pipeline.store.results import CommitRecord, PriorMarker

log = logging.getLogger(__name__)

#: Seconds during which an uncommitted version is presumed to be a write in progress: cleanup
#: keeps it. Writes take seconds once encoded, so 15 minutes is far beyond any live writer.
CLEANUP_GRACE_S = 900.0


class TileWriter(TileReader):
    """The write side of a store: create it, write and commit tiles (fenced), clean up superseded versions.

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
        super().__init__(url)
        self.durable = durable
        self.cleanup_grace_s = float(cleanup_grace_s)
        self._hook = hook

    def _stage(self, name: str) -> None:
        """Call the test hook at a named stage of a write (crash tests); no-op normally."""
        if self._hook is not None:
            self._hook(name)

    def create(self, model_attrs: Mapping[str, Any]) -> dict[str, Any]:
        """Create the root if absent; if present (or created by a racing writer), check it is the same model."""
        wanted = root_attributes(model_attrs)
        existing = self.root_attrs()
        if existing is None:
            if self.backend.put_if("zarr.json", group_json(wanted), tag=None):
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
        """Apply the model-compatibility rule (`records.check_model`) to two root attribute dicts."""
        check_model(self.url, existing[own("model")], wanted[own("model")])

    def _ensure_group(self, key: str, attributes: Mapping[str, Any]) -> None:
        """Write a group's zarr.json if it is absent (same bytes from every writer, so races are benign)."""
        if self.backend.get(f"{key}/zarr.json") is None:
            self.backend.put_atomic(f"{key}/zarr.json", group_json(attributes))

    def prior_marker(self, year: int, tile: str, fence: Fence | None = None) -> PriorMarker:
        """The tile's marker as it is before encoding starts: what the commit will be conditional on.

        With a `fence`, a marker written under a newer lease generation is refused now (FencedError), before
        any encoding is spent on a write that could never commit.
        """
        found = self.backend.get_tagged(layout.marker_key(year, tile))
        if found is None:
            return PriorMarker(None, None, None)
        version, generation = self._marker_fields(tile, found[0])
        if fence is not None:
            fence.admits_marker(generation, year=year, tile=tile)
        return PriorMarker(found[1], version, generation)

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
        prior: PriorMarker | None = None,
        fence: Fence | None = None,
    ) -> CommitRecord:
        """Write one tile into a fresh version, commit it with a fenced marker, then drop the version it replaced.

        The marker put is conditional on `prior`, the marker read before the tile was encoded (read now when
        not given), so a commit made by anyone meanwhile is never replaced by this older work: that raises
        CommitConflictError (after deleting this write's version). With a `fence`, the store's lease is checked
        just before the marker put and the marker records the fence's generation (FencedError when refused).
        """
        t0 = time.perf_counter()
        root = self.root_attrs()
        if root is None:
            raise StoreError(f"no store at {self.url}: create it first (write_encoded_tile does)", tile=tile)
        model = root[own("model")]
        emb, sc, transform6 = self._check_inputs(tile, embeddings, scales, transform, int(model["dimensions"]))
        height, width, dims = emb.shape
        epsg = int(epsg)

        self._ensure_group(layout.year_key(year), {own("year"): year})
        self._ensure_group(layout.tile_key(year, tile), {own("tile"): tile, own("year"): year})
        mkey = layout.marker_key(year, tile)
        if prior is None:
            prior = self.prior_marker(year, tile, fence)
        elif fence is not None:
            fence.admits_marker(prior.generation, year=year, tile=tile)
        replaced_version = prior.version
        version = layout.new_version(after=replaced_version)
        vkey = layout.version_key(year, tile, version)
        prov = plain_json(
            {
                "checkpoint_sha256": model.get("checkpoint_sha256"),
                "model_version": model.get("model_version"),
                "pipeline_version": __version__,
                **dict(provenance or {}),
            }
        )
        checksums = {layout.EMBEDDINGS: array_sha256(emb), layout.SCALES: array_sha256(sc)}
        objects = encode_version(
            emb,
            sc,
            group_attrs={
                own("tile"): tile,
                own("year"): year,
                own("version"): version,
                **georef_attributes(epsg, transform6, height, width),
                own("provenance"): prov,
                own("model"): model,
            },
            crs_attrs=crs_attrs(epsg, transform6),
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
        marker = CommitMarker.build(
            format=layout.COMMIT_FORMAT,
            year=year,
            tile=tile,
            version=version,
            path=vkey,
            committed_at=datetime.now(timezone.utc).isoformat(),
            epsg=epsg,
            transform=list(transform6),
            shape=[height, width, dims],
            checksum_algorithm=ALGORITHM,
            arrays={
                layout.EMBEDDINGS: {"dtype": "int8", "shape": [height, width, dims], "sha256": checksums[layout.EMBEDDINGS]},
                layout.SCALES: {"dtype": "float32", "shape": [height, width], "sha256": checksums[layout.SCALES]},
            },
            provenance=prov,
            store_write_s=round(write_s, 4),
            **({} if fence is None else {"lease_generation": fence.generation}),
        )
        body = json.dumps(marker.document(), indent=1, sort_keys=True, allow_nan=False).encode()
        if fence is not None:
            try:
                fence.check(self.backend, year=year, tile=tile)
            except FencedError:
                self.backend.delete_tree(vkey)
                raise
        if not self.backend.put_if(mkey, body, tag=prior.tag):
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
    def _marker_fields(tile: str, raw: bytes) -> tuple[str | None, int | None]:
        """The version a marker's bytes name (None when unreadable: a rewrite repairs it) and the lease
        generation it was committed under (None for markers written without a fence)."""
        try:
            marker = json.loads(raw)
            ok = marker.get("format") == layout.COMMIT_FORMAT
            version, generation = (marker.get("version"), marker.get("lease_generation")) if ok else (None, None)
        except (ValueError, AttributeError):
            version, generation = None, None
        if not isinstance(version, str) or not layout.is_version(version):
            log.warning("tile %s: replacing a tile with an unreadable marker", tile)
            version = None
        return version, generation if isinstance(generation, int) else None

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
        attrs = {own("tile"): tile, own("year"): year, own("current_version"): version}
        self.backend.put_atomic(f"{layout.tile_key(year, tile)}/zarr.json", group_json(attrs))

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
