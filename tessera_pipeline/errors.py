"""Typed errors. Each names the tile (when known), the file or key, and the cause.

The CLI turns any `TesseraError` into a one-line message and exit code 2; the run layer
records it against the tile and moves on. Layers add subclasses here, one per failure kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class TesseraError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    def __init__(self, message: str, *, tile: str | None = None) -> None:
        self.tile = tile
        super().__init__(f"tile {tile}: {message}" if tile else message)


# --- model / checkpoint ---------------------------------------------------------------


class CheckpointError(TesseraError):
    """A checkpoint cannot be read, or does not fit the architecture (missing/misshapen key)."""


# --- inputs ---------------------------------------------------------------------------


class InputError(TesseraError):
    """A tile's d-pixel input is unusable. `file` is the offending file, `problem` the cause."""

    def __init__(self, problem: str, *, tile: str | None = None, file: str | None = None) -> None:
        self.file = file
        self.problem = problem
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{problem}", tile=tile)


# --- encode ---------------------------------------------------------------------------


class EncodeError(TesseraError):
    """Encoding failed for a reason other than bad input or a bad checkpoint."""


# --- grid / region --------------------------------------------------------------------


class RegionError(TesseraError):
    """A region selection is invalid or selects nothing."""


# --- store ----------------------------------------------------------------------------


class StoreError(TesseraError):
    """The embedding store cannot be read or written."""


# --- inputs: one subclass per way a broken upstream stage shows up ------------------------


class MissingFileError(InputError):
    """A d-pixel file (or object) that must exist does not."""


class CorruptFileError(InputError):
    """A file is not a readable .npy (bad magic, bad header, truncated) or not a readable GeoTIFF."""


class DtypeError(InputError):
    """An array has the wrong dtype (e.g. float where upstream writes uint16)."""


class ShapeMismatchError(InputError):
    """An array's rank, time length, height or width disagrees with its siblings or the tile geometry."""


class DoyError(InputError):
    """Day-of-year values outside 1..366 or not sorted by date."""


class NonFiniteError(InputError):
    """An array holds NaN or infinity."""


class RemoteInputError(InputError):
    """An object store could not be read after retries (network, permissions, throttling)."""


class GeoreferenceError(InputError):
    """The input's own georeference (roi.tiff, directory name) disagrees with the tile it is encoded as."""


# --- grid / region: subclasses ----------------------------------------------------------


class TileNameError(RegionError):
    """A tile name or centre is not on the 0.1 degree grid."""


class LandMaskError(RegionError):
    """A land-mask source cannot be read or is not a usable mask."""


class RegionFileError(RegionError):
    """A region file (GeoJSON) cannot be read or holds no usable polygon."""


class EmptySelectionError(RegionError):
    """A region selects no land tile."""


# --- store: subclasses -------------------------------------------------------------------


class TileNotCompleteError(StoreError):
    """A tile was asked for that has no commit marker: it was never written, or not finished."""


class StoreConflictError(StoreError):
    """A store's root describes a different model or format than the one being written."""


class CommitConflictError(StoreConflictError):
    """Another writer committed the tile first: this write's version was discarded, its marker not written.

    `current_version` and `current_checkpoint_sha256` describe the winning commit (None when its
    marker could not be read), so a caller can tell "the same checkpoint already wrote this tile"
    from a real conflict. Both survive pickling (Ray carries worker errors to the driver).
    """

    def __init__(
        self,
        message: str,
        *,
        tile: str | None = None,
        current_version: str | None = None,
        current_checkpoint_sha256: str | None = None,
    ) -> None:
        self.current_version = current_version
        self.current_checkpoint_sha256 = current_checkpoint_sha256
        super().__init__(message, tile=tile)


class FencedError(StoreConflictError):
    """A commit refused by the store's lease: a newer driver holds it, or this driver's lease lapsed.

    The writer's version is discarded and no marker is written; the driver that dispatched the tile has
    been (or may be about to be) replaced, so it must stop, not retry.
    """


class StoreIntegrityError(StoreError):
    """A committed tile's data does not match its commit marker (checksum, shape or dtype)."""


class StoreUnreachableError(StoreError):
    """An object store did not answer within the bounded retries and time budget."""


class ReleaseError(StoreError):
    """A release (`_releases/NAME.parquet`) cannot be made, read or dropped; the message names it."""


class ReleaseExistsError(ReleaseError):
    """A release of that name exists already: releases are immutable (drop it first)."""


class ReleaseNotFoundError(ReleaseError):
    """No release of that name is in the store."""


# --- publish ------------------------------------------------------------------------------


class PublishError(TesseraError):
    """A release or zone store cannot be published (STAC): the message names the release, group or field."""


# --- command line: outputs and argument values ----------------------------------------------


class OutputError(TesseraError):
    """An output location is unusable: it exists (without --overwrite), its folder is missing, or it is a URL."""


class ArgumentError(TesseraError, ValueError):
    """A command-line value is malformed or out of range (a size, a box)."""


# --- run ----------------------------------------------------------------------------------


class ConfigError(TesseraError):
    """A run configuration (flags or file) has an unknown key or a bad value."""


class RunError(TesseraError):
    """A run cannot start or go on (no cluster, no usable node, a store that holds no run)."""


def _location(err: dict[str, Any]) -> str:
    """A pydantic error's location as a dotted key."""
    return ".".join(str(p) for p in err.get("loc", ())) or "(top level)"


def format_validation_error(exc: ValidationError, source: str, *, prefix: str = "") -> str:
    """One line naming the first offending key (under `prefix`, for a nested part validated alone) and why."""
    first = exc.errors()[0]
    key = f"{prefix}.{_location(dict(first))}" if prefix else _location(dict(first))
    if first.get("type") == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {key}: {first.get('msg')}{more}"
