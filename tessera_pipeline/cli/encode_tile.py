"""`tessera-pipeline encode-tile`: encode one d-pixel tile to upstream-named .npy files or into a store."""

from __future__ import annotations

from pathlib import Path

import click

from tessera_pipeline.cli.console import make_console, progress
from tessera_pipeline.cli.model_options import encoder_options
from tessera_pipeline.cli.outputs import check_output_dir, check_output_files
from tessera_pipeline.encode.setup import build_encoder, model_attributes, provenance
from tessera_pipeline.encode.upstream_files import upstream_filenames, write_upstream_files
from tessera_pipeline.errors import OutputError, StoreConflictError, TileNameError
from tessera_pipeline.grid import parse_tile_name
from tessera_pipeline.inputs.dpixel import check_input_name, georeference_for, open_tile, tile_directory_name
from tessera_pipeline.precision import DEVICE_MEMORY_BUDGET
from tessera_pipeline.store.records import own


@click.command("encode-tile")
@click.option("--checkpoint", required=True, help="Checkpoint: a path, s3://bucket/key or https:// URL (upstream format).")
@click.option("--input", "input_dir", required=True, help="d-pixel tile directory (local path or s3://...).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write upstream-named .npy files here (<name>_emb128_int8.npy ... for v1.1, <name>.npy ... for v1.0).")
@click.option("--store", default=None, help="Write into this Zarr embedding store (path or s3://) with a crash-safe commit.")
@click.option("--year", type=click.IntRange(1000, 9999), default=None, help="Year of the tile (with --store only).")
@click.option("--tile", "tile_name", default=None,
              help="Grid tile name, e.g. grid_-1.55_53.25 (default: the input directory's name); must agree with "
              "the input's roi.tiff or directory name. Names the --out files too.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace existing --out files, or a tile already complete in --store.")
@encoder_options
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda or cuda:N; auto: the first GPU if torch sees one, else the CPU.")
@click.option("--device-budget-gb", type=click.FloatRange(min=0.0), default=DEVICE_MEMORY_BUDGET / 2**30, show_default=True,
              help="GPU: device memory (GiB) a tile streams through in blocks; 0: hold the whole tile (same bytes either way).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow pickled Python objects in the checkpoint (only for files you trust).")
def encode_tile(
    checkpoint: str,
    input_dir: str,
    out_dir: Path | None,
    store: str | None,
    year: int | None,
    tile_name: str | None,
    model_version: str | None,
    data_source: str | None,
    precision: str | None,
    batch_size: int | None,
    threads: int | None,
    seed: int,
    device: str,
    device_budget_gb: float,
    trust_checkpoint: bool,
    overwrite: bool,
) -> None:
    """Encode one tile with a Tessera checkpoint.

    Give --out for upstream's file layout, --store (with --year) for the embedding store, or both.
    Everything that can be checked is checked before the first pixel is encoded: arguments, the
    input and its georeference against --tile, the checkpoint, the store's model and data source,
    and existing outputs (refused unless --overwrite).
    """
    if out_dir is None and store is None:
        raise click.UsageError("give --out DIR, --store STORE, or both")
    if store is not None and year is None:
        raise click.UsageError("--store needs --year")
    if year is not None and store is None:
        raise click.UsageError("--year applies to --store only")
    if out_dir is not None:
        check_output_dir(out_dir, "--out")
    name = tile_name or tile_directory_name(input_dir)
    if tile_name is not None:
        parse_tile_name(tile_name)
        check_input_name(input_dir, tile_name)
    elif store is not None:
        try:
            parse_tile_name(name)
        except TileNameError as exc:
            raise TileNameError(f"the input directory {name!r} is not a grid tile name: pass --tile grid_LON_LAT") from exc
    tile_store = None
    if store is not None and year is not None:
        from tessera_pipeline.store import TileStore

        tile_store = TileStore(store)
        root = tile_store.root_attrs()
        if root is not None and model_version is not None and root[own("model")].get("model_version") != model_version:
            raise StoreConflictError(
                f"{tile_store.url} holds model_version={root[own('model')].get('model_version')!r}, "
                f"refusing to add {model_version!r}"
            )
        if tile_store.is_complete(year, name) and not overwrite:
            raise OutputError(f"{year}/{name} is already complete in {tile_store.url}; pass --overwrite to replace it")
    console = make_console(stderr=True)
    tile = open_tile(input_dir, name=name)
    geometry = georeference_for(tile, name, file=input_dir) if tile_store is not None or tile_name else tile.geometry
    encoder, hw = build_encoder(
        checkpoint, version=model_version, data_source=data_source, precision=precision,  # type: ignore[arg-type]
        batch_size=batch_size, threads=threads, seed=seed, device=device, trust_checkpoint=trust_checkpoint,
        device_budget=int(device_budget_gb * 2**30) or None,
    )
    if out_dir is not None:
        check_output_files([out_dir / f for f in upstream_filenames(encoder.version, name)], "--out", overwrite=overwrite)
    if tile_store is not None:
        tile_store.check_compatible(model_attributes(encoder))
    console.print(
        f"[bold]{tile.name}[/]: {tile.height} x {tile.width} px, model {encoder.version} "
        f"(checkpoint {encoder.loaded.checkpoint_sha256[:12]}), {encoder.settings.precision} on {hw.kind}"
    )
    with progress(console, "encoding", tile.n_pixels) as advance:
        encoded = encoder.encode(tile, progress=advance)
    s = encoded.stats
    console.print(f"encoded in {s.total_s:.1f} s ({1e3 * s.total_s / max(s.pixels, 1):.2f} ms/px, {s.flops / max(s.total_s, 1e-9) / 1e9:.0f} GFLOP/s)")
    if out_dir is not None:
        emb_path, scales_path = write_upstream_files(encoded, out_dir, encoder.version)
        click.echo(f"wrote {emb_path} and {scales_path}")
    if store is not None and year is not None and geometry is not None:
        from tessera_pipeline.store import write_encoded_tile

        record = write_encoded_tile(
            store, year, name, encoded.embeddings, encoded.scales,
            epsg=geometry.epsg, transform=tuple(geometry.transform),
            provenance=provenance(encoder, hw, tile, encoded), model_attrs=model_attributes(encoder),
        )
        click.echo(f"committed {year}/{name} to {store} (version {record.version}, write {record.write_s:.2f} s)")
