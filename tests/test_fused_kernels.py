"""The GPU path's Triton kernels (residual + LayerNorm, the GRU step): the unfused torch ops' numbers, and upstream's golden outputs.

On a CUDA device they run compiled; elsewhere in Triton's CPU interpreter with a GPU's rounding
(tests/triton_support.py), so CI checks the kernels' arithmetic without a GPU. Skipped where Triton
is not installed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tessera_pipeline.bench.quality import compare
from tessera_pipeline.encode import EncodeSettings, TileEncoder
from tessera_pipeline.inputs.dpixel import open_tile
from tessera_pipeline.model import fused_kernels, load_model
from tessera_pipeline.model.fixed import FixedBackbone, mixed_layer_norm_ok
from golden_support import assert_int8_matches, assert_scales_match
from triton_support import interpreted_triton

pytest.importorskip("triton")

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
CASES = json.loads((GOLDEN / "cases.json").read_text())
V1_1_CASES = [c for c in CASES if c["model"] == "v1.1"]
DEVICE = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module", autouse=True)
def kernels_run_here() -> Iterator[None]:
    """Compiled on a GPU; interpreted on a CPU."""
    if DEVICE.type == "cuda":
        yield
        return
    if not fused_kernels.interpreted():
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py sets it)")
    with interpreted_triton():
        yield


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each value of a low-precision tensor (as float32)."""
    mantissa = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}[x.dtype]
    return torch.exp2(torch.floor(torch.log2(x.float().abs().clamp_min(1e-30))) - mantissa)


def test_the_kernels_run_on_this_device_and_are_the_default_only_on_cuda() -> None:
    assert fused_kernels.supported(DEVICE)
    assert fused_kernels.available(DEVICE) == (DEVICE.type == "cuda")


@pytest.mark.parametrize("precision", list(DTYPES))
def test_add_layer_norm_equals_the_in_place_add_then_layer_norm(precision: str) -> None:
    dtype = DTYPES[precision]
    g = torch.Generator().manual_seed(1)
    n, d = 203, 96  # rows not a multiple of a program's rows; width not a power of two
    y = (3 * torch.randn(n, d, generator=g)).to(dtype).to(DEVICE)
    res = torch.randn(n, d, generator=g).to(dtype).to(DEVICE)
    norm_dtype = torch.float32 if mixed_layer_norm_ok(DEVICE, dtype) else dtype  # as FixedBackbone keeps them
    w, b = torch.randn(d, generator=g).to(norm_dtype).to(DEVICE), torch.randn(d, generator=g).to(norm_dtype).to(DEVICE)
    expected = F.layer_norm(y.clone().add_(res), (d,), w, b, 1e-5)
    got = fused_kernels.add_layer_norm(y, res, w, b, 1e-5)
    assert got.dtype == dtype and got.shape == (n, d)
    diff = (got.float() - expected.float()).abs()
    if dtype == torch.float32:
        assert diff.max() <= 1e-5
    else:
        assert (diff <= _ulp(expected)).all()
        assert (got == expected).float().mean() >= 0.99


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gru_step_kernels_equal_the_torch_gate_arithmetic(precision: str) -> None:
    dtype = DTYPES[precision]
    g = torch.Generator().manual_seed(2)
    p, d = 37, 80
    g_rz = (2 * torch.randn(p, 2 * d, generator=g)).to(dtype).to(DEVICE)
    g_h = (2 * torch.randn(p, d, generator=g)).to(dtype).to(DEVICE)
    h = torch.randn(p, d, generator=g).to(DEVICE)
    norm_w, norm_b = torch.randn(d, generator=g).to(DEVICE), torch.randn(d, generator=g).to(DEVICE)
    query_w, query_b = torch.randn(1, d, generator=g).to(DEVICE), torch.randn(1, generator=g).to(DEVICE)
    rz = torch.sigmoid(g_rz.float())
    want_rh = (rz[:, :d] * h).to(dtype)
    want_h = torch.lerp(h, torch.tanh(g_h.float()), rz[:, d:])
    want_score = F.linear(F.layer_norm(want_h, (d,), norm_w, norm_b, 1e-5), query_w, query_b).squeeze(1)

    rh = torch.empty(p, d, dtype=dtype, device=DEVICE)
    fused_kernels.gru_reset(g_rz, h, rh)
    h_c = torch.empty(p, d, dtype=dtype, device=DEVICE)
    scores = torch.empty(p, device=DEVICE)
    fused_kernels.gru_update_score(g_h, g_rz, h, h_c, norm_w, norm_b, 1e-5, query_w, query_b, scores)

    assert (rh.float() - want_rh.float()).abs().max() <= 1e-6 + _ulp(want_rh).max() * (dtype != torch.float32)
    assert (h - want_h).abs().max() <= 2e-6  # tanh by exp: within float32 rounding of torch's
    assert (h_c.float() - h).abs().max() <= (_ulp(h.to(dtype)).max() if dtype != torch.float32 else 0)
    assert (scores - want_score).abs().max() <= 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_backbone_with_kernels_is_as_close_to_float32_as_without(precision: str) -> None:
    loaded = load_model(str(GOLDEN / "v1_1" / "checkpoint.pt"))
    module = loaded.model.s2_backbone.to(DEVICE)
    g = torch.Generator().manual_seed(3)
    pixels, length = 48, 24
    bands = torch.randn(pixels * length, module.cfg.bands, generator=g).to(DEVICE)
    doy = torch.randint(1, 366, (pixels * length,), generator=g).to(DEVICE)
    with torch.inference_mode():
        reference = FixedBackbone(module, torch.float32, fused=False)(bands, doy, pixels, length)
        plain = FixedBackbone(module, DTYPES[precision], fused=False)(bands, doy, pixels, length)
        kernels = FixedBackbone(module, DTYPES[precision], fused=True)
        assert kernels.fused
        fused = kernels(bands, doy, pixels, length)
    if precision == "fp32":
        assert (fused - reference).abs().max() <= 1e-4
        return
    err_plain = (plain - reference).abs().mean()
    err_fused = (fused - reference).abs().mean()
    assert err_fused <= 1.25 * err_plain
    assert F.cosine_similarity(fused, reference).min() >= 0.9999


