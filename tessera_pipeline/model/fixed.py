"""Fixed-shape inference of one backbone for accelerators: packs of P pixels that all have L tokens.

The GPU path's forward. Every tensor shape in it is set by (P, L), and the encoder draws P from a
small fixed set per bucket length (`encode.fixed_engine.PackPlan`), so a new tile meets no new
shapes and the forward can be captured as a CUDA graph per shape. Weights are cast once to the
compute dtype and kept on the device (no per-call autocast casts). The computation is upstream's:
post-LN layers without a mask, the custom GRU over each pixel's tokens, softmax pooling over the
transformer outputs; as on the CPU's packed path, the day-of-year sinusoid, LayerNorm statistics,
attention softmax, GRU gates and state, pooling weights and weighted sum stay float32.

Fusions: bias + ReLU of the FFN's first linear and of the embedding run in the GEMM's epilogue
(`torch._addmm_activation`); the GRU's input projections are two GEMMs over all tokens with the gate
biases folded in, and per step the recurrent GEMMs accumulate into them in place (`addmm_`), so a
step is two GEMMs and a few float32 gate kernels, with no host synchronisation. Attention runs
through SDPA's flash or memory-efficient kernels (never cuDNN's, which plans per new shape).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from tessera_pipeline.model import fused_kernels
from tessera_pipeline.model.architecture import TesseraModel, TransformerEncoder, doy_encoding

log = logging.getLogger(__name__)

#: Day-of-year sinusoids are tabulated for DOY 0..366 (0 is the zero token of an empty stream).
DOY_TABLE_SIZE = 367

#: SDPA backends the fixed path allows: flash first, memory-efficient (fp32, older GPUs), math last.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class _Linear(NamedTuple):
    """A linear layer's weight (out, in) and bias, in the compute dtype."""

    weight: torch.Tensor
    bias: torch.Tensor | None


class _Norm(NamedTuple):
    """LayerNorm parameters; float32 where the device supports mixed-dtype LayerNorm."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


class _Layer(NamedTuple):
    qkv: _Linear
    out: _Linear
    ffn1: _Linear
    ffn2: _Linear
    norm1: _Norm
    norm2: _Norm


@lru_cache(maxsize=16)
def mixed_layer_norm_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether LayerNorm takes `dtype` input with float32 weights on `device` (probed once)."""
    if dtype == torch.float32:
        return True
    try:
        x = torch.ones(2, 8, dtype=dtype, device=device)
        y = F.layer_norm(x, (8,), torch.ones(8, device=device), torch.zeros(8, device=device), 1e-5)
        return y.dtype == dtype
    except (RuntimeError, TypeError) as exc:
        log.info("mixed-dtype LayerNorm unavailable on %s (%s): computing it in float32", device, exc)
        return False


