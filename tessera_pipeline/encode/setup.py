"""Build a ready encoder from a checkpoint and describe its outputs: shared by the CLI and run workers.

Loading is the expensive part (a 230 MB checkpoint): callers build one `TileEncoder` and keep it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tessera_pipeline import __version__
from tessera_pipeline.encode.encoder import EncodedTile, EncodeSettings, TileEncoder
from tessera_pipeline.encode.normalisation import DataSource
from tessera_pipeline.hardware import HardwareInfo, Precision, configure_threads, default_precision, detect
from tessera_pipeline.inputs.fingerprint import input_fingerprint
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model.architecture import ModelVersion
from tessera_pipeline.model.checkpoint import load_model

log = logging.getLogger(__name__)


def build_encoder(
    checkpoint: str,
    *,
    version: ModelVersion | None = None,
    data_source: DataSource | None = None,
    precision: Precision | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    seed: int = 0,
    device: str = "auto",
    trust_checkpoint: bool = False,
) -> tuple[TileEncoder, HardwareInfo]:
    """Load the checkpoint strictly and configure threads and precision for this hardware."""
    hw = detect(device)
    if hw.device == "cpu":
        configure_threads(threads)
    loaded = load_model(checkpoint, version=version, trust_pickle=trust_checkpoint)
    if data_source is None:
        from_ckpt = loaded.checkpoint_config.get("data_source")
        data_source = from_ckpt if from_ckpt in ("mpc", "aws") else "mpc"
    settings = EncodeSettings(
        precision=precision or default_precision(hw),
        batch_size=batch_size,
        data_source=data_source,
        seed=seed,
        device=hw.device,
        kernels="packed" if hw.device == "cpu" else "module",
    )
    log.info("encoder: %s on %s, %s, %s, batch %d, %d threads", loaded.config.version, hw.kind, settings.precision, data_source, batch_size, torch.get_num_threads())
    return TileEncoder(loaded, settings), hw


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
        "checkpoint_source": encoder.loaded.source,
        "model_version": encoder.loaded.config.version,
        "data_source": encoder.settings.data_source if encoder.version == "v1.1" else "v1.0",
        "precision": encoder.settings.precision,
        "kernels": encoder.settings.kernels,
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
    }
