"""GPU encoder benchmark (`bench --device cuda`): ours against the card's GEMM peak and against upstream.

One synthetic tile in upstream's d-pixel layout and a real-size RANDOM-weight v1.1 checkpoint in
upstream's format are written to a work directory; then, on the same GPU in the same run:

- the card's GEMM peaks in bf16, fp16, fp32 and tf32 (random operands, CUDA events, best of a sweep of
  large and model shapes, after a warm-up long enough to reach steady clocks), and its datasheet dense
  peak (from the built-in plan profiles), so MFU is reported against both;
- our first tile in a fresh process (`python -m tessera_pipeline.bench.gpu_bench first-tile ...`,
  timed as a whole and by phase) and our steady state (one encoder encoding the tile again and again);
- quality per precision against fp32 on a smaller tile (int8 exact / off by one / worse, cosine,
  pixels with a non-finite scale), and fp32's own speed there;
- where the Triton kernels ran, the same steady state without them (the A/B of `model.fused_kernels`);
- with `upstream`, upstream's `infer_v1_1.py` run as its users run it (one process for the tile,
  its config's defaults) on the same tile, timed as a whole, and its int8 output compared with ours.

Useful FLOPs count each pixel at its own bucket lengths (tessera-model.md 1.6): padding is not useful.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tessera_pipeline.bench.quality import compare
from tessera_pipeline.encode.encoder import EncodedTile, TileEncoder
from tessera_pipeline.precision import Precision

log = logging.getLogger(__name__)

#: (M, K, N) shapes for the GEMM peak: large squares and the v1.1 forward's own GEMMs at 131k tokens.
GPU_PEAK_SHAPES: tuple[tuple[int, int, int], ...] = (
    (4096, 4096, 4096),
    (8192, 8192, 8192),
    (16384, 16384, 16384),
    (131072, 768, 2304),
    (131072, 768, 2048),
    (131072, 2048, 768),
)
PEAK_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}
CHECKPOINT_NAME = "random_v1_1.pt"
UPSTREAM_DONE = re.compile(r"Done\. total_pixels=(\d+) elapsed=([\d.]+)s")


def _timed_ms(device: torch.device, work: Callable[[], None]) -> float:
    """Milliseconds `work` takes on the device (CUDA events; a host clock on CPUs)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        work()
        return 1e3 * (time.perf_counter() - t0)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def gemm_tflops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, seconds: float = 0.25) -> float:
    """Sustained TFLOP/s of (m,k) @ (k,n) on random operands, timed with CUDA events."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    out = torch.empty(m, n, dtype=dtype, device=device)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    iters = 1

    def run() -> None:
        for _ in range(iters):
            torch.matmul(a, b, out=out)

    while True:
        ms = _timed_ms(device, run)
        if ms >= 1e3 * seconds or iters >= 4096:
            return 2.0 * m * k * n * iters / (ms / 1e3) / 1e12
        iters = max(iters * 2, int(iters * 1e3 * seconds / max(ms, 1e-3)) + 1)


def gemm_peaks(device: torch.device, seconds: float = 0.25,
               shapes: tuple[tuple[int, int, int], ...] = GPU_PEAK_SHAPES, warm_seconds: float = 0.0) -> dict[str, dict[str, float]]:
    """Per dtype: TFLOP/s of every shape and the best ("peak"). tf32 = fp32 with TF32 allowed.

    `warm_seconds` of bf16 GEMMs run first, so the sweep starts at the clocks a long encode runs at.
    """
    saved = torch.backends.cuda.matmul.allow_tf32
    out: dict[str, dict[str, float]] = {}
    if warm_seconds > 0:
        gemm_tflops(*shapes[0], torch.bfloat16, device, warm_seconds)
    try:
        for name, dtype in PEAK_DTYPES.items():
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            figures = {"x".join(map(str, s)): gemm_tflops(*s, dtype, device, seconds) for s in shapes}
            out[name] = {**figures, "peak": max(figures.values())}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def prepare_inputs(workdir: Path, size: tuple[int, int], seed: int = 0, workers: int | None = None) -> tuple[Path, Path]:
    """Write (once) the random v1.1 checkpoint and the synthetic tile of `size`; return their paths."""
    from tessera_pipeline.inputs.synthetic import write_synthetic_arrays
    from tessera_pipeline.model.random_checkpoint import save_random_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / CHECKPOINT_NAME
    if not ckpt.is_file():
        save_random_checkpoint(ckpt, "v1.1", seed=seed)
    tile_dir = workdir / f"synthetic_{size[0]}x{size[1]}_seed{seed}"
    if not (tile_dir / "sar_descending_doy.npy").is_file():
        write_synthetic_arrays(tile_dir, *size, seed=seed, workers=workers or min(16, os.cpu_count() or 1))
    return ckpt, tile_dir


def datasheet_tflops(device_name: str, precision: Precision) -> float | None:
    """The card's datasheet dense peak for `precision`, from the built-in plan profile of its class (None if unknown)."""
    from tessera_pipeline.hardware import gpu_class
    from tessera_pipeline.plan.profiles import builtin_profiles

    hw_class = gpu_class(device_name)
    for profile in builtin_profiles():
        if profile.hw_class == hw_class and profile.datasheet is not None:
            return profile.datasheet.peak_tflops.get(precision)
    return None


