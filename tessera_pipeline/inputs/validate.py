"""Validate a d-pixel tile the way a broken upstream stage would break it, each failure a typed error.

Checks read .npy headers and the small day-of-year vectors only; the large arrays stay memory-mapped,
and the one scan over data (NaN/inf in a float array) runs in bounded chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tessera_pipeline.errors import (
    CorruptFileError,
    DoyError,
    DtypeError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
)
from tessera_pipeline.grid import TileGeometry

#: Bytes of a float array examined at a time when scanning for NaN/inf.
SCAN_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ArraySpec:
    """What upstream writes for one file: dtype (None = any integer), rank, size of the last axis."""

    dtype: type[np.generic] | None
    ndim: int
    last: int | None = None


#: The seven d-pixel arrays (key = file name without .npy). DOY vectors: any integer dtype
#: (upstream writes uint16 for S2 and int16 for S1).
SPECS: dict[str, ArraySpec] = {
    "bands": ArraySpec(np.uint16, 4, 10),
    "masks": ArraySpec(np.uint8, 3),
    "doys": ArraySpec(None, 1),
    "sar_ascending": ArraySpec(np.int16, 4, 2),
    "sar_ascending_doy": ArraySpec(None, 1),
    "sar_descending": ArraySpec(np.int16, 4, 2),
    "sar_descending_doy": ArraySpec(None, 1),
}

#: (data array, time-length siblings) whose first axes must agree.
TIME_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bands", ("masks", "doys")),
    ("sar_ascending", ("sar_ascending_doy",)),
    ("sar_descending", ("sar_descending_doy",)),
)
SPATIAL = ("bands", "masks", "sar_ascending", "sar_descending")
DOYS = ("doys", "sar_ascending_doy", "sar_descending_doy")


def open_npy(path: Path, *, tile: str, file: str | None = None) -> np.ndarray:
    """Memory-map an .npy file after checking its magic, header and length; typed errors otherwise."""
    label = file or str(path)
    if not path.is_file():
        raise MissingFileError("missing file", tile=tile, file=label)
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise CorruptFileError(f"not a valid .npy file ({exc})", tile=tile, file=label) from exc
    if dtype.hasobject:
        raise DtypeError(f"dtype {dtype} holds Python objects, expected a numeric array", tile=tile, file=label)
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise CorruptFileError(f"truncated: {size} bytes, header says {expected}", tile=tile, file=label)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")


def _has_nonfinite(array: np.ndarray) -> int:
    """Count NaN/inf values of a float array, scanning along the first axis in bounded chunks."""
    if array.ndim == 0 or array.size == 0:
        return int(np.count_nonzero(~np.isfinite(array)))
    row_bytes = max(array.nbytes // max(array.shape[0], 1), 1)
    step = max(SCAN_CHUNK_BYTES // row_bytes, 1)
    return sum(
        int(np.count_nonzero(~np.isfinite(array[i : i + step]))) for i in range(0, array.shape[0], step)
    )


def check_dtype_and_rank(arrays: dict[str, np.ndarray], *, tile: str, files: dict[str, str]) -> None:
    """Every array has upstream's dtype and rank; a float array is scanned for NaN/inf first."""
    for key, spec in SPECS.items():
        array = arrays[key]
        file = files[key]
        if array.dtype.kind in "fc":
            bad = _has_nonfinite(array)
            if bad:
                raise NonFiniteError(f"{bad} NaN or infinite values", tile=tile, file=file)
        if spec.dtype is None:
            if array.dtype.kind not in "iu":
                raise DtypeError(f"dtype {array.dtype}, expected an integer day of year", tile=tile, file=file)
        elif array.dtype != np.dtype(spec.dtype):
            raise DtypeError(f"dtype {array.dtype}, expected {np.dtype(spec.dtype)}", tile=tile, file=file)
        if array.ndim != spec.ndim:
            raise ShapeMismatchError(
                f"shape {array.shape} has {array.ndim} dimensions, expected {spec.ndim}", tile=tile, file=file
            )
        if spec.last is not None and array.shape[-1] != spec.last:
            raise ShapeMismatchError(
                f"shape {array.shape}: last axis {array.shape[-1]}, expected {spec.last}", tile=tile, file=file
            )


