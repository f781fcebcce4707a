"""tessera-pipeline: upstream-compatible Tessera embeddings for every land tile, on any hardware."""

__version__ = "0.1.0"