def _tile_figures(encoded: EncodedTile, seconds: float, peak: float | None, datasheet: float | None = None) -> dict[str, float]:
    """px/s, useful TFLOP/s and MFU of one encode, against the measured GEMM peak and the datasheet peak."""
    tflops = encoded.stats.flops / max(seconds, 1e-9) / 1e12
    return {
        "seconds": seconds,
        "px_per_s": encoded.stats.pixels / max(seconds, 1e-9),
        "tflops": tflops,
        "mfu": tflops / peak if peak else float("nan"),
        "mfu_datasheet": tflops / datasheet if datasheet else float("nan"),
    }


def first_tile_in_fresh_process(checkpoint: Path, tile_dir: Path, *, precision: Precision, device: str,
                                batch_size: int | None, cuda_graphs: bool = False, fused_kernels: bool | None = None) -> dict[str, Any]:
    """Run `first-tile` in a new Python process; its phases plus the wall time of the whole process."""
    cmd = [sys.executable, "-m", "tessera_pipeline.bench.gpu_bench", "first-tile", "--checkpoint", str(checkpoint),
           "--tile", str(tile_dir), "--precision", precision, "--device", device]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    if cuda_graphs:
        cmd.append("--cuda-graphs")
    if fused_kernels is False:
        cmd.append("--no-triton-kernels")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"first-tile process failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def _first_tile_main(argv: list[str]) -> None:
    """`python -m tessera_pipeline.bench.gpu_bench first-tile`: build, open and encode one tile; print JSON."""
    from tessera_pipeline.encode.setup import build_encoder
    from tessera_pipeline.inputs.dpixel import open_tile

    parser = argparse.ArgumentParser(prog="first-tile")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tile", required=True)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--no-triton-kernels", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    encoder, hw = build_encoder(args.checkpoint, precision=args.precision, device=args.device, batch_size=args.batch_size,
                                cuda_graphs=args.cuda_graphs, fused_kernels=False if args.no_triton_kernels else None)
    t1 = time.perf_counter()
    tile = open_tile(args.tile)
    t2 = time.perf_counter()
    encoded = encoder.encode(tile)
    t3 = time.perf_counter()
    print(json.dumps({"build_encoder_s": t1 - t0, "open_tile_s": t2 - t1, "encode_s": t3 - t2, "flops": encoded.stats.flops,
                      "pixels": encoded.stats.pixels, "device": hw.gpu_name or hw.kind, "triton_kernels": encoder.triton_kernels}))


