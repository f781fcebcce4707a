"""Triton kernels for what is not GEMM in the fixed-shape forward: residual + LayerNorm, and a GRU step's gates.

On a GPU, a post-LN layer's residual add and LayerNorm were two memory-bound kernels, and each GRU
step ran about nine small ones (casts, sigmoid, product, tanh, lerp, copy) plus, after the loop, a
float32 LayerNorm and a query GEMV over every state. Here:

- `add_layer_norm(y, residual, norm)`: LN(y + residual) in one pass. The sum is rounded to the
  compute dtype first, exactly as the unfused `y.add_(residual)` did; statistics are float32.
- `gru_reset(g_rz, h, rh)`: rh = sigmoid(g_r) * h in the compute dtype (the recurrent GEMM's input).
- `gru_update_score(g_h, g_rz, h, h_c, pool_norm, query, scores_t)`: z = sigmoid(g_z),
  h <- lerp(h, tanh(g_h), z) in float32 (in place), its compute-dtype copy, and the step's pooling
  score LN(h) . q + b, so the (L, P, D) float32 states are never written.

They are used by default on CUDA devices where Triton is installed (`available`). They also run on
the CPU under Triton's interpreter (`TRITON_INTERPRET=1`, set before Triton is first imported), when
asked for explicitly (`supported`): that is how they are tested without a GPU.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

#: Rows per program of the row kernels (one row is a model-width vector); the interpreter runs a program's
#: rows as one numpy operation, so it takes many (every row's arithmetic is independent of the others).
ROWS_PER_PROGRAM = 4
INTERPRETED_ROWS_PER_PROGRAM = 512


@functools.lru_cache(maxsize=1)
def _triton() -> Any:
    """Import Triton once (None when it is not installed)."""
    try:
        import triton
    except ImportError:
        return None
    return triton


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device) -> bool:
    """Whether the kernels are used by default on `device`: a CUDA device, Triton installed, compiled (not interpreted)."""
    return device.type == "cuda" and not interpreted() and _triton() is not None


def supported(device: torch.device) -> bool:
    """Whether the kernels can run on `device` at all: compiled on CUDA, or interpreted on a CPU."""
    if _triton() is None:
        return False
    return device.type == ("cpu" if interpreted() else "cuda")


def _kernels() -> Any:
    """The module of compiled-on-first-use kernels (imported lazily, so importing this module never needs Triton)."""
    if _triton() is None:
        raise RuntimeError("Triton is not installed")
    from tessera_pipeline.model import triton_kernels

    return triton_kernels


def _launch(rows: int) -> tuple[tuple[int], int]:
    """The grid for `rows` rows and the rows each program takes."""
    per = INTERPRETED_ROWS_PER_PROGRAM if interpreted() else ROWS_PER_PROGRAM
    return (-(-rows // per),), per


def _block(d: int) -> int:
    return 1 << (d - 1).bit_length()


def _warps(d: int) -> int:
    return 8 if d >= 1024 else 4


def add_layer_norm(y: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm(y + residual) over the last dim of (N, D) tensors; the sum rounded to y's dtype, statistics float32."""
    n, d = y.shape
    out = torch.empty_like(y)
    grid, per = _launch(n)
    _kernels().add_layer_norm_kernel[grid](y, residual, weight, bias, out, n, eps, D=d, BLOCK_D=_block(d), ROWS=per,
                                           num_warps=_warps(d))
    return out


def gru_reset(g_rz: torch.Tensor, h: torch.Tensor, rh: torch.Tensor) -> None:
    """rh = sigmoid(g_rz[:, :D]) * h, written in rh's dtype; g_rz (P, 2D) compute dtype, h (P, D) float32."""
    p, d = h.shape
    grid, per = _launch(p)
    _kernels().gru_reset_kernel[grid](g_rz, h, rh, p, D=d, BLOCK_D=_block(d), ROWS=per, num_warps=_warps(d))


def gru_update_score(g_h: torch.Tensor, g_rz: torch.Tensor, h: torch.Tensor, h_c: torch.Tensor, norm_weight: torch.Tensor,
                     norm_bias: torch.Tensor, eps: float, query_w: torch.Tensor, query_b: torch.Tensor, scores: torch.Tensor) -> None:
    """One GRU step's update (h in place, h_c its compute-dtype copy) and its pooling score into `scores` (P,)."""
    p, d = h.shape
    grid, per = _launch(p)
    _kernels().gru_update_score_kernel[grid](g_h, g_rz, h, h_c, norm_weight, norm_bias, query_w, query_b, scores, p, eps,
                                             D=d, BLOCK_D=_block(d), ROWS=per, num_warps=_warps(d))


__all__ = ["add_layer_norm", "available", "gru_reset", "gru_update_score", "interpreted", "supported"]
