"""Layer 3: the Tessera v1.0 (QAT) and v1.1 architectures and their upstream-format checkpoint loader."""

from tessera_pipeline.model.architecture import (
    BackboneConfig,
    ModelConfig,
    TesseraModel,
    build_model,
    v1_0_config,
    v1_1_config,
)
from tessera_pipeline.model.checkpoint import LoadedModel, load_checkpoint, load_model

__all__ = [
    "BackboneConfig",
    "LoadedModel",
    "ModelConfig",
    "TesseraModel",
    "build_model",
    "load_checkpoint",
    "load_model",
    "v1_0_config",
    "v1_1_config",
]
