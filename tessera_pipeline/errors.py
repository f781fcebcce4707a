"""Typed errors. Each names the tile (when known), the file or key, and the cause.

The CLI turns any `TesseraError` into a one-line message and exit code 2; the run layer
records it against the tile and moves on. Layers add subclasses here, one per failure kind.
"""

from __future__ import annotations


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
