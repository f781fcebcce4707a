"""Tessera v1.0 (QAT) and v1.1 as torch modules, parameter-for-parameter compatible with upstream.

Parameter names follow upstream's state dicts exactly (`s2_backbone.embedding.0.weight`, ...,
`dim_reducer.4.bias`), so checkpoints load strictly. The forward passes are written for speed
(packed QKV with SDPA, one GEMM for the GRU input projections) but compute upstream's equations:
post-LN transformer layers, no attention mask, the custom GRU of `CustomTemporalAwarePooling`,
softmax-weighted sum of the transformer outputs, S2-then-S1 concat, and the reducer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ModelVersion = Literal["v1.0", "v1.1"]


@dataclass(frozen=True)
class BackboneConfig:
    """Dimensions of one per-modality encoder."""

    bands: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of a whole Tessera model; `reducer` lists the layer widths of dim_reducer."""

    version: ModelVersion
    s2: BackboneConfig
    s1: BackboneConfig
    reducer: tuple[int, ...]
    saved_dims: int = 128

    @property
    def representation_dim(self) -> int:
        """Width of the model output before truncation to `saved_dims`."""
        return self.reducer[-1]


def v1_1_config(latent_dim: int = 192, n_layers: int = 4, n_heads: int = 4, d_ff: int = 2048) -> ModelConfig:
    """Tessera v1.1 (57,708,738 parameters at the defaults)."""
    d = 4 * latent_dim
    return ModelConfig(
        version="v1.1",
        s2=BackboneConfig(10, d, n_layers, n_heads, d_ff),
        s1=BackboneConfig(2, d, n_layers, n_heads, d_ff),
        reducer=(2 * d, 4 * d, latent_dim),
    )


def v1_0_config(latent_dim: int = 128, n_layers: int = 4, n_heads: int = 4, d_ff: int = 4096, out: int = 128) -> ModelConfig:
    """Tessera v1.0 QAT (45,828,226 parameters at the defaults)."""
    d = 4 * latent_dim
    return ModelConfig(
        version="v1.0",
        s2=BackboneConfig(10, d, n_layers, n_heads, d_ff),
        s1=BackboneConfig(2, d, n_layers, n_heads, d_ff),
        reducer=(2 * d, out),
    )


class _SelfAttention(nn.Module):
    """Holds `nn.MultiheadAttention`'s packed parameters; attention itself runs through SDPA."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """`nn.TransformerEncoderLayer` (post-LN, ReLU, eps 1e-5, batch_first) in eval mode."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class _Layers(nn.Module):
    """Container giving the `transformer_encoder.layers.{i}` key prefix."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff) for _ in range(cfg.n_layers))


class CustomGRUCell(nn.Module):
    """Upstream's hand-written GRU cell: r before W_hh, one bias per gate, h' = (1-z)h + z*h~."""

    def __init__(self, d: int) -> None:
        super().__init__()
        for name in ("W_ir", "W_iz", "W_ih", "W_hr", "W_hz", "W_hh"):
            lin = nn.Linear(d, d, bias=False)
            nn.init.xavier_uniform_(lin.weight)
            setattr(self, name, lin)
        self.b_r = nn.Parameter(torch.zeros(d))
        self.b_z = nn.Parameter(torch.zeros(d))
        self.b_h = nn.Parameter(torch.zeros(d))


class _TemporalContext(nn.Module):
    """Container giving the `attn_pool.temporal_context.gru_cell` key prefix."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gru_cell = CustomGRUCell(d)


