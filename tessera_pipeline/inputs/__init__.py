"""Layer 2: read and validate one tile's d-pixel arrays (local path or s3://), and make synthetic ones."""

from tessera_pipeline.inputs.tile import DPIXEL_FILES, DPixelTile

__all__ = ["DPIXEL_FILES", "DPixelTile"]