#: The interpreter takes ~20 ms a launch, and a golden tile runs thousands of GRU steps: on a CPU the first 8 rows
#: of one tile (91 dates; tile_b has 300, hence ~3x the steps) in bf16, the GPU default; on a GPU both whole, in fp32 too.
GOLDEN_HERE = V1_1_CASES if DEVICE.type == "cuda" else V1_1_CASES[:1]
GOLDEN_PRECISIONS = ["fp32", "bf16"] if DEVICE.type == "cuda" else ["bf16"]


@pytest.mark.parametrize("precision", GOLDEN_PRECISIONS)
@pytest.mark.parametrize("case", GOLDEN_HERE, ids=[c["name"] for c in GOLDEN_HERE])
def test_fixed_path_through_the_kernels_reproduces_upstreams_golden_outputs(case: dict, precision: str) -> None:
    """fp32 at the golden bar (>= 99.9 % identical, never off by 2); bf16, the GPU default, at the low-precision bar."""
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    tile = open_tile(GOLDEN / case["input"])
    expected_int8, expected_scales = np.load(GOLDEN / case["expected_int8"]), np.load(GOLDEN / case["expected_scales"])
    if DEVICE.type == "cpu":  # the interpreter: the tile's first rows (every pixel's output depends on it alone)
        rows = 8
        tile = dataclasses.replace(tile, **{k: getattr(tile, k)[:, :rows] for k in ("bands", "masks", "sar_ascending", "sar_descending")})
        expected_int8, expected_scales = expected_int8[:rows], expected_scales[:rows]
    settings = EncodeSettings(device=str(DEVICE), kernels="fixed", data_source=case["data_source"] or "mpc", batch_size=1024,
                              precision=precision, fused_kernels=True)  # type: ignore[arg-type]
    encoder = TileEncoder(loaded, settings)
    assert encoder.triton_kernels
    got = encoder.encode(tile)
    if precision == "fp32":
        assert_int8_matches(got.embeddings, expected_int8)
        assert_scales_match(got.scales, expected_scales)
        return
    q = compare(expected_int8, expected_scales, got.embeddings, got.scales)
    assert np.isfinite(got.scales).all()
    assert q.exact + q.off_by_1 >= 0.985 and q.cosine_min >= 0.999, q
