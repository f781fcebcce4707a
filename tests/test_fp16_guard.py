"""The fp16 guard (issue 20, item 3): a batch that overflows fp16 runs again in float32, and is counted.

A random-weight model whose embedding and reducer weights are scaled until fp16 overflows (float32
is unaffected: LayerNorm follows both) must encode to exactly float32's bytes under fp16, with the
re-runs counted in the stats and the tile's provenance; with normal weights nothing is re-run.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera_pipeline.encode import EncodeSettings, TileEncoder
from tessera_pipeline.encode.setup import provenance
from tessera_pipeline.hardware import HardwareInfo
from tessera_pipeline.inputs.synthetic import synthetic_arrays
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model import load_model
from tessera_pipeline.model.checkpoint import LoadedModel

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
KERNELS = ["fixed", "packed", "module"]


@pytest.fixture(scope="module")
def normal() -> LoadedModel:
    return load_model(str(GOLDEN / "v1_1" / "checkpoint.pt"))


@pytest.fixture(scope="module")
def overflowing(normal: LoadedModel) -> LoadedModel:
    """The same model with weights scaled until fp16 overflows in both backbones (empty streams too) and in the reducer."""
    model = copy.deepcopy(normal.model)
    with torch.no_grad():
        for backbone in (model.s2_backbone, model.s1_backbone):
            backbone.embedding[0].weight.mul_(1e7)
            backbone.embedding[0].bias.mul_(1e7)
        model.dim_reducer[0].weight.mul_(1e6)
    return replace(normal, model=model)


def _tile() -> DPixelTile:
    arrays = synthetic_arrays(8, 7, seed=3, n_s2=24, n_s1_asc=8, n_s1_desc=8)
    for key in ("masks", "sar_ascending", "sar_descending"):
        arrays[key][:, :1] = 0
    return DPixelTile(name="t", **arrays)


@pytest.mark.parametrize("kernels", KERNELS)
def test_overflowing_fp16_batches_rerun_in_fp32_and_give_fp32_bytes(overflowing: LoadedModel, kernels: str) -> None:
    tile = _tile()
    settings = EncodeSettings(kernels=kernels, batch_size=4, chunk_pixels=7 * 3)  # type: ignore[arg-type]
    ref = TileEncoder(overflowing, replace(settings, precision="fp32")).encode(tile)
    encoder = TileEncoder(overflowing, replace(settings, precision="fp16"))
    low = encoder.encode(tile)
    assert np.isfinite(low.scales).all()
    assert np.array_equal(low.embeddings, ref.embeddings) and np.array_equal(low.scales, ref.scales)
    assert low.stats.fp32_reruns > 0 and ref.stats.fp32_reruns == 0
    hw = HardwareInfo("cpu-test", "cpu", "test", frozenset(), 1, (0,))
    assert provenance(encoder, hw, tile, low)["fp32_reruns"] == low.stats.fp32_reruns


@pytest.mark.parametrize("kernels", KERNELS)
def test_normal_weights_rerun_nothing_under_fp16(normal: LoadedModel, kernels: str) -> None:
    low = TileEncoder(normal, EncodeSettings(kernels=kernels, precision="fp16", batch_size=2)).encode(_tile())  # type: ignore[arg-type]
    assert low.stats.fp32_reruns == 0 and np.isfinite(low.scales).all() and (low.scales > 0).all()
