"""`tessera-pipeline encode-tile`: encode one d-pixel tile to upstream-named .npy files or into a store."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tessera_pipeline.cli.model_options import encoder_options
from tessera_pipeline.encode.setup import build_encoder, model_attributes, provenance
from tessera_pipeline.encode.upstream_files import write_upstream_files
from tessera_pipeline.errors import InputError
from tessera_pipeline.grid import tile_geometry
from tessera_pipeline.inputs.dpixel import open_tile


@click.command("encode-tile")
@click.option("--checkpoint", required=True, help="Checkpoint: a path, s3://bucket/key or https:// URL (upstream format).")
@click.option("--input", "input_dir", required=True, help="d-pixel tile directory (local path or s3://...).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write upstream-named .npy files here (<name>_emb128_int8.npy ... for v1.1, <name>.npy ... for v1.0).")
@click.option("--store", default=None, help="Write into this Zarr embedding store (path or s3://) with a crash-safe commit.")
@click.option("--year", type=int, default=None, help="Year of the tile (with --store).")
@click.option("--tile", "tile_name", default=None, help="Grid tile name, e.g. grid_-1.55_53.25 (with --store; default: the input directory's name).")
@encoder_options
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
    batch_size: int,
    threads: int | None,
    seed: int,
    trust_checkpoint: bool,
) -> None:
    """Encode one tile with a Tessera checkpoint.

    Give --out for upstream's file layout, --store (with --year) for the embedding store, or both.
    """
    if out_dir is None and store is None:
        raise click.UsageError("give --out DIR, --store STORE, or both")
    if store is not None and year is None:
        raise click.UsageError("--store needs --year")
    console = Console(stderr=True)
    tile = open_tile(input_dir)
    geometry = tile.geometry
    if store is not None:
        name = tile_name or tile.name
        geometry = geometry or tile_geometry(name)
        if (geometry.height, geometry.width) != (tile.height, tile.width):
            raise InputError(
                f"arrays are {tile.height} x {tile.width} but {name} is {geometry.height} x {geometry.width}",
                tile=name, file=input_dir,
            )
    encoder, hw = build_encoder(
        checkpoint, version=model_version, data_source=data_source, precision=precision,  # type: ignore[arg-type]
        batch_size=batch_size, threads=threads, seed=seed, trust_checkpoint=trust_checkpoint,
    )
    console.print(
        f"[bold]{tile.name}[/]: {tile.height} x {tile.width} px, model {encoder.version} "
        f"(checkpoint {encoder.loaded.checkpoint_sha256[:12]}), {encoder.settings.precision} on {hw.kind}"
    )
    with Progress(TextColumn("encoding"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} px"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("encode", total=tile.n_pixels)
        encoded = encoder.encode(tile, progress=lambda n: bar.advance(task, n))
    s = encoded.stats
    console.print(f"encoded in {s.total_s:.1f} s ({1e3 * s.total_s / max(s.pixels, 1):.2f} ms/px, {s.flops / max(s.total_s, 1e-9) / 1e9:.0f} GFLOP/s)")
    if out_dir is not None:
        emb_path, scales_path = write_upstream_files(encoded, out_dir, encoder.version)
        click.echo(f"wrote {emb_path} and {scales_path}")
    if store is not None and year is not None and geometry is not None:
        from tessera_pipeline.store import write_encoded_tile

        name = tile_name or tile.name
        record = write_encoded_tile(
            store, year, name, encoded.embeddings, encoded.scales,
            epsg=geometry.epsg, transform=tuple(geometry.transform),
            provenance=provenance(encoder, hw, tile, encoded), model_attrs=model_attributes(encoder),
        )
        click.echo(f"committed {year}/{name} to {store} (version {record.version}, write {record.write_s:.2f} s)")
