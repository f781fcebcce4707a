"""Encoder benchmark: a synthetic tile through a real-size random-weight model in fp32 and bf16.

Reports ms/pixel, achieved useful GFLOP/s (FLOPs at each pixel's bucket lengths, tessera-model.md
1.6), this machine's GEMM peak measured in the same run, their ratio (MFU), and bf16's agreement
with fp32 (the seeds' table). The weights are random: speed is what it measures, not embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel

from tessera_pipeline import __version__
from tessera_pipeline.bench.peak import matmul_peaks
from tessera_pipeline.bench.quality import Quality, compare
from tessera_pipeline.encode import EncodedTile, EncodeSettings, TileEncoder
from tessera_pipeline.hardware import Precision, detect
from tessera_pipeline.inputs.synthetic import synthetic_arrays
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model import LoadedModel, build_model, v1_0_config, v1_1_config
from tessera_pipeline.model.flops import pixel_flops

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class PrecisionRun(BaseModel):
    """One precision's encode of the bench tile."""

    seconds: float
    ms_per_pixel: float
    gflops: float
    peak_gflops: float
    peak_shape: tuple[int, int, int]
    peak_by_shape: dict[str, list[float]]
    mfu: float
    fused_kernels: bool


class EncoderBench(BaseModel):
    """The full report; the flat keys are the ones `bench --json` promises."""

    model: str
    size: tuple[int, int]
    pixels: int
    threads: int
    batch_size: int
    hardware: str
    cpu_model: str
    torch_version: str
    pipeline_version: str
    weights: str
    mean_s2_tokens: float
    mean_s1_tokens: float
    gflop_per_pixel: float
    runs: dict[str, PrecisionRun]
    ms_per_pixel_fp32: float | None = None
    ms_per_pixel_bf16: float | None = None
    gflops_fp32: float | None = None
    gflops_bf16: float | None = None
    peak_gflops_fp32: float | None = None
    peak_gflops_bf16: float | None = None
    mfu_fp32: float | None = None
    mfu_bf16: float | None = None
    quality: Quality | None = None


def random_model(version: Literal["v1.0", "v1.1"], seed: int = 0) -> LoadedModel:
    """A real-size model with seeded random weights (never real Tessera weights)."""
    torch.manual_seed(seed)
    cfg = v1_1_config() if version == "v1.1" else v1_0_config()
    model = build_model(cfg).requires_grad_(False)
    return LoadedModel(model=model, config=cfg, checkpoint_sha256="random-weights", source=f"random {version} (seed {seed})")


def synthetic_tile(height: int, width: int, seed: int = 0) -> DPixelTile:
    """A synthetic tile with the seeds' observation counts (~91 S2 dates, ~61 S1 dates)."""
    return DPixelTile(name=f"synthetic_{height}x{width}", **synthetic_arrays(height, width, seed=seed))


def run_encoder_bench(
    version: Literal["v1.0", "v1.1"] = "v1.1",
    size: tuple[int, int] = (64, 64),
    *,
    precisions: tuple[Precision, ...] = ("fp32", "bf16"),
    batch_size: int = 256,
    threads: int | None = None,
    peak_seconds: float = 1.0,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> EncoderBench:
    """Encode one synthetic tile per precision; measure the GEMM peak before and after each encode.

    The peak is the highest sustained GEMM throughput seen in either measurement (conservative:
    on a shared host it can run well above what the encode sees over its whole run).
    """
    say = on_progress or (lambda msg: log.info(msg))
    if threads:
        torch.set_num_threads(threads)
    hw = detect()
    loaded = random_model(version, seed)
    tile = synthetic_tile(*size, seed=seed)
    runs: dict[str, PrecisionRun] = {}
    outputs: dict[str, EncodedTile] = {}
    for precision in precisions:
        encoder = TileEncoder(loaded, EncodeSettings(precision=precision, batch_size=batch_size))
        say(f"{precision}: warm-up")
        encoder.encode(synthetic_tile(8, 8, seed=seed + 1))
        say(f"{precision}: measuring matmul peak")
        before = matmul_peaks(DTYPES[precision], seconds_per_shape=peak_seconds)
        say(f"{precision}: encoding {size[0]}x{size[1]}")
        result = encoder.encode(tile)
        say(f"{precision}: measuring matmul peak again")
        after = matmul_peaks(DTYPES[precision], seconds_per_shape=peak_seconds)
        peak, shape = max((max(before[s], after[s]), s) for s in before)
        gflops = result.stats.flops / result.stats.total_s / 1e9
        runs[precision] = PrecisionRun(
            seconds=result.stats.total_s,
            ms_per_pixel=1e3 * result.stats.total_s / tile.n_pixels,
            gflops=gflops,
            peak_gflops=peak,
            peak_shape=shape,
            peak_by_shape={"x".join(map(str, s)): [before[s], after[s]] for s in before},
            mfu=gflops / peak,
            fused_kernels=encoder.uses_fused_kernels,
        )
        outputs[precision] = result
    any_run = next(iter(outputs.values())).stats
    s2_mean = _mean_tokens(any_run.s2_tokens) if version == "v1.1" else 40.0
    s1_mean = _mean_tokens(any_run.s1_tokens) if version == "v1.1" else 40.0
    report = EncoderBench(
        model=version,
        size=size,
        pixels=tile.n_pixels,
        threads=torch.get_num_threads(),
        batch_size=batch_size,
        hardware=hw.kind,
        cpu_model=hw.cpu_model,
        torch_version=torch.__version__,
        pipeline_version=__version__,
        weights=loaded.source,
        mean_s2_tokens=s2_mean,
        mean_s1_tokens=s1_mean,
        gflop_per_pixel=any_run.flops / max(tile.n_pixels, 1) / 1e9,
        runs=runs,
    )
    for precision, run in runs.items():
        setattr(report, f"ms_per_pixel_{precision}", run.ms_per_pixel)
        setattr(report, f"gflops_{precision}", run.gflops)
        setattr(report, f"peak_gflops_{precision}", run.peak_gflops)
        setattr(report, f"mfu_{precision}", run.mfu)
    if "fp32" in outputs and "bf16" in outputs:
        a, b = outputs["fp32"], outputs["bf16"]
        report.quality = compare(a.embeddings, a.scales, b.embeddings, b.scales)
    return report


def _mean_tokens(histogram: dict[int, int]) -> float:
    total = sum(histogram.values())
    return float(sum(k * v for k, v in histogram.items()) / total) if total else 0.0


def expected_flops(version: Literal["v1.0", "v1.1"], s2_tokens: int, s1_tokens: int) -> float:
    """FLOPs of one pixel for a version at given lengths (for plans and reports)."""
    cfg = v1_1_config() if version == "v1.1" else v1_0_config()
    return pixel_flops(cfg, s2_tokens, s1_tokens)


__all__ = ["EncoderBench", "PrecisionRun", "random_model", "run_encoder_bench", "synthetic_tile"]
