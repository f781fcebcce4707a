"""Build a ready encoder from a checkpoint and describe its outputs: shared by the CLI and run workers.

Loading is the expensive part (a 230 MB checkpoint): callers build one `TileEncoder` and keep it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch

from tessera_pipeline import __version__
from tessera_pipeline.encode.encoder import EncodedTile, EncodeSettings, TileEncoder
from tessera_pipeline.encode.normalisation import DataSource
from tessera_pipeline.errors import ArgumentError
from tessera_pipeline.hardware import HardwareInfo, configure_threads, detect
from tessera_pipeline.inputs.fingerprint import input_fingerprint
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model.architecture import ModelVersion
from tessera_pipeline.model.checkpoint import load_model
from tessera_pipeline.precision import DEVICE_MEMORY_BUDGET, Precision, class_defaults

log = logging.getLogger(__name__)

def build_encoder(
    checkpoint: str,
    *,
    version: ModelVersion | None = None,
    data_source: DataSource | None = None,
    precision: Precision | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    seed: int = 0,
    device: str = "auto",
    trust_checkpoint: bool = False,
    cuda_graphs: bool = False,
    device_budget: int | None = DEVICE_MEMORY_BUDGET,
    fused_kernels: bool | None = None,
) -> tuple[TileEncoder, HardwareInfo]:
    """Load the checkpoint strictly and configure threads, precision and kernels for this hardware.

    `device` is "auto", "cpu" or "cuda[:N]". CPUs run the packed oneDNN path; accelerators the
    fixed-shape path (warmed up here, so the first tile runs at steady-state speed). `batch_size`
    and `precision` None pick the class's defaults (`precision.class_defaults`). `device_budget` bounds the
    accelerator path's device memory in bytes (None: unbounded). `fused_kernels` None uses the Triton
    kernels wherever they run (`EncodeSettings`).
    """
    check_device(device)
    hw = detect(device)
    if hw.device == "cpu":
        configure_threads(threads)
    loaded = load_model(checkpoint, version=version, trust_pickle=trust_checkpoint)
    from_ckpt = loaded.checkpoint_config.get("data_source")
    if data_source is None:
        data_source = from_ckpt if from_ckpt in ("mpc", "aws") else "mpc"
    elif from_ckpt in ("mpc", "aws") and from_ckpt != data_source and loaded.config.version == "v1.1":
        log.warning(
            "the checkpoint %s declares data source %r but %r was asked for: its normalisation will not match "
            "the one the model was trained with, and the embeddings will differ",
            checkpoint_label(loaded.source), from_ckpt, data_source,
        )
    settings = encode_settings(hw, precision=precision, batch_size=batch_size, data_source=data_source, seed=seed,
                               cuda_graphs=cuda_graphs, device_budget=device_budget, fused_kernels=fused_kernels)
    log.info("encoder: %s on %s, %s, %s, batch %d, %s kernels, %d threads", loaded.config.version, hw.kind, settings.precision,
             data_source, settings.batch_size, settings.kernels, torch.get_num_threads())
    encoder = TileEncoder(loaded, settings)
    encoder.warm_up()
    return encoder, hw


def encode_settings(hw: HardwareInfo, *, precision: Precision | None = None, batch_size: int | None = None,
                    data_source: DataSource = "mpc", seed: int = 0, cuda_graphs: bool = False,
                    device_budget: int | None = DEVICE_MEMORY_BUDGET, fused_kernels: bool | None = None) -> EncodeSettings:
    """How `run`'s actors encode on this hardware: the class's precision and pack size unless given, packed
    kernels on a CPU, the fixed-shape engine on an accelerator (calibration times exactly these)."""
    on_cpu = hw.device == "cpu"
    defaults = class_defaults(hw.kind, hw.gpu_capability)
    return EncodeSettings(
        precision=precision or defaults.precision,
        batch_size=batch_size or defaults.batch_size,
        data_source=data_source,
        seed=seed,
        device=hw.device,
        kernels="packed" if on_cpu else "fixed",
        cuda_graphs=cuda_graphs and not on_cpu,
        device_budget=device_budget,
        fused_kernels=fused_kernels,
    )


def checkpoint_label(source: str) -> str:
    """How provenance names a checkpoint: a remote URL without its query (which may hold a signature),
    or a local file's name only (a path on the writer's machine means nothing in a shared store)."""
    if "://" in source:
        parts = urlsplit(source)
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return Path(source).name


def check_device(device: str) -> None:
    """Refuse a device string other than auto, cpu, cuda or cuda:N, and CUDA where torch sees none."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ArgumentError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ArgumentError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")


def model_attributes(encoder: TileEncoder) -> dict[str, Any]:
    """What a store records about the model at its root."""
    cfg = encoder.loaded.config
    return {
        "model_version": cfg.version,
        "checkpoint_sha256": encoder.loaded.checkpoint_sha256,
        "dimensions": cfg.saved_dims,
        "representation_dim": cfg.representation_dim,
        "data_source": encoder.settings.data_source if cfg.version == "v1.1" else "v1.0",
    }


def provenance(encoder: TileEncoder, hw: HardwareInfo, tile: DPixelTile, encoded: EncodedTile) -> dict[str, Any]:
    """Everything needed to say how a tile's bytes were made (recorded with the tile)."""
    s = encoded.stats
    return {
        "checkpoint_sha256": encoder.loaded.checkpoint_sha256,
        "checkpoint_source": checkpoint_label(encoder.loaded.source),
        "model_version": encoder.loaded.config.version,
        "data_source": encoder.settings.data_source if encoder.version == "v1.1" else "v1.0",
        "precision": encoder.settings.precision,
        "kernels": encoder.settings.kernels,
        "triton_kernels": encoder.triton_kernels,
        "device_kind": hw.kind,
        "torch_version": torch.__version__,
        "pipeline_version": __version__,
        "seed": encoder.settings.seed,
        "input_fingerprint": input_fingerprint(tile),
        "timings": {"encode_s": round(s.total_s, 3), "model_s": round(s.model_s, 3), "prepare_s": round(s.prepare_s, 3)},
        "pixels": s.pixels,
        "skipped_pixels": s.skipped_pixels,
        "empty_s2_pixels": s.empty_s2,
        "empty_s1_pixels": s.empty_s1,
        "fp32_reruns": s.fp32_reruns,
    }