def steady_state(checkpoint: Path, tile_dir: Path, *, precision: Precision, device: str, batch_size: int | None,
                 tiles: int, cuda_graphs: bool = False, fused_kernels: bool | None = None,
                 say: Callable[[str], None] = log.info) -> tuple[list[EncodedTile], list[float], bool]:
    """Encode the tile `tiles` times with one encoder; every encode, its wall time, and whether Triton kernels ran."""
    from tessera_pipeline.encode.setup import build_encoder
    from tessera_pipeline.inputs.dpixel import open_tile

    encoder, _ = build_encoder(str(checkpoint), precision=precision, device=device, batch_size=batch_size, cuda_graphs=cuda_graphs,
                               fused_kernels=fused_kernels)
    triton = encoder.triton_kernels
    tile = open_tile(tile_dir)
    runs, times = [], []
    label = f"{precision}{' graphs' if cuda_graphs else ''}{'' if triton else ' (no Triton kernels)'}"
    for i in range(tiles):
        t0 = time.perf_counter()
        runs.append(encoder.encode(tile))
        times.append(time.perf_counter() - t0)
        say(f"{label}: tile {i + 1}/{tiles} in {times[-1]:.2f} s")
    _release(encoder)
    return runs, times, triton


def _release(encoder: TileEncoder) -> None:
    """Drop an encoder and give its cached device memory back before the next one is built."""
    encoder.close()
    del encoder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quality_per_precision(checkpoint: Path, size: tuple[int, int], *, device: str, precisions: tuple[Precision, ...],
                          batch_size: int, peaks: dict[str, dict[str, float]], seed: int = 1, fused_kernels: bool | None = None,
                          say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Encode a synthetic tile in fp32 and each precision; agreement with fp32 and each precision's speed."""
    from tessera_pipeline.encode.setup import build_encoder
    from tessera_pipeline.inputs.synthetic import synthetic_arrays
    from tessera_pipeline.inputs.tile import DPixelTile

    tile = DPixelTile(name=f"quality_{size[0]}x{size[1]}", **synthetic_arrays(*size, seed=seed))
    encoded: dict[str, EncodedTile] = {}
    out: dict[str, Any] = {"size": list(size), "batch_size": batch_size}
    for precision in ("fp32", *[p for p in precisions if p != "fp32"]):
        encoder, _ = build_encoder(str(checkpoint), precision=precision, device=device, batch_size=batch_size,  # type: ignore[arg-type]
                                   fused_kernels=fused_kernels)
        t0 = time.perf_counter()
        encoded[precision] = encoder.encode(tile)
        seconds = time.perf_counter() - t0
        _release(encoder)
        figures = _tile_figures(encoded[precision], seconds, peaks.get(precision, {}).get("peak"))
        nonfinite = int((~np.isfinite(encoded[precision].scales)).sum())
        entry: dict[str, Any] = {**figures, "nonfinite_pixels": nonfinite, "fp32_reruns": encoded[precision].stats.fp32_reruns}
        if precision != "fp32":
            ref = encoded["fp32"]
            entry.update(compare(ref.embeddings, ref.scales, encoded[precision].embeddings, encoded[precision].scales).model_dump())
            entry["exact_plus_1"] = entry["exact"] + entry["off_by_1"]
        out[precision] = entry
        say(f"quality {precision}: {json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()})}")
    return out


def find_upstream_script(path: Path) -> Path:
    """Upstream's infer_v1_1.py: the path itself, or found under a directory (e.g. a copy of the rival repo)."""
    if path.is_file():
        return path
    found = sorted(path.rglob("infer_v1_1.py"))
    if not found:
        raise FileNotFoundError(f"no infer_v1_1.py under {path}")
    return found[0]


def run_upstream(path: Path, checkpoint: Path, tile_dir: Path, out_dir: Path, log_path: Path) -> dict[str, Any]:
    """Run upstream's infer_v1_1.py on the tile as shipped (its config, device auto, bf16 autocast); time it whole."""
    script = find_upstream_script(path)
    config = script.parent.parent / "configs" / "v1_1_infer_config.py"
    cmd = [sys.executable, str(script), "--config", str(config), "--checkpoint_path", str(checkpoint),
           "--tile_path", str(tile_dir), "--output_dir", str(out_dir)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_path.open("w") as sink:
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    text = log_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"upstream failed ({proc.returncode}): {text[-2000:]}")
    done = UPSTREAM_DONE.search(text)
    prefix = tile_dir.name
    return {
        "command": " ".join(cmd),
        "process_wall_s": wall,
        "encode_loop_s": float(done.group(2)) if done else None,
        "embeddings": str(out_dir / f"{prefix}_emb128_int8.npy"),
        "scales": str(out_dir / f"{prefix}_emb128_scales.npy"),
    }


def run_gpu_bench(
    workdir: Path,
    *,
    size: tuple[int, int] = (1126, 690),
    device: str = "cuda",
    precision: Precision = "bf16",
    batch_size: int | None = None,
    steady_tiles: int = 3,
    quality_size: tuple[int, int] | None = (256, 256),
    quality_precisions: tuple[Precision, ...] = ("bf16", "fp16"),
    quality_batch_size: int = 512,
    upstream: Path | None = None,
    cuda_graphs: bool = False,
    peak_seconds: float = 0.5,
    peak_warm_seconds: float = 3.0,
    peak_shapes: tuple[tuple[int, int, int], ...] = GPU_PEAK_SHAPES,
    fused_ab: bool = True,
    fused_kernels: bool | None = None,
    say: Callable[[str], None] = log.info,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The whole GPU benchmark; returns one JSON-able report (see the module docstring).

    Stages run in order of importance (peaks, first tile, steady state, upstream, quality, CUDA
    graphs); `on_stage` gets the report so far after each, so a run cut short keeps what it measured.
    Runs on a CPU device too (host clocks instead of CUDA events), which is how it is tested.
    """
    done = on_stage or (lambda _: None)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "capability": list(torch.cuda.get_device_capability(dev)) if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "size": list(size), "precision": precision,
        "weights": "random (seeded), real-size v1.1", "batch_size": batch_size,
    }
    say("writing the checkpoint and the synthetic tile")
    ckpt, tile_dir = prepare_inputs(workdir, size)
    say("GEMM peaks")
    peaks = gemm_peaks(dev, peak_seconds, peak_shapes, warm_seconds=peak_warm_seconds if cuda else 0.0)
    report["gemm_peak_tflops"] = peaks
    peak = peaks[precision]["peak"]
    sheet = datasheet_tflops(report["device"], precision) if cuda else None
    report["datasheet_peak_tflops"] = sheet
    done(report)
    say("peaks (TFLOP/s): " + ", ".join(f"{name} {figures['peak']:.1f}" for name, figures in peaks.items())
        + f"; datasheet {precision} {sheet}")

    say("our first tile in a fresh process")
    first = first_tile_in_fresh_process(ckpt, tile_dir, precision=precision, device=device, batch_size=batch_size,
                                        fused_kernels=fused_kernels)
    first.update({k: v for k, v in _figures(first["flops"], first["pixels"], first["encode_s"], peak, sheet).items()})
    first["px_per_s_whole_process"] = first["pixels"] / first["process_wall_s"]
    report["first_tile"] = first
    say(f"first tile: encode {first['encode_s']:.2f} s, whole process {first['process_wall_s']:.2f} s")
    done(report)

    runs, times, triton = steady_state(ckpt, tile_dir, precision=precision, device=device, batch_size=batch_size, tiles=steady_tiles,
                                       fused_kernels=fused_kernels, say=say)
    steady_s = float(np.median(times[1:] if len(times) > 1 else times))
    steady = _tile_figures(runs[-1], steady_s, peak, sheet)
    report["triton_kernels"] = triton
    report["steady"] = {**steady, "tile_seconds": times, "encode_stats": _stats(runs[-1])}
    report["first_over_steady_px_per_s"] = first["px_per_s"] / steady["px_per_s"]
    ours = runs[-1]
    del runs
    say(f"steady state: {steady_s:.2f} s a tile ({steady['tflops']:.0f} TFLOP/s, MFU {steady['mfu']:.2f}, "
        f"datasheet {steady['mfu_datasheet']:.2f})")
    done(report)

    if fused_ab and triton:
        plain_runs, plain_times, _ = steady_state(ckpt, tile_dir, precision=precision, device=device, batch_size=batch_size,
                                                  tiles=2, fused_kernels=False, say=say)
        plain = _tile_figures(plain_runs[-1], plain_times[-1], peak, sheet)
        report["without_triton_kernels"] = {
            **plain, "tile_seconds": plain_times, "triton_speedup": plain["seconds"] / steady_s,
            "triton_vs_plain": compare(plain_runs[-1].embeddings, plain_runs[-1].scales, ours.embeddings, ours.scales).model_dump(),
        }
        del plain_runs
        say(f"without Triton kernels: {plain['seconds']:.2f} s a tile ({report['without_triton_kernels']['triton_speedup']:.2f}x slower)")
        done(report)

    if upstream is not None:
        say("upstream infer_v1_1.py, one process for the tile, its defaults")
        up = run_upstream(upstream, ckpt, tile_dir, workdir / "upstream_out", workdir / "upstream.log")
        up["px_per_s_whole_process"] = ours.stats.pixels / up["process_wall_s"]
        if up["encode_loop_s"]:
            up["px_per_s_encode_loop"] = ours.stats.pixels / up["encode_loop_s"]
        emb, scales = np.load(up["embeddings"]), np.load(up["scales"])
        up["ours_vs_upstream"] = compare(emb, scales, ours.embeddings, ours.scales).model_dump()
        report["upstream"] = up
        report["steady_over_upstream_process"] = steady["px_per_s"] / up["px_per_s_whole_process"]
        report["first_process_over_upstream_process"] = up["process_wall_s"] / first["process_wall_s"]
        say(f"upstream: whole process {up['process_wall_s']:.1f} s; ours steady {report['steady_over_upstream_process']:.2f}x")
        done(report)

    if quality_size:
        report["quality"] = quality_per_precision(ckpt, quality_size, device=device, precisions=quality_precisions,
                                                  batch_size=quality_batch_size, peaks=peaks, fused_kernels=fused_kernels, say=say)
        done(report)

    if cuda_graphs:
        graph_runs, graph_times, _ = steady_state(ckpt, tile_dir, precision=precision, device=device, batch_size=batch_size,
                                                  tiles=2, cuda_graphs=True, fused_kernels=fused_kernels, say=say)
        report["cuda_graphs"] = {
            "tile_seconds": graph_times,
            "steady": _tile_figures(graph_runs[-1], graph_times[-1], peak, sheet),
            "same_bytes_as_eager": bool(np.array_equal(graph_runs[-1].embeddings, ours.embeddings)),
        }
        del graph_runs
        done(report)
    return report


def _figures(flops: float, pixels: int, seconds: float, peak: float, datasheet: float | None) -> dict[str, float]:
    tflops = flops / max(seconds, 1e-9) / 1e12
    return {"px_per_s": pixels / max(seconds, 1e-9), "tflops": tflops, "mfu": tflops / peak,
            "mfu_datasheet": tflops / datasheet if datasheet else float("nan")}


def _stats(encoded: EncodedTile) -> dict[str, Any]:
    s = encoded.stats
    mean = lambda h: sum(k * v for k, v in h.items()) / max(sum(h.values()), 1)  # noqa: E731
    return {"pixels": s.pixels, "flops": s.flops, "gflop_per_pixel": s.flops / max(s.pixels, 1) / 1e9,
            "empty_s2": s.empty_s2, "empty_s1": s.empty_s1, "mean_s2_tokens": mean(s.s2_tokens), "mean_s1_tokens": mean(s.s1_tokens),
            "host_read_s": s.prepare_s, "fp32_reruns": s.fp32_reruns}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "first-tile":
        logging.basicConfig(level=logging.WARNING)
        _first_tile_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m tessera_pipeline.bench.gpu_bench first-tile --checkpoint CKPT --tile DIR [...]")
