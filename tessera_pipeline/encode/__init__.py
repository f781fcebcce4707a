"""Layer 4: encode one tile (prepare, batched forward under a precision policy, quantise)."""

from tessera_pipeline.encode.encoder import EncodedTile, EncodeSettings, EncodeStats, TileEncoder
from tessera_pipeline.encode.quantise import dequantise, quantise

__all__ = ["EncodeSettings", "EncodeStats", "EncodedTile", "TileEncoder", "dequantise", "quantise"]
