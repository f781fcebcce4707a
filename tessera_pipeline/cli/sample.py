"""`tessera-pipeline sample`: embeddings at points from a CSV or Parquet file, with a status per point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from tessera_pipeline.cli.outputs import check_output_files
from tessera_pipeline.errors import ArgumentError, StoreError

if TYPE_CHECKING:
    import pyarrow as pa

#: Accepted (longitude, latitude) column names, in order of preference.
COLUMNS = (("lon", "lat"), ("longitude", "latitude"), ("x", "y"))


def read_points(path: Path) -> tuple[np.ndarray, pa.Table]:
    """An (N, 2) lon/lat array from a CSV or Parquet file with lon/lat (or longitude/latitude) columns, and its table."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ArgumentError(f"--points {path}: no such file")
    if path.suffix.lower() in (".parquet", ".geoparquet"):  # on this thread: see store.manifest.read_manifest
        table = pq.read_table(path, use_threads=False)
    else:
        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False))
    names = {n.lower(): n for n in table.column_names}
    for lon, lat in COLUMNS:
        if lon in names and lat in names:
            xy = np.stack([np.asarray(table[names[c]].to_numpy(zero_copy_only=False), np.float64) for c in (lon, lat)], 1)
            return xy, table
    raise ArgumentError(f"--points {path}: needs lon and lat columns (or longitude/latitude), has {table.column_names}")


@click.command("sample")
@click.option("--store", "store_url", required=True, help="Store: a local path, s3://bucket/prefix or https:// URL.")
@click.option("--points", "points_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV or Parquet file with lon and lat columns (degrees, WGS84).")
@click.option("--year", type=click.IntRange(1000, 9999), required=True, help="Year of the embeddings.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file to write: the input columns plus status, tile, version and embedding.")
@click.option("--release", default=None, metavar="NAME", help="Read the versions of this release (no LIST needed).")
@click.option("--manifest", "manifest_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Read the versions this manifest file names.")
@click.option("--landmask", default="globe", show_default=True,
              help="Tells water from pending land: globe, none, or a tile list / GeoTIFF.")
@click.option("--int8", "quantised", is_flag=True, default=False,
              help="Write the int8 embedding and its scale instead of dequantised float32.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the status counts as one JSON document.")
def sample(store_url: str, points_path: Path, year: int, out: Path, release: str | None, manifest_path: Path | None,
           landmask: str, quantised: bool, overwrite: bool, as_json: bool) -> None:
    """Read the embedding at every point of a file, reading only the chunks that hold them.

    Each point gets a status: valid, water (not a land tile), no-observations (the tile has no data
    there), pending (a land tile not yet complete) or outside (not a valid coordinate). Rows without
    data hold NaN (or 0 and a NaN scale with --int8).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tessera_pipeline.read import open_reader

    check_output_files([out], "--out", overwrite=overwrite)
    if release is not None and manifest_path is not None:
        raise click.UsageError("choose one of --release and --manifest")
    xy, table = read_points(points_path)
    reader = open_reader(store_url, release=release, manifest=manifest_path, landmask=landmask)
    if release is None and manifest_path is None and reader.store.root_attrs() is None:
        raise StoreError(f"no store at {reader.store.url}")
    got = reader.sample_points(xy, year, dequantise=not quantised)
    dims = got.embeddings.shape[1]
    values = pa.array(got.embeddings.ravel(), pa.int8() if quantised else pa.float32())
    columns = {"status": pa.array(got.status.tolist(), pa.string()), "tile": pa.array(got.tile.tolist(), pa.string()),
               "version": pa.array(got.version.tolist(), pa.string()),
               "embedding": pa.FixedSizeListArray.from_arrays(values, dims)}
    if quantised:
        columns["scale"] = pa.array(got.scales, pa.float32())
    result = table.drop_columns([name for name in columns if name in table.column_names])
    for name, column in columns.items():
        result = result.append_column(name, column)
    pq.write_table(result, out)
    counts = got.counts()
    if as_json:
        click.echo(json.dumps({"points": len(xy), "out": str(out), "year": year, "statuses": counts}))
    else:
        click.echo(f"{len(xy)} points -> {out}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