def check_time_lengths(arrays: dict[str, np.ndarray], *, tile: str, files: dict[str, str]) -> None:
    """T agrees between each stream's data, masks and day-of-year vector (an empty orbit is T = 0)."""
    for data, siblings in TIME_GROUPS:
        t = arrays[data].shape[0]
        for other in siblings:
            if arrays[other].shape[0] != t:
                raise ShapeMismatchError(
                    f"{arrays[other].shape[0]} time steps but {files[data]} has {t}", tile=tile, file=files[other]
                )


def check_spatial(
    arrays: dict[str, np.ndarray], *, tile: str, files: dict[str, str], shape: tuple[int, int] | None
) -> None:
    """H and W agree between streams and, when known, with the tile's geometry."""
    ref_key = "bands"
    ref = tuple(arrays[ref_key].shape[1:3])
    if shape is not None and ref != tuple(shape):
        raise ShapeMismatchError(
            f"height x width {ref[0]} x {ref[1]}, but the tile geometry is {shape[0]} x {shape[1]}",
            tile=tile,
            file=files[ref_key],
        )
    for key in SPATIAL[1:]:
        hw = tuple(arrays[key].shape[1:3])
        if hw != ref:
            raise ShapeMismatchError(
                f"height x width {hw[0]} x {hw[1]}, but {files[ref_key]} has {ref[0]} x {ref[1]}",
                tile=tile,
                file=files[key],
            )


def check_doys(arrays: dict[str, np.ndarray], *, tile: str, files: dict[str, str]) -> None:
    """Day-of-year values lie in 1..366 and are sorted by date."""
    for key in DOYS:
        doys = np.asarray(arrays[key], dtype=np.int64)
        if doys.size == 0:
            continue
        out = (doys < 1) | (doys > 366)
        if np.any(out):
            i = int(np.flatnonzero(out)[0])
            raise DoyError(f"day of year {doys[i]} at index {i} is outside 1..366", tile=tile, file=files[key])
        down = np.flatnonzero(np.diff(doys) < 0)
        if down.size:
            i = int(down[0])
            raise DoyError(
                f"days of year not sorted: {doys[i]} then {doys[i + 1]} at index {i + 1}", tile=tile, file=files[key]
            )


def validate_arrays(
    arrays: dict[str, np.ndarray],
    *,
    tile: str,
    files: dict[str, str] | None = None,
    shape: tuple[int, int] | None = None,
) -> None:
    """Run every check on a tile's seven arrays; `shape` is (H, W) from the tile geometry when known."""
    names = files or {key: f"{key}.npy" for key in SPECS}
    missing = [key for key in SPECS if key not in arrays]
    if missing:
        raise MissingFileError("missing file", tile=tile, file=names.get(missing[0], f"{missing[0]}.npy"))
    check_dtype_and_rank(arrays, tile=tile, files=names)
    check_time_lengths(arrays, tile=tile, files=names)
    check_spatial(arrays, tile=tile, files=names, shape=shape)
    check_doys(arrays, tile=tile, files=names)


def read_roi_geometry(
    path: Path, *, tile: str, file: str | None = None, lon: float = float("nan"), lat: float = float("nan")
) -> TileGeometry:
    """The georeference a tile directory's `roi.tiff` declares (CRS, size, transform)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            epsg = src.crs.to_epsg() if src.crs is not None else None
            transform = tuple(float(v) for v in src.transform[:6])
            height, width = int(src.height), int(src.width)
    except rasterio.errors.RasterioIOError as exc:
        raise CorruptFileError(f"not a readable GeoTIFF ({exc})", tile=tile, file=file or str(path)) from exc
    return TileGeometry(
        name=tile,
        lon=lon,
        lat=lat,
        epsg=int(epsg or 0),
        height=height,
        width=width,
        transform=transform,  # type: ignore[arg-type]
    )