def _cast(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> _Linear:
    """Detach and cast a weight and bias once to the compute dtype (contiguous)."""
    return _Linear(weight.detach().to(dtype).contiguous(), None if bias is None else bias.detach().to(dtype).contiguous())


def linear(x: torch.Tensor, lin: _Linear) -> torch.Tensor:
    """x @ W^T + b (bias in the GEMM epilogue)."""
    return F.linear(x, lin.weight, lin.bias)


def linear_relu(x: torch.Tensor, lin: _Linear) -> torch.Tensor:
    """relu(x @ W^T + b) with bias and ReLU fused into the GEMM where the backend can."""
    if lin.bias is None:
        return F.relu_(F.linear(x, lin.weight))
    return torch._addmm_activation(lin.bias, x, lin.weight.t())


class FixedBackbone:
    """Inference-only view of a `TransformerEncoder` for packs of P pixels x L tokens each."""

    def __init__(self, module: TransformerEncoder, dtype: torch.dtype, fused: bool | None = None) -> None:
        cfg = module.cfg
        self.cfg = cfg
        self.dtype = dtype
        self.device = module.embedding[0].weight.device
        #: Residual + LayerNorm and the GRU step through `fused_kernels` (default: wherever Triton runs).
        self.fused = fused_kernels.available(self.device) if fused is None else fused
        if self.fused and not fused_kernels.supported(self.device):
            raise ValueError(f"the Triton kernels cannot run on {self.device} here (Triton missing, or a CPU without its interpreter)")
        self.norm_dtype = torch.float32 if mixed_layer_norm_ok(self.device, dtype) else dtype
        cast = lambda m: _cast(m.weight, m.bias, dtype)  # noqa: E731

        emb = module.embedding
        self.emb0 = cast(emb[0])
        self.emb2 = cast(emb[2])
        self.layers = [
            _Layer(
                qkv=_cast(layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias, dtype),
                out=cast(layer.self_attn.out_proj),
                ffn1=cast(layer.linear1),
                ffn2=cast(layer.linear2),
                norm1=self._norm(layer.norm1),
                norm2=self._norm(layer.norm2),
            )
            for layer in module.transformer_encoder.layers
        ]
        pool = module.attn_pool
        cell = pool.temporal_context.gru_cell
        self.w_in_rz = _cast(torch.cat([cell.W_ir.weight, cell.W_iz.weight]), torch.cat([cell.b_r, cell.b_z]), dtype)
        self.w_in_h = _cast(cell.W_ih.weight, cell.b_h, dtype)
        self.w_rz_t = torch.cat([cell.W_hr.weight, cell.W_hz.weight]).detach().to(dtype).t()
        self.w_hh_t = cell.W_hh.weight.detach().to(dtype).t()
        self.pool_norm = _Norm(pool.layer_norm.weight.detach().float(), pool.layer_norm.bias.detach().float(), pool.layer_norm.eps)
        self.query_w = pool.query.weight.detach().float()
        self.query_b = pool.query.bias.detach().float()
        self.doy_table = doy_encoding(torch.arange(DOY_TABLE_SIZE, device=self.device), cfg.d_model)

    def _norm(self, norm: nn.LayerNorm) -> _Norm:
        return _Norm(norm.weight.detach().to(self.norm_dtype), norm.bias.detach().to(self.norm_dtype), norm.eps)

    def _layer_norm(self, x: torch.Tensor, p: _Norm) -> torch.Tensor:
        """LayerNorm (float32 statistics inside the kernel), output in x's dtype."""
        return F.layer_norm(x, (x.shape[-1],), p.weight, p.bias, p.eps)

    def _attention(self, qkv: torch.Tensor, pixels: int, length: int) -> torch.Tensor:
        """Self-attention of each pixel's L tokens (no mask: upstream uses none); (P*L, D) out."""
        d, heads = self.cfg.d_model, self.cfg.n_heads
        q, k, v = qkv.view(pixels, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        with sdpa_kernel(SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(pixels * length, d)

    def _gru_scores(self, x: torch.Tensor, pixels: int, length: int) -> torch.Tensor:
        """Pooling scores (L, P) float32: the custom GRU over every pixel's tokens, LayerNorm, query.

        Time-major: step t reads rows t*P..(t+1)*P of the input projections, in which the recurrent
        GEMM accumulates in place. Gates and state are float32; the state's compute-dtype copy feeds
        the next GEMM.
        """
        d = self.cfg.d_model
        x_tm = x.view(pixels, length, d).transpose(0, 1).reshape(length * pixels, d)
        x_rz = linear(x_tm, self.w_in_rz).view(length, pixels, 2 * d)
        x_h = linear(x_tm, self.w_in_h).view(length, pixels, d)
        states = torch.empty(length, pixels, d, dtype=torch.float32, device=x.device)
        h = torch.zeros(pixels, d, dtype=torch.float32, device=x.device)
        cast = self.dtype != torch.float32
        h_c = torch.zeros(pixels, d, dtype=self.dtype, device=x.device) if cast else h
        rh = torch.empty(pixels, d, dtype=self.dtype, device=x.device)
        for t in range(length):
            rz = torch.sigmoid(x_rz[t].addmm_(h_c, self.w_rz_t).float())
            torch.mul(rz[:, :d], h, out=rh)
            h_tilde = torch.tanh(x_h[t].addmm_(rh, self.w_hh_t).float())
            h = torch.lerp(h, h_tilde, rz[:, d:], out=states[t])
            if cast:
                h_c.copy_(h)
            else:
                h_c = h
        context = self._layer_norm(states.view(length * pixels, d), self.pool_norm)
        return F.linear(context, self.query_w, self.query_b).view(length, pixels)

    def _gru_scores_fused(self, x: torch.Tensor, pixels: int, length: int) -> torch.Tensor:
        """`_gru_scores` with two fused kernels per step and the score computed from each new state in place.

        Step 0 skips the recurrent GEMMs: with h = 0 they add exactly zero.
        """
        d = self.cfg.d_model
        x_tm = x.view(pixels, length, d).transpose(0, 1).reshape(length * pixels, d)
        x_rz = linear(x_tm, self.w_in_rz).view(length, pixels, 2 * d)
        x_h = linear(x_tm, self.w_in_h).view(length, pixels, d)
        scores = torch.empty(length, pixels, dtype=torch.float32, device=x.device)
        h = torch.zeros(pixels, d, dtype=torch.float32, device=x.device)
        h_c = torch.zeros(pixels, d, dtype=self.dtype, device=x.device)
        rh = torch.empty(pixels, d, dtype=self.dtype, device=x.device)
        norm = self.pool_norm
        for t in range(length):
            g_rz, g_h = x_rz[t], x_h[t]
            if t:
                g_rz.addmm_(h_c, self.w_rz_t)
                fused_kernels.gru_reset(g_rz, h, rh)
                g_h.addmm_(rh, self.w_hh_t)
            fused_kernels.gru_update_score(g_h, g_rz, h, h_c, norm.weight, norm.bias, norm.eps, self.query_w, self.query_b, scores[t])
        return scores

    def _add_norm(self, y: torch.Tensor, residual: torch.Tensor, p: _Norm) -> torch.Tensor:
        """LayerNorm(y + residual): one fused kernel, or the in-place add then LayerNorm."""
        if self.fused:
            return fused_kernels.add_layer_norm(y, residual, p.weight, p.bias, p.eps)
        return self._layer_norm(y.add_(residual), p)

    def __call__(self, bands: torch.Tensor, doy: torch.Tensor, pixels: int, length: int) -> torch.Tensor:
        """bands (P*L, b) float32 standardised, doy (P*L,) int64, pixel-major -> pooled (P, D) float32."""
        d = self.cfg.d_model
        h = linear(linear_relu(bands.to(self.dtype), self.emb0), self.emb2)
        h.add_(self.doy_table.index_select(0, doy))
        for layer in self.layers:
            h = self._add_norm(linear(self._attention(linear(h, layer.qkv), pixels, length), layer.out), h, layer.norm1)
            h = self._add_norm(linear(linear_relu(h, layer.ffn1), layer.ffn2), h, layer.norm2)
        if length == 1:
            return h.float()
        scores = self._gru_scores_fused(h, pixels, length) if self.fused else self._gru_scores(h, pixels, length)
        weights = torch.softmax(scores.t(), dim=1)
        return torch.bmm(weights.unsqueeze(1), h.view(pixels, length, d).float()).squeeze(1)


class FixedReducer:
    """The reducer MLP with weights cast once; the same precision policy as autocast on the CPU path.

    Linears take compute-dtype inputs; LayerNorm and ReLU run in float32 (autocast's fp32 list).
    """

    def __init__(self, model: TesseraModel, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.steps: list[tuple[str, tuple[torch.Tensor, ...], float]] = []
        for m in model.dim_reducer:
            if isinstance(m, nn.Linear):
                self.steps.append(("linear", (m.weight.detach().to(dtype), m.bias.detach().to(dtype)), 0.0))
            elif isinstance(m, nn.LayerNorm):
                self.steps.append(("norm", (m.weight.detach().float(), m.bias.detach().float()), m.eps))
            elif isinstance(m, nn.ReLU):
                self.steps.append(("relu", (), 0.0))
            elif not isinstance(m, nn.Dropout):
                raise TypeError(f"unsupported reducer layer {type(m).__name__}")

    def __call__(self, s2: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """Pooled (N, D) float32 per stream -> full representations (N, reducer[-1]) float32."""
        x = torch.cat([s2, s1], dim=-1)
        for kind, params, eps in self.steps:
            if kind == "linear":
                x = F.linear(x.to(self.dtype), *params)
            elif kind == "norm":
                x = F.layer_norm(x.float(), (x.shape[-1],), *params, eps)
            else:
                x = F.relu(x)
        return x.float()


class GraphedBackbone:
    """Replays one CUDA graph per pack shape (P, L), captured on first use, around a `FixedBackbone`.

    Inputs are copied into static buffers shared by all graphs; all graphs share one memory pool,
    which is safe because they replay one at a time on one stream and each output is copied out
    before the next replay. Capture runs on a side stream without emptying the allocator's cache,
    in thread-local mode so the encoder's prefetch thread may keep allocating pinned memory.
    """

    def __init__(self, backbone: FixedBackbone, max_tokens: int) -> None:
        self.backbone = backbone
        device = backbone.device
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device=device)
        self.bands = torch.zeros(max_tokens, backbone.cfg.bands, dtype=torch.float32, device=device)
        self.doy = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def warm_up(self, pixels: int, length: int) -> None:
        """Run once eagerly on the capture stream (lazy cuBLAS and kernel set-up stays out of captures)."""
        self.stream.wait_stream(torch.cuda.current_stream(self.backbone.device))
        with torch.cuda.stream(self.stream):
            n = pixels * length
            self.backbone(self.bands[:n], self.doy[:n], pixels, length)
        torch.cuda.current_stream(self.backbone.device).wait_stream(self.stream)

    def _capture(self, pixels: int, length: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        n = pixels * length
        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream(self.backbone.device))
        with torch.cuda.stream(self.stream):
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                out = self.backbone(self.bands[:n], self.doy[:n], pixels, length)
            finally:
                graph.capture_end()
        torch.cuda.current_stream(self.backbone.device).wait_stream(self.stream)
        return graph, out

    @property
    def shapes(self) -> int:
        """Pack shapes captured so far."""
        return len(self.graphs)

    def __call__(self, bands: torch.Tensor, doy: torch.Tensor, pixels: int, length: int) -> torch.Tensor:
        """Same contract as `FixedBackbone.__call__`; the result is a view valid until the next call."""
        n = pixels * length
        self.bands[:n].copy_(bands)
        self.doy[:n].copy_(doy)
        key = (pixels, length)
        if key not in self.graphs:
            self.graphs[key] = self._capture(pixels, length)
        graph, out = self.graphs[key]
        graph.replay()
        return out
