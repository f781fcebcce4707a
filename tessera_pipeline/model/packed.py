"""Packed, fused inference of one backbone: many pixels of mixed lengths in one set of big GEMMs.

Every linear layer of the backbone acts token by token, so the tokens of pixels with different
bucket lengths can share one GEMM; only attention, the GRU and the pooling need sequence
structure. A pack holds pixels sorted by length (longest first), their tokens concatenated:
GEMMs run over all tokens at once (rows padded to a multiple of ROW_QUANTUM with zero tokens whose
outputs are never read), attention runs per group of equal length, and the GRU advances only the
prefix of pixels still inside their sequence. No padding token is ever computed, so the
result is exactly upstream's per-bucket computation, without the ragged small batches of buckets.

On CPUs the linears run through oneDNN with bias, ReLU and residual adds fused
(`mkldnn::_linear_pointwise`) when the build has it. In bf16 the weights are cast once and
activations stay bf16 between GEMMs; as under autocast, the day-of-year sinusoid, LayerNorm
statistics, attention softmax, GRU gates and state, pooling weights and sum stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from tessera_pipeline.model.architecture import TransformerEncoder, doy_encoding

#: Token rows are padded to a multiple of this, and GRU batches to a multiple of PIXEL_QUANTUM, so
#: oneDNN sees few distinct GEMM shapes (a new shape costs a kernel build, ~25 % of a big GEMM).
ROW_QUANTUM = 1024
PIXEL_QUANTUM = 32

#: Day-of-year sinusoids are tabulated for DOY 0..366 (0 is the zero token of an empty stream).
DOY_TABLE_SIZE = 367

_MKLDNN = hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fused_available() -> bool:
    """Whether oneDNN's fused linear ops are present in this torch build."""
    return _MKLDNN and torch.backends.mkldnn.is_available()


@dataclass(frozen=True)
class Pack:
    """Pixels sorted by length (non-increasing) and the layout of their concatenated tokens."""

    lengths: np.ndarray  # (P,) tokens per pixel, non-increasing
    offsets: np.ndarray  # (P,) first token row of each pixel
    groups: tuple[tuple[int, int, int, int], ...]  # (first pixel, pixels, length, first token row)

    @classmethod
    def from_lengths(cls, lengths: np.ndarray) -> Pack:
        """Describe a pack; `lengths` must already be sorted longest first."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size and np.any(np.diff(lengths) > 0):
            raise ValueError("pack lengths must be sorted longest first")
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        groups = []
        start = 0
        for length, count in zip(*_runs(lengths)):
            groups.append((start, count, int(length), int(offsets[start])))
            start += count
        return cls(lengths=lengths, offsets=offsets, groups=tuple(groups))

    @property
    def n_tokens(self) -> int:
        """Total tokens in the pack."""
        return int(self.lengths.sum())

    def time_major(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The GRU's layout: step t holds the tokens t of the pixels longer than t, a prefix.

        Returns (active pixels per step, first time-major row of each step, time-major row of each
        token-major row). Pixel p's token t sits at row starts[t] + p.
        """
        steps = np.arange(int(self.lengths[0]) if self.lengths.size else 0)
        active = np.searchsorted(-self.lengths, -steps, side="left")
        starts = np.concatenate([[0], np.cumsum(active)[:-1]]).astype(np.int64)
        pixel = np.repeat(np.arange(len(self.lengths)), self.lengths)
        step = np.arange(self.n_tokens) - np.repeat(self.offsets, self.lengths)
        return active, starts, starts[step] + pixel


def round_up(n: int, quantum: int) -> int:
    """Smallest multiple of `quantum` that is >= n."""
    return -(-n // quantum) * quantum


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length encoding of a 1-D array: (values, counts)."""
    if values.size == 0:
        return values, values
    edges = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], edges])
    counts = np.diff(np.concatenate([starts, [values.size]]))
    return values[starts], counts


class _Linear:
    """A linear layer in the compute dtype, with optional fused ReLU or residual add.

    On the fused bf16 path the weight is stored once in oneDNN's blocked layout for about `rows` input
    rows (a full pack's tokens, or a GRU step's pixels) (`mkldnn._reorder_linear_weight`, as torch.compile's CPU backend does), so no call reorders it
    again: the same kernels and bytes out, measured ~3 % faster per GEMM on AVX512-BF16.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, fused: bool, rows: int) -> None:
        self.weight = weight.detach().to(dtype).contiguous()
        if fused and dtype == torch.bfloat16:
            try:
                self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)
            except RuntimeError:  # a oneDNN build without a bf16 layout for this CPU: plain weights, reordered per call
                pass
        self.bias = bias.detach().to(dtype).contiguous() if bias is not None else None
        self.fused = fused

    def __call__(self, x: torch.Tensor, *, relu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused:
            if residual is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "relu" if relu else "none", [], "")
        y = F.linear(x, self.weight, self.bias)
        if relu:
            y = F.relu_(y)
        return y.add_(residual) if residual is not None else y


