"""Encoder benchmark: a synthetic tile through a real-size random-weight model in fp32 and bf16.

Reports ms/pixel, achieved useful GFLOP/s (FLOPs at each pixel's bucket lengths, tessera-model.md
1.6), this machine's GEMM peak measured in the same run, their ratio (MFU), and bf16's agreement
with fp32 (the seeds' table). The weights are random: speed is what it measures, not embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel

from tessera_pipeline import __version__
from tessera_pipeline.bench.peak import matmul_peaks
from tessera_pipeline.bench.quality import Quality, compare
from tessera_pipeline.encode import EncodedTile, EncodeSettings, EncodeStats, TileEncoder
from tessera_pipeline.hardware import configure_threads, detect
from tessera_pipeline.precision import Precision
from tessera_pipeline.inputs.synthetic import synthetic_arrays
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model import LoadedModel, build_model, v1_0_config, v1_1_config

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionRun(BaseModel):
    """One precision's encode of the bench tile."""

    seconds: float
    ms_per_pixel: float
    gflops: float
    peak_gflops: float
    peak_gflops_max: float
    peak_shape: tuple[int, int, int]
    peak_samples: list[float]
    peak_by_shape: dict[str, list[float]]
    mfu: float
    mfu_vs_max_peak: float
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
    peak_seconds: float = 0.4,
    segments: int = 4,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> EncoderBench:
    """Encode one synthetic tile per precision, sampling this machine's GEMM peak during the encode.

    The tile is encoded in `segments` row blocks with a peak sample (every shape of PEAK_SHAPES, best
    kept) before, between and after them, so the peak and the encoder are measured over the same
    minutes. `peak_gflops` is the mean of those samples; `peak_gflops_max` the best single window.
    """
    say = on_progress or (lambda msg: log.info(msg))
    configure_threads(threads)
    hw = detect()
    loaded = random_model(version, seed)
    tile = synthetic_tile(*size, seed=seed)
    runs: dict[str, PrecisionRun] = {}
    outputs: dict[str, EncodedTile] = {}
    for precision in precisions:
        encoder = TileEncoder(loaded, EncodeSettings(precision=precision, batch_size=batch_size))
        say(f"{precision}: warm-up")
        encoder.encode(synthetic_tile(8, 8, seed=seed + 1))
        result, samples = _encode_between_peak_samples(encoder, tile, DTYPES[precision], segments, peak_seconds, say)
        best = [max(sample.values()) for sample in samples]
        shape, peak_max = max(((s, v) for sample in samples for s, v in sample.items()), key=lambda sv: sv[1])
        peak = sum(best) / len(best)
        gflops = result.stats.flops / result.stats.total_s / 1e9
        runs[precision] = PrecisionRun(
            seconds=result.stats.total_s,
            ms_per_pixel=1e3 * result.stats.total_s / tile.n_pixels,
            gflops=gflops,
            peak_gflops=peak,
            peak_gflops_max=peak_max,
            peak_shape=shape,
            peak_samples=best,
            peak_by_shape={"x".join(map(str, s)): [sample[s] for sample in samples] for s in samples[0]},
            mfu=gflops / peak,
            mfu_vs_max_peak=gflops / peak_max,
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


def _rows(tile: DPixelTile, row0: int, row1: int) -> DPixelTile:
    """A view of rows [row0, row1) of a tile (no copy)."""
    cut = {f: getattr(tile, f)[:, row0:row1] for f in ("bands", "masks", "sar_ascending", "sar_descending")}
    return replace(tile, **cut)


def _encode_between_peak_samples(
    encoder: TileEncoder,
    tile: DPixelTile,
    dtype: torch.dtype,
    segments: int,
    peak_seconds: float,
    say: Callable[[str], None],
) -> tuple[EncodedTile, list[dict[tuple[int, int, int], float]]]:
    """Encode `tile` in row blocks, sampling the GEMM peak before, between and after them."""
    embeddings = np.zeros((tile.height, tile.width, encoder.loaded.config.saved_dims), np.int8)
    scales = np.zeros((tile.height, tile.width), np.float32)
    stats = EncodeStats(pixels=tile.n_pixels)
    step = -(-tile.height // max(1, segments))
    say("measuring matmul peak")
    samples = [matmul_peaks(dtype, seconds_per_shape=peak_seconds)]
    for row0 in range(0, tile.height, step):
        row1 = min(tile.height, row0 + step)
        say(f"encoding rows {row0}:{row1} of {tile.height}")
        part = encoder.encode(_rows(tile, row0, row1))
        embeddings[row0:row1], scales[row0:row1] = part.embeddings, part.scales
        for name in ("flops", "total_s", "model_s", "prepare_s", "empty_s2", "empty_s1", "skipped_pixels", "fp32_reruns"):
            setattr(stats, name, getattr(stats, name) + getattr(part.stats, name))
        for mine, theirs in ((stats.s2_tokens, part.stats.s2_tokens), (stats.s1_tokens, part.stats.s1_tokens)):
            for length, count in theirs.items():
                mine[length] = mine.get(length, 0) + count
        say("measuring matmul peak")
        samples.append(matmul_peaks(dtype, seconds_per_shape=peak_seconds))
    return EncodedTile(name=tile.name, embeddings=embeddings, scales=scales, stats=stats), samples


def _mean_tokens(histogram: dict[int, int]) -> float:
    total = sum(histogram.values())
    return float(sum(k * v for k, v in histogram.items()) / total) if total else 0.0


__all__ = ["EncoderBench", "PrecisionRun", "random_model", "run_encoder_bench", "synthetic_tile"]