class TemporalAwarePooling(nn.Module):
    """`CustomTemporalAwarePooling`: GRU context -> LayerNorm -> query -> softmax over T -> sum_t w_t x_t."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.temporal_context = _TemporalContext(d)
        self.query = nn.Linear(d, 1)
        self.layer_norm = nn.LayerNorm(d)

    def gru(self, x: torch.Tensor) -> torch.Tensor:
        """Run the custom GRU over T from h0 = 0; input projections are one GEMM for all steps."""
        cell = self.temporal_context.gru_cell
        b, t, d = x.shape
        w_in = torch.cat([cell.W_ir.weight, cell.W_iz.weight, cell.W_ih.weight])
        w_rz = torch.cat([cell.W_hr.weight, cell.W_hz.weight])
        x_proj = F.linear(x, w_in).float()
        xr, xz, xh = x_proj.split(d, dim=-1)
        h = torch.zeros(b, d, dtype=torch.float32, device=x.device)
        out = torch.empty(b, t, d, dtype=torch.float32, device=x.device)
        for step in range(t):
            hr, hz = F.linear(h, w_rz).float().split(d, dim=-1)
            r = torch.sigmoid(xr[:, step] + hr + cell.b_r)
            z = torch.sigmoid(xz[:, step] + hz + cell.b_z)
            h_tilde = torch.tanh(xh[:, step] + F.linear(r * h, cell.W_hh.weight).float() + cell.b_h)
            h = (1 - z) * h + z * h_tilde
            out[:, step] = h
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 0:
            return torch.zeros(x.shape[0], x.shape[2], dtype=x.dtype, device=x.device)
        if x.shape[1] == 1:
            return x[:, 0]
        context = self.layer_norm(self.gru(x))
        weights = torch.softmax(self.query(context).float(), dim=1)
        return (weights * x.float()).sum(dim=1)


def doy_encoding(doy: torch.Tensor, d_model: int) -> torch.Tensor:
    """Parameter-free sinusoid of the raw day of year, always float32: sin at even, cos at odd dims."""
    position = doy.float().unsqueeze(-1)
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=doy.device) * -(math.log(10000.0) / d_model)
    )
    angles = position * div_term
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


class TransformerEncoder(nn.Module):
    """One modality's backbone: band embedding + DOY sinusoid, post-LN transformer, GRU-aware pooling."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Sequential(nn.Linear(cfg.bands, cfg.d_model), nn.ReLU(), nn.Linear(cfg.d_model, cfg.d_model))
        self.transformer_encoder = _Layers(cfg)
        self.attn_pool = TemporalAwarePooling(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, bands+1) float32 with the raw DOY last -> pooled (B, d_model) float32."""
        bands, doy = x[..., :-1], x[..., -1]
        with torch.autocast(x.device.type, enabled=False):
            pe = doy_encoding(doy, self.cfg.d_model)
        h = self.embedding(bands) + pe
        for layer in self.transformer_encoder.layers:
            h = layer(h)
        return self.attn_pool(h).float()


class TesseraModel(nn.Module):
    """Two backbones, concat [S2, S1], and the reducer; `forward` returns the saved 128 dims."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.s2_backbone = TransformerEncoder(cfg.s2)
        self.s1_backbone = TransformerEncoder(cfg.s1)
        widths = cfg.reducer
        if cfg.version == "v1.1":
            self.dim_reducer = nn.Sequential(
                nn.Linear(widths[0], widths[1]), nn.LayerNorm(widths[1]), nn.ReLU(), nn.Dropout(0.2), nn.Linear(widths[1], widths[2])
            )
        else:
            self.dim_reducer = nn.Sequential(nn.Linear(widths[0], widths[1]))

    def reduce(self, s2_pooled: torch.Tensor, s1_pooled: torch.Tensor) -> torch.Tensor:
        """Fuse pooled backbone outputs into the full representation (B, reducer[-1]) float32."""
        return self.dim_reducer(torch.cat([s2_pooled, s1_pooled], dim=-1)).float()

    def forward(self, s2: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """s2 (B,T2,11), s1 (B,T1,3) float32 -> (B, saved_dims) float32."""
        rep = self.reduce(self.s2_backbone(s2), self.s1_backbone(s1))
        return rep[:, : self.cfg.saved_dims]


def build_model(cfg: ModelConfig) -> TesseraModel:
    """Build a model in eval mode (dropout off) with freshly initialised (random) weights."""
    return TesseraModel(cfg).eval()