class _LayerNormParams(NamedTuple):
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


class _Layer(NamedTuple):
    """One encoder layer's weights in the compute dtype (LayerNorm parameters stay float32)."""

    qkv: _Linear
    out: _Linear
    ffn1: _Linear
    ffn2: _Linear
    norm1: _LayerNormParams
    norm2: _LayerNormParams


def _ln(norm: torch.nn.LayerNorm) -> _LayerNormParams:
    return _LayerNormParams(norm.weight.detach().float(), norm.bias.detach().float(), norm.eps)


class PackedBackbone:
    """Inference-only view of a `TransformerEncoder` that runs packs in fp32 or bf16."""

    def __init__(self, module: TransformerEncoder, dtype: torch.dtype = torch.bfloat16, *, fused: bool | None = None,
                 pack_pixels: int = 256, pack_tokens: int = 16384) -> None:
        cfg = module.cfg
        self.cfg = cfg
        self.dtype = dtype
        device = module.embedding[0].weight.device
        self.device = device
        use_fused = (fused if fused is not None else True) and device.type == "cpu" and fused_available()
        self.fused = use_fused

        def lin(weight: torch.Tensor, bias: torch.Tensor | None, rows: int = pack_tokens) -> _Linear:
            return _Linear(weight, bias, dtype, use_fused, rows)

        emb = module.embedding
        self.emb0 = lin(emb[0].weight, emb[0].bias)
        self.emb2 = lin(emb[2].weight, emb[2].bias)
        self.layers = [
            _Layer(
                qkv=lin(layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias),
                out=lin(layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias),
                ffn1=lin(layer.linear1.weight, layer.linear1.bias),
                ffn2=lin(layer.linear2.weight, layer.linear2.bias),
                norm1=_ln(layer.norm1),
                norm2=_ln(layer.norm2),
            )
            for layer in module.transformer_encoder.layers
        ]
        pool = module.attn_pool
        cell = pool.temporal_context.gru_cell
        self.w_in_rz = lin(torch.cat([cell.W_ir.weight, cell.W_iz.weight]), torch.cat([cell.b_r, cell.b_z]))
        self.w_in_h = lin(cell.W_ih.weight, cell.b_h)
        self.w_rz = lin(torch.cat([cell.W_hr.weight, cell.W_hz.weight]), None, pack_pixels)
        self.w_hh = lin(cell.W_hh.weight, None, pack_pixels)
        self.pool_ln = _ln(pool.layer_norm)
        self.query_w = pool.query.weight.detach().float()
        self.query_b = pool.query.bias.detach().float()
        self.doy_table = doy_encoding(torch.arange(DOY_TABLE_SIZE, device=device), cfg.d_model)

    def _layer_norm(self, x: torch.Tensor, params: _LayerNormParams) -> torch.Tensor:
        """LayerNorm with float32 statistics and affine parameters, output in x's dtype."""
        return F.layer_norm(x, (x.shape[-1],), params.weight, params.bias, params.eps)

    def _attention(self, qkv: torch.Tensor, pack: Pack) -> torch.Tensor:
        """Self-attention per group of equal-length pixels (no mask: upstream uses none)."""
        d, heads = self.cfg.d_model, self.cfg.n_heads
        out = torch.empty(qkv.shape[0], d, dtype=qkv.dtype, device=qkv.device)
        out[pack.n_tokens :].zero_()
        for _, count, length, row in pack.groups:
            rows = slice(row, row + count * length)
            q, k, v = qkv[rows].view(count, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v)
            out[rows].view(count, length, heads, d // heads).copy_(att.transpose(1, 2))
        return out

    def _gru_scores(self, x: torch.Tensor, pack: Pack) -> torch.Tensor:
        """Pooling scores of every token: the custom GRU over each pixel's tokens, LayerNorm, query.

        The GRU runs in time-major order (step t is a contiguous block of the pixels longer than t),
        so each step reads its inputs and previous states as slices. Input projections (with the
        gate biases) are two GEMMs over all tokens; per step, h @ [W_hr; W_hz] and (r*h) @ W_hh run
        with the input projection added inside the GEMM, their batch padded to a multiple of
        PIXEL_QUANTUM rows (padding rows are never read back). Gate non-linearities and the state
        update run in float32.
        """
        d = self.cfg.d_model
        active, starts, tm_row = pack.time_major()
        n_tok = pack.n_tokens
        p_pad = round_up(len(pack.lengths), PIXEL_QUANTUM)
        tm = torch.from_numpy(tm_row).to(x.device)
        token_of = torch.empty_like(tm)
        token_of[tm] = torch.arange(n_tok, device=x.device)
        x_rz = torch.empty(n_tok + p_pad, 2 * d, dtype=self.dtype, device=x.device)
        x_h = torch.empty(n_tok + p_pad, d, dtype=self.dtype, device=x.device)
        x_rz[n_tok:].zero_()
        x_h[n_tok:].zero_()
        torch.index_select(self.w_in_rz(x), 0, token_of, out=x_rz[:n_tok])
        torch.index_select(self.w_in_h(x), 0, token_of, out=x_h[:n_tok])
        # rows: [zero block (h0)] [step 0] [step 1] ... [tail pad]
        states = torch.empty(p_pad + n_tok + p_pad, d, dtype=torch.float32, device=x.device)
        states[:p_pad].zero_()
        states[p_pad + n_tok :].zero_()
        rh = torch.zeros(p_pad, d, dtype=self.dtype, device=x.device)
        prev = 0
        for n, start in zip(active.tolist(), starts.tolist()):
            n_pad = min(round_up(n, PIXEL_QUANTUM), p_pad)
            row = p_pad + start
            h_prev = states[prev : prev + n]
            pre_rz = self.w_rz(states[prev : prev + n_pad].to(self.dtype), residual=x_rz[start : start + n_pad])
            rz = torch.sigmoid_(pre_rz[:n].float())
            r, z = rz[:, :d], rz[:, d:]
            torch.mul(r, h_prev, out=rh[:n])
            h_tilde = torch.tanh_(self.w_hh(rh[:n_pad], residual=x_h[start : start + n_pad])[:n].float())
            torch.lerp(h_prev, h_tilde, z, out=states[row : row + n])
            prev = row
        context = states[p_pad : p_pad + n_tok]
        scores = F.linear(self._layer_norm(context, self.pool_ln), self.query_w, self.query_b)
        return scores.index_select(0, tm)

    def _pool(self, x: torch.Tensor, scores: torch.Tensor, pack: Pack) -> torch.Tensor:
        """Softmax of the scores over each pixel's own tokens, then the weighted sum of x (float32)."""
        d = self.cfg.d_model
        pooled = torch.empty(len(pack.lengths), d, dtype=torch.float32, device=x.device)
        for first, count, length, row in pack.groups:
            rows = slice(row, row + count * length)
            xs = x[rows].view(count, length, d).float()
            if length == 1:
                pooled[first : first + count] = xs[:, 0]
                continue
            weights = torch.softmax(scores[rows].view(count, length, 1), dim=1)
            pooled[first : first + count] = torch.bmm(weights.transpose(1, 2), xs).squeeze(1)
        return pooled

    def __call__(self, tokens: torch.Tensor, pack: Pack) -> torch.Tensor:
        """tokens (n_tokens, bands+1) float32, raw DOY last, in pack order -> pooled (P, d_model) float32."""
        n_tok = tokens.shape[0]
        rows = round_up(n_tok, ROW_QUANTUM)
        if rows != n_tok:
            tokens = torch.cat([tokens, tokens.new_zeros(rows - n_tok, tokens.shape[1])])
        pe = self.doy_table[tokens[:, -1].long().clamp_(0, DOY_TABLE_SIZE - 1)]
        h = self.emb2(self.emb0(tokens[:, :-1].to(self.dtype), relu=True))
        h = torch.add(pe, h).to(self.dtype)
        for layer in self.layers:
            h = self._layer_norm(layer.out(self._attention(layer.qkv(h), pack), residual=h), layer.norm1)
            h = self._layer_norm(layer.ffn2(layer.ffn1(h, relu=True), residual=h), layer.norm2)
        return self._pool(h, self._gru_scores(h, pack), pack)
