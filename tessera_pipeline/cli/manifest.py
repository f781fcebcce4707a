"""`tessera-pipeline manifest`: the committed tiles as GeoParquet, to a file or as an immutable release in the store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tessera_pipeline.cli.outputs import check_output_files
from tessera_pipeline.errors import StoreError


@click.command("manifest")
@click.option("--store", "store_url", required=True, help="Store: a local path or s3://bucket/prefix.")
@click.option("--year", type=click.IntRange(1000, 9999), default=None, help="Only this year (default: every year).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the manifest here (GeoParquet, a local path).")
@click.option("--release", "release", default=None, metavar="NAME",
              help="Also keep it in the store as the immutable release _releases/NAME.parquet: the versions it "
                   "names survive reprocess until the release is dropped.")
@click.option("--drop-release", "drop", default=None, metavar="NAME",
              help="Delete release NAME and the superseded versions only it kept (past the cleanup grace period).")
@click.option("--overwrite", is_flag=True, default=False, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON document on stdout.")
def manifest(store_url: str, year: int | None, out: Path | None, release: str | None, drop: str | None,
             overwrite: bool, as_json: bool) -> None:
    """List every committed tile (one row per tile and year) from the commit markers: bbox geometry, CRS,
    transform, shape, version, checksums, model, checkpoint and provenance, as GeoParquet.

    A tile whose version lacks an object is left out and reported (exit code 1). Needs --out, --release
    or --drop-release (alone).
    """
    from tessera_pipeline.store import TileStore, layout
    from tessera_pipeline.store.manifest import build_manifest
    from tessera_pipeline.store.releases import drop_release, write_release

    if drop is not None and (out is not None or release is not None or year is not None):
        raise click.UsageError("--drop-release goes alone (no --out, --release or --year)")
    if drop is None and out is None and release is None:
        raise click.UsageError("choose an output: --out FILE.parquet and/or --release NAME (or --drop-release NAME)")
    for name in (release, drop):
        if name is not None:
            layout.check_release(name)
    if out is not None:
        check_output_files([out], "--out", overwrite=overwrite)
    store = TileStore(store_url)
    if store.root_attrs() is None:
        raise StoreError(f"no store at {store.url}")
    if drop is not None:
        deleted = drop_release(store, drop)
        click.echo(json.dumps({"dropped": drop, "deleted_versions": deleted}) if as_json
                   else f"dropped release {drop}; deleted {len(deleted)} superseded version(s) only it kept")
        return
    built = build_manifest(store, year)
    if out is not None:
        out.write_bytes(built.to_parquet())
    key = write_release(store, release, built) if release is not None else None
    if as_json:
        click.echo(json.dumps({"store": store.url, "year": year, "tiles": len(built), "out": None if out is None
                               else str(out), "release": key, "left_out": [t.to_dict() for t in built.left_out]},
                              indent=2))
    else:
        for t in built.left_out:
            click.echo(f"LEFT OUT {t.year}/{t.tile}: {t.problem}")
        where = ", ".join(str(w) for w in (out, key and f"{store.url}/{key}") if w)
        click.echo(f"{len(built):,} tile(s) in the manifest ({where}), {len(built.left_out)} left out")
    if built.left_out:
        sys.exit(1)
