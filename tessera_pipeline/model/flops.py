"""Useful forward FLOPs of the Tessera architectures (1 MAC = 2 FLOPs), per tessera-model.md 1.6."""

from __future__ import annotations

from tessera_pipeline.model.architecture import BackboneConfig, ModelConfig


def backbone_flops(cfg: BackboneConfig, tokens: int) -> float:
    """One backbone on one pixel with `tokens` observations: embedding, layers, GRU, query."""
    t, d, f, b = tokens, cfg.d_model, cfg.d_ff, cfg.bands
    embedding = t * (2 * b * d + 2 * d * d)
    layers = cfg.n_layers * (8 * t * d * d + 4 * t * t * d + 4 * t * d * f)
    return float(embedding + layers + 12 * t * d * d + 2 * t * d)


def reducer_flops(cfg: ModelConfig) -> float:
    """The reducer MLP on one pixel."""
    widths = cfg.reducer
    return float(sum(2 * a * b for a, b in zip(widths[:-1], widths[1:])))


def pixel_flops(cfg: ModelConfig, s2_tokens: int, s1_tokens: int) -> float:
    """Whole model on one pixel at the given stream lengths."""
    return backbone_flops(cfg.s2, s2_tokens) + backbone_flops(cfg.s1, s1_tokens) + reducer_flops(cfg)
