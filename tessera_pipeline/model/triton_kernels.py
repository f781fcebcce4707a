"""The Triton kernels behind `model.fused_kernels` (imported only where Triton is installed).

Module-level definitions, because Triton resolves the helpers a kernel calls through its module's globals.
Row counts are not specialised on, so each kernel compiles once per dtype (at the encoder's warm-up), never
again for a new pack size (nor during a CUDA graph's capture).
"""

# mypy: ignore-errors
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)

@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))

@triton.jit(do_not_specialize=["n_rows"])
def add_layer_norm_kernel(y_ptr, r_ptr, w_ptr, b_ptr, out_ptr, n_rows, eps,
                          D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_D)[None, :]
    col_ok = cols < D
    mask = (rows < n_rows) & col_ok
    offs = rows * D + cols
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = (y + r).to(out_ptr.dtype.element_ty).to(tl.float32)
    mean = tl.sum(s, axis=1) / D
    diff = tl.where(mask, s - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (diff * rstd[:, None] * w + b).to(out_ptr.dtype.element_ty), mask=mask)

@triton.jit(do_not_specialize=["n_rows"])
def gru_reset_kernel(g_ptr, h_ptr, rh_ptr, n_rows,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_D)[None, :]
    mask = (rows < n_rows) & (cols < D)
    g = tl.load(g_ptr + rows * (2 * D) + cols, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + rows * D + cols, mask=mask, other=0.0)
    tl.store(rh_ptr + rows * D + cols, (_sigmoid(g) * h).to(rh_ptr.dtype.element_ty), mask=mask)

@triton.jit(do_not_specialize=["n_rows"])
def gru_update_score_kernel(gh_ptr, grz_ptr, h_ptr, hc_ptr, nw_ptr, nb_ptr, qw_ptr, qb_ptr, score_ptr,
                            n_rows, eps, D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    row1 = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    rows = row1[:, None]
    cols = tl.arange(0, BLOCK_D)[None, :]
    col_ok = cols < D
    mask = (rows < n_rows) & col_ok
    offs = rows * D + cols
    h_tilde = _tanh(tl.load(gh_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    z = _sigmoid(tl.load(grz_ptr + rows * (2 * D) + D + cols, mask=mask, other=0.0).to(tl.float32))
    h = tl.load(h_ptr + offs, mask=mask, other=0.0)
    h_new = tl.where(z < 0.5, h + z * (h_tilde - h), h_tilde - (h_tilde - h) * (1.0 - z))
    tl.store(h_ptr + offs, h_new, mask=mask)
    tl.store(hc_ptr + offs, h_new.to(hc_ptr.dtype.element_ty), mask=mask)
    mean = tl.sum(tl.where(mask, h_new, 0.0), axis=1) / D
    diff = tl.where(mask, h_new - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + eps)
    w = tl.load(nw_ptr + cols, mask=col_ok, other=0.0)
    b = tl.load(nb_ptr + cols, mask=col_ok, other=0.0)
    q = tl.load(qw_ptr + cols, mask=col_ok, other=0.0)
    context = tl.where(mask, diff * rstd[:, None] * w + b, 0.0)
    score = tl.sum(context * q, axis=1) + tl.load(qb_ptr)
    tl.store(score_ptr + row1, score, mask=row1 < n_rows)
