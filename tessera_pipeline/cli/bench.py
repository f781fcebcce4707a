"""`tessera-pipeline bench`: encoder speed and MFU in fp32 and bf16, bf16 quality, and store I/O."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from tessera_pipeline.cli.console import make_console, print_table
from tessera_pipeline.cli.params import size_callback
from tessera_pipeline.inputs.synthetic import parse_size


@click.command("bench")
@click.option("--model", "model_version", type=click.Choice(["v1.0", "v1.1"]), default="v1.1", show_default=True)
@click.option("--size", default=None, callback=size_callback,
              help="Synthetic tile size HxW (at most a grid tile's size). Default 64x64 on CPU, 1126x690 with --device cuda.")
@click.option("--precision", "precisions", type=click.Choice(["fp32", "bf16", "fp16"]), multiple=True,
              help="Precisions to run (repeatable; default fp32 and bf16, which also gives bf16-vs-fp32 quality). "
              "With --device cuda: the first is the timed precision (default: the card's policy).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Pixels (of 64 tokens) per forward pack. Default 256 on CPU, 2048 on GPUs.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Torch threads (default: physical cores).")
@click.option("--peak-seconds", type=click.FloatRange(0.05), default=0.4, show_default=True,
              help="Seconds per GEMM shape in each matmul-peak sample.")
@click.option("--segments", type=click.IntRange(1), default=4, show_default=True,
              help="Row blocks the tile is encoded in, with a matmul-peak sample before, between and after them.")
@click.option("--store/--no-store", "with_store", default=True, show_default=True,
              help="Also time writing and reading back a full 1126 x 690 tile in a local store.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda[:N] for the GPU benchmark (first tile in a fresh process, steady state, GEMM peaks, "
              "quality per precision; see docs/benchmarks.md).")
@click.option("--upstream", "upstream", type=click.Path(exists=True, path_type=Path), default=None,
              help="GPU: also run upstream's infer_v1_1.py (this file, or a directory holding it) on the same tile.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="GPU: where the random checkpoint and the synthetic tile are written (default: a folder in the temp dir).")
@click.option("--steady-tiles", type=click.IntRange(1), default=3, show_default=True,
              help="GPU: encodes of the tile by one encoder; steady state is the median of all but the first.")
@click.option("--quality-size", default="256x256", show_default=True, callback=size_callback,
              help="GPU: size of the tile on which each precision is compared with fp32.")
@click.option("--cuda-graphs", is_flag=True, help="GPU: also time the steady state with CUDA graphs per pack shape.")
@click.option("--triton-kernels/--no-triton-kernels", "triton_kernels", default=True, show_default=True,
              help="GPU: fused Triton kernels for residual + LayerNorm and the GRU steps (where Triton is installed); "
                   "with them, the steady state is also timed without them.")
@click.option("--calibrate", is_flag=True,
              help="Instead: time one `run` actor here and write a `plan` profile (--out, --name, --price).")
@click.option("--out", "profile_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--calibrate: profiles file to write or update (default: print it).")
@click.option("--name", "profile_name", default=None, help="--calibrate: profile name (default: calibrated-<class>-<host>).")
@click.option("--price", "usd_per_hour", type=click.FloatRange(0), default=None,
              help="--calibrate: this machine's $/hour (default 0).")
@click.option("--spot-price", "usd_per_hour_spot", type=click.FloatRange(0), default=None,
              help="--calibrate: this machine's spot $/hour.")
def bench(model_version: str, size: str | None, precisions: tuple[str, ...], batch_size: int | None, threads: int | None,
          peak_seconds: float, segments: int, with_store: bool, as_json: bool, calibrate: bool,
          profile_out: Path | None, profile_name: str | None, usd_per_hour: float | None,
          usd_per_hour_spot: float | None, device: str, upstream: Path | None, workdir: Path | None,
          steady_tiles: int, quality_size: str, cuda_graphs: bool, triton_kernels: bool) -> None:
    """Benchmark the encoder on a synthetic tile with a real-size RANDOM-WEIGHT model.

    Reports ms/pixel, useful GFLOP/s, this machine's matmul peak sampled during the same run (mean of
    the samples; the single best window too), MFU, and bf16's agreement with fp32. Weights are
    random: it measures speed, not embeddings.
    """
    if device != "cpu":
        from tessera_pipeline.cli.bench_gpu import gpu_bench

        gpu_bench(device, size or "1126x690", precisions, batch_size, upstream, workdir, steady_tiles, quality_size,
                  cuda_graphs, as_json, triton_kernels)
        return
    size = size or "64x64"
    batch_size = batch_size or 256
    if calibrate:
        from tessera_pipeline.cli.calibrate import calibrate_profile

        calibrate_profile(model_version, size, precisions, batch_size, threads, profile_out, profile_name,
                          usd_per_hour, usd_per_hour_spot)
        return
    from tessera_pipeline.bench.encoder_bench import run_encoder_bench

    console = make_console(stderr=True, quiet=as_json)
    height, width = parse_size(size)
    report = run_encoder_bench(
        model_version,  # type: ignore[arg-type]
        (height, width),
        precisions=tuple(precisions) or ("fp32", "bf16"),  # type: ignore[arg-type]
        batch_size=batch_size,
        threads=threads,
        peak_seconds=peak_seconds,
        segments=segments,
        on_progress=lambda msg: console.log(msg),
    )
    result = report.model_dump()
    if with_store:
        from tessera_pipeline.bench.store_bench import bench_store

        console.log("store: writing and reading a 1126 x 690 tile")
        store = bench_store(1126, 690)
        result.update(store)
        if report.ms_per_pixel_bf16:
            encode_s = report.ms_per_pixel_bf16 * 1126 * 690 / 1e3
            result["tile_encode_s_bf16_estimate"] = encode_s
            result["store_write_fraction_of_bf16_encode"] = store["store_write_s"] / encode_s
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    _print_tables(result)


def _print_tables(r: dict) -> None:
    console = make_console()
    console.print(
        f"[bold]{r['model']}[/] on a synthetic {r['size'][0]}x{r['size'][1]} tile ({r['pixels']} px), {r['weights']}; "
        f"{r['hardware']} ({r['cpu_model']}), {r['threads']} threads, batch {r['batch_size']}, torch {r['torch_version']}"
    )
    console.print(f"mean tokens S2 {r['mean_s2_tokens']:.1f}, S1 {r['mean_s1_tokens']:.1f}; {r['gflop_per_pixel']:.2f} GFLOP/pixel")
    table = Table("precision", "ms/pixel", "GFLOP/s", "matmul peak GFLOP/s (mean of samples)", "MFU",
                  "best peak window", "MFU vs best", "fused kernels")
    for name, run in r["runs"].items():
        table.add_row(name, f"{run['ms_per_pixel']:.2f}", f"{run['gflops']:.0f}", f"{run['peak_gflops']:.0f}",
                      f"{run['mfu']:.2f}", f"{run['peak_gflops_max']:.0f}", f"{run['mfu_vs_max_peak']:.2f}",
                      "yes" if run["fused_kernels"] else "no")
    print_table(console, table)
    if r.get("quality"):
        q = r["quality"]
        qt = Table("bf16 vs fp32", "exact", "off by 1", "off by 2+", "cosine mean", "cosine min")
        qt.add_row("int8", f"{100 * q['exact']:.1f}%", f"{100 * q['off_by_1']:.1f}%", f"{100 * q['off_by_2_plus']:.2f}%",
                   f"{q['cosine_mean']:.5f}", f"{q['cosine_min']:.5f}")
        print_table(console, qt)
    if "store_write_s" in r:
        line = f"store, 1126x690 tile: write {r['store_write_s']:.2f} s, read {r['store_read_s']:.2f} s"
        if "store_write_fraction_of_bf16_encode" in r:
            line += f" ({100 * r['store_write_fraction_of_bf16_encode']:.2f}% of the bf16 encode time of that tile)"
        console.print(line)
