"""`tessera-pipeline stac`: a release as a STAC Collection and stac-geoparquet items (one per tile, one per zone)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from tessera_pipeline.cli.outputs import check_output_dir, check_output_files
from tessera_pipeline.errors import OutputError, StoreError


@click.command("stac")
@click.option("--store", "store_url", required=True, help="Store: a local path or s3://bucket/prefix.")
@click.option("--release", "release", required=True, metavar="NAME",
              help="The release to publish (`manifest --release NAME` made it): one item per tile it names.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for collection.json, items.parquet (and zones.parquet); a local path.")
@click.option("--zones-store", "zones_url", default=None, metavar="ZONES.zarr",
              help="A zone mosaic store (geotessera layout): one item per utmZZ group that records "
                   "spatial:transform and spatial:shape, in zones.parquet.")
@click.option("--collection-id", default=None,
              help="The Collection's id (default: tessera-{model_version}-{release}).")
@click.option("--license", "license_", required=True, metavar="SPDX-ID|other",
              help="The Collection's license: an SPDX identifier (e.g. CC-BY-4.0; linked to its text on spdx.org), "
                   "or `other` with --license-url.")
@click.option("--license-url", default=None, metavar="URL",
              help="The license text's URL (the Collection's `license` link); needed with --license other.")
@click.option("--href-base", default=None, metavar="URL",
              help="Write asset hrefs under this URL instead of --store (the address readers use, e.g. https://).")
@click.option("--overwrite", is_flag=True, default=False,
              help="Write into a non-empty --out: replaces collection.json and items.parquet, and zones.parquet "
                   "(removed when --zones-store is not given); nothing else in it is touched.")
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON document on stdout.")
def stac(store_url: str, release: str, out: Path, zones_url: str | None, collection_id: str | None,
         license_: str, license_url: str | None, href_base: str | None, overwrite: bool, as_json: bool) -> None:
    """Publish a release as STAC: a Collection (collection.json) and one Item per tile as stac-geoparquet
    (items.parquet), with the proj: and emb: extensions, array checksums and model provenance.

    With --zones-store, also one Item per UTM-zone mosaic group (zones.parquet). Fields and validation:
    docs/reading.md, "Publishing a year: STAC".
    """
    from tessera_pipeline.publish.stac import (
        COLLECTION_FILE,
        ITEMS_FILE,
        ZONES_FILE,
        default_collection_id,
        publish,
        zone_mosaics,
    )
    from tessera_pipeline.publish.stac_license import license_fields
    from tessera_pipeline.store import TileStore, layout
    from tessera_pipeline.store.releases import read_release

    layout.check_release(release)
    if license_.strip().lower() == "other" and not license_url:
        raise click.UsageError("--license other needs --license-url URL (the license text), or give an SPDX "
                               "identifier such as CC-BY-4.0")
    license_fields(license_, license_url)  # an identifier SPDX does not know is refused before anything is written
    folder = check_output_dir(out, "--out")
    if folder.is_dir() and any(os.scandir(folder)) and not overwrite:
        raise OutputError(f"--out {out}: folder is not empty; choose another folder, or pass --overwrite to replace "
                          f"{COLLECTION_FILE}, {ITEMS_FILE} and {ZONES_FILE} in it")
    check_output_files([folder / n for n in (COLLECTION_FILE, ITEMS_FILE, ZONES_FILE)], "--out", overwrite=True)
    store = TileStore(store_url)
    root = store.root_attrs()
    if root is None:
        raise StoreError(f"no store at {store.url}")
    table = read_release(store, release)
    zones = None
    if zones_url is not None:
        zones = zone_mosaics(zones_url, table["year"].to_pylist())
    folder.mkdir(exist_ok=True)
    if zones is None:
        (folder / ZONES_FILE).unlink(missing_ok=True)
    summary = publish(table, folder, store_url=store.url, root=root, release_name=release,
                      collection_id=collection_id or default_collection_id(root, release), license=license_,
                      license_url=license_url, href_base=href_base, zones=zones)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        zones_text = f", {summary['zones']} zone item(s) in {summary['zones_file']}" if zones is not None else ""
        click.echo(f"collection {summary['collection_id']}: {summary['tiles']:,} tile item(s) in {summary['items']}"
                   f"{zones_text}; {summary['collection']}")
