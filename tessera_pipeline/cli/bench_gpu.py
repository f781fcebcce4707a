"""`tessera-pipeline bench --device cuda[:N]`: the GPU benchmark's command-line side (tables or JSON)."""

from __future__ import annotations

import json
import math
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tessera_pipeline.cli.console import make_console, print_table
from tessera_pipeline.inputs.synthetic import parse_size

log = logging.getLogger(__name__)

DEVICE_PATTERN = re.compile(r"cuda(:\d+)?")


def gpu_bench(device: str, size: str, precisions: tuple[str, ...], batch_size: int | None, upstream: Path | None,
              workdir: Path | None, steady_tiles: int, quality_size: str, cuda_graphs: bool, as_json: bool,
              triton_kernels: bool = True) -> None:
    """Run `bench.gpu_bench.run_gpu_bench` and print its report; the report so far is kept in WORKDIR/report.json."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise click.BadParameter(f"{device!r}: expected cpu, cuda or cuda:N", param_hint="--device")
    import torch

    if not torch.cuda.is_available():
        raise click.UsageError(f"--device {device}: this torch build sees no CUDA device")
    from tessera_pipeline.bench.gpu_bench import run_gpu_bench
    from tessera_pipeline.hardware import default_precision, detect

    console = make_console(stderr=True)
    precision = precisions[0] if precisions else default_precision(detect(device))
    lows = tuple(p for p in (precisions[1:] if len(precisions) > 1 else ("bf16", "fp16")) if p != "fp32")
    workdir = workdir or Path(tempfile.gettempdir()) / "tessera-gpu-bench"
    partial = workdir / "report.json"

    def keep(report: dict[str, Any]) -> None:
        partial.write_text(json.dumps(report, indent=1))

    report = run_gpu_bench(
        workdir,
        size=parse_size(size), device=device, precision=precision,  # type: ignore[arg-type]
        batch_size=batch_size, steady_tiles=steady_tiles, quality_size=parse_size(quality_size),
        quality_precisions=lows, upstream=upstream, cuda_graphs=cuda_graphs,  # type: ignore[arg-type]
        fused_kernels=None if triton_kernels else False, fused_ab=triton_kernels,
        say=lambda msg: console.log(msg), on_stage=keep,
    )
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    print_report(report)


def _mfu_cells(entry: dict[str, Any]) -> tuple[str, str]:
    """MFU against the measured GEMM peak and against the datasheet ("-" where that is unknown)."""
    sheet = entry.get("mfu_datasheet")
    return f"{entry['mfu']:.2f}", f"{sheet:.2f}" if isinstance(sheet, float) and math.isfinite(sheet) else "-"


def print_report(r: dict[str, Any]) -> None:
    """The GPU table (first tile, steady state, upstream), the GEMM peaks and quality per precision."""
    console = make_console()
    console.print(f"[bold]{r['device']}[/] (capability {r['capability']}), torch {r['torch']}, CUDA {r['cuda']}; "
                  f"synthetic {r['size'][0]}x{r['size'][1]} tile, {r['weights']}, {r['precision']}")
    peaks = r["gemm_peak_tflops"]
    sheet = r.get("datasheet_peak_tflops")
    console.print("GEMM peak measured, TFLOP/s: " + ", ".join(f"{k} {v['peak']:.1f}" for k, v in peaks.items())
                  + (f"; datasheet dense {r['precision']}: {sheet:g}" if sheet else "; datasheet peak unknown for this card"))
    table = Table("run", "seconds", "px/s", "useful TFLOP/s", "MFU (measured peak)", "MFU (datasheet)", "vs upstream (whole process)")
    up = r.get("upstream")
    up_rate = up["px_per_s_whole_process"] if up else None
    rel = lambda rate: f"{rate / up_rate:.2f}x" if up_rate else "-"  # noqa: E731
    first, steady = r["first_tile"], r["steady"]
    table.add_row("ours, first tile (fresh process, encode)", f"{first['encode_s']:.2f}", f"{first['px_per_s']:,.0f}",
                  f"{first['tflops']:.0f}", *_mfu_cells(first), rel(first["px_per_s"]))
    table.add_row("ours, fresh process whole", f"{first['process_wall_s']:.2f}", f"{first['px_per_s_whole_process']:,.0f}",
                  "", "", "", rel(first["px_per_s_whole_process"]))
    table.add_row("ours, steady state", f"{steady['seconds']:.2f}", f"{steady['px_per_s']:,.0f}", f"{steady['tflops']:.0f}",
                  *_mfu_cells(steady), rel(steady["px_per_s"]))
    if "without_triton_kernels" in r:
        p = r["without_triton_kernels"]
        table.add_row("ours, steady state without Triton kernels", f"{p['seconds']:.2f}", f"{p['px_per_s']:,.0f}", f"{p['tflops']:.0f}",
                      *_mfu_cells(p), rel(p["px_per_s"]))
    if "cuda_graphs" in r:
        g = r["cuda_graphs"]["steady"]
        table.add_row("ours, steady state, CUDA graphs", f"{g['seconds']:.2f}", f"{g['px_per_s']:,.0f}", f"{g['tflops']:.0f}",
                      *_mfu_cells(g), rel(g["px_per_s"]))
    if up:
        table.add_row("upstream infer_v1_1.py, whole process", f"{up['process_wall_s']:.2f}", f"{up_rate:,.0f}", "", "", "", "1.00x")
    print_table(console, table)
    if "quality" in r:
        q = r["quality"]
        qt = Table(f"vs fp32 ({q['size'][0]}x{q['size'][1]})", "exact", "exact+1", "off by 2+", "cosine min", "non-finite px",
                   "TFLOP/s", "MFU")
        for name in [k for k in q if k not in ("size", "batch_size")]:
            e = q[name]
            if name == "fp32":
                qt.add_row("fp32", "-", "-", "-", "-", str(e["nonfinite_pixels"]), f"{e['tflops']:.1f}", f"{e['mfu']:.2f}")
                continue
            qt.add_row(name, f"{100 * e['exact']:.2f}%", f"{100 * e['exact_plus_1']:.3f}%", f"{100 * e['off_by_2_plus']:.4f}%",
                       f"{e['cosine_min']:.5f}", str(e["nonfinite_pixels"]), f"{e['tflops']:.1f}", f"{e['mfu']:.2f}")
        print_table(console, qt)
