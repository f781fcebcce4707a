"""Encoding of one tile version: its zarr v3 objects in memory, group documents, CRS attributes, plain JSON.

Pure functions of the arrays and their georeference (no I/O): the write path (`commit.py`) uploads
what `encode_version` returns. The layout they produce is specified in docs/formats.md section 3.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera_pipeline.errors import StoreError
from tessera_pipeline.store import layout
from tessera_pipeline.store.records import own

#: Chunking chosen by measurement (docs/formats.md, "Chunking and compression").
EMBEDDING_CHUNK = 128
SCALES_NODATA = float("nan")


def json_default(value: Any) -> Any:
    """JSON for numpy scalars/arrays and paths, which provenance dicts often hold."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def plain_json(value: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a dict with only JSON types (numpy scalars become numbers)."""
    try:
        plain: dict[str, Any] = json.loads(json.dumps(value, default=json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"provenance is not plain JSON: {exc}") from exc
    return plain


def group_json(attributes: Mapping[str, Any]) -> bytes:
    """A zarr v3 group metadata document (zarr.json)."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False).encode()


def crs_attrs(epsg: int, transform: tuple[float, ...]) -> dict[str, Any]:
    """CF grid-mapping attributes plus GDAL's GeoTransform, so xarray/rioxarray/GDAL see the CRS."""
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    a, b, c, d, e, f = transform
    attrs: dict[str, Any] = dict(crs.to_cf())
    wkt = crs.to_wkt()
    attrs.update(crs_wkt=wkt, spatial_ref=wkt, GeoTransform=f"{c!r} {a!r} {b!r} {f!r} {d!r} {e!r}")
    attrs["proj:code"] = f"EPSG:{epsg}"
    return attrs


#: Revisions of the registered `proj:` and `spatial:` conventions stamped in `zarr_conventions` (geotessera 0.11.0's).
CONVENTION_REVISION = "r3"


def georef_attributes(epsg: int, transform: tuple[float, ...], height: int, width: int) -> dict[str, Any]:
    """A raster group's `proj:` and `spatial:` attributes with their `zarr_conventions` registrations, written through
    zarr-cm exactly as geotessera writes its zone groups (pixel-corner affine transform, GDAL order)."""
    from zarr_cm import create_many, proj, spatial

    a, _b, c, _d, e, f = transform
    xs, ys = (c, c + a * width), (f, f + e * height)
    return create_many({
        "spatial": spatial.create(revision=CONVENTION_REVISION, dimensions=["y", "x"],
                                  bbox=[min(xs), min(ys), max(xs), max(ys)], transform_type="affine",
                                  transform=[float(v) for v in transform], shape=[int(height), int(width)],
                                  registration="pixel"),
        "proj": proj.create(revision=CONVENTION_REVISION, code=f"EPSG:{int(epsg)}"),
    })


def encode_version(
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
            own("dequantise"): "embeddings.astype(float32) * scales[..., None]",
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
