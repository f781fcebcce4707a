"""The encoder reproduces upstream Tessera's outputs on the golden fixtures (tests/fixtures/ORIGIN.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tessera_pipeline.cli.main import cli
from tessera_pipeline.encode import EncodeSettings, TileEncoder
from tessera_pipeline.encode import prepare
from tessera_pipeline.encode.normalisation import V1_0, V1_1
from tessera_pipeline.inputs.dpixel import open_tile
from tessera_pipeline.model import load_model
from golden_support import assert_int8_matches, assert_scales_match

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
CASES = json.loads((GOLDEN / "cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_encode_tile_cli_reproduces_upstream_files(case: dict, tmp_path: Path) -> None:
    args = ["encode-tile", "--checkpoint", str(GOLDEN / case["checkpoint"]), "--input", str(GOLDEN / case["input"]),
            "--out", str(tmp_path), "--precision", "fp32", "--model", case["model"]]
    if case["data_source"]:
        args += ["--data-source", case["data_source"]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([case["out_int8"], case["out_scales"]])
    assert_int8_matches(np.load(tmp_path / case["out_int8"]), np.load(GOLDEN / case["expected_int8"]))
    assert_scales_match(np.load(tmp_path / case["out_scales"]), np.load(GOLDEN / case["expected_scales"]))


@pytest.mark.parametrize("kernels", ["packed", "module"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_both_kernel_paths_match_upstream_with_small_batches_and_chunks(case: dict, kernels: str) -> None:
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    settings = EncodeSettings(precision="fp32", kernels=kernels, data_source=case["data_source"] or "mpc",  # type: ignore[arg-type]
                              batch_size=29, chunk_pixels=60)
    encoded = TileEncoder(loaded, settings).encode(open_tile(GOLDEN / case["input"]))
    assert_int8_matches(encoded.embeddings, np.load(GOLDEN / case["expected_int8"]))
    assert_scales_match(encoded.scales, np.load(GOLDEN / case["expected_scales"]))


@pytest.mark.parametrize("name,source", [("tile_a", "mpc"), ("tile_b", "aws")])
def test_v1_1_inputs_and_bucket_lengths_are_bit_exact(name: str, source: str) -> None:
    tile = open_tile(GOLDEN / "v1_1" / name)
    chunk = prepare.read_chunk(tile, 0, tile.height)
    expected = {s: np.load(GOLDEN / f"v1_1/expected/{name}_{s}_input.npy").reshape(chunk.n_pixels, -1, 11 if s == "s2" else 3)
                for s in ("s2", "s1")}
    for stream, valid, build in (("s2", chunk.s2_valid, prepare.v1_1_s2_input), ("s1", chunk.s1_valid, prepare.v1_1_s1_input)):
        n_valid = valid.sum(axis=1)
        assert np.array_equal(n_valid, np.load(GOLDEN / f"v1_1/expected/{name}_{stream}_nvalid.npy").ravel())
        lengths = prepare.bucket_lengths(n_valid)
        assert np.array_equal(lengths, np.load(GOLDEN / f"v1_1/expected/{name}_{stream}_len.npy").ravel())
        for length in np.unique(lengths[n_valid > 0]):
            pixels = np.flatnonzero((lengths == length) & (n_valid > 0))
            got = build(chunk, pixels, int(length), V1_1[source])
            assert np.array_equal(got, expected[stream][pixels, :length])
        assert not expected[stream][n_valid == 0].any()


def test_v1_0_filter_and_inputs_are_bit_exact_with_exactly_40_observations() -> None:
    tile = open_tile(GOLDEN / "v1_0" / "tile_c")
    chunk = prepare.read_chunk(tile, 0, tile.height)
    keep = prepare.v1_0_keep(chunk)
    assert np.array_equal(keep, np.load(GOLDEN / "v1_0/expected/tile_c_processed.npy").ravel().astype(bool))
    pixels = np.flatnonzero(keep)
    for stream, build, bands in (("s2", prepare.v1_0_s2_input, 11), ("s1", prepare.v1_0_s1_input, 3)):
        expected = np.load(GOLDEN / f"v1_0/expected/tile_c_{stream}_input.npy").reshape(-1, 40, bands)[pixels]
        for seed in (0, 12345):
            assert np.array_equal(build(chunk, pixels, V1_0, seed), expected)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_float_embeddings_within_golden_tolerance(case: dict) -> None:
    """The pre-quantisation vectors agree with upstream's float32 to 1e-5 (README section 4.3)."""
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    tile = open_tile(GOLDEN / case["input"])
    chunk = prepare.read_chunk(tile, 0, tile.height)
    encoder = TileEncoder(loaded, EncodeSettings(precision="fp32", data_source=case["data_source"] or "mpc"))
    where, reps = encoder.embed_chunk(chunk)
    suffix = "emb192_f32" if case["model"] == "v1.1" else "f32"
    expected = np.load(GOLDEN / Path(case["expected_int8"]).parent / f"{case['name']}_{suffix}.npy").reshape(chunk.n_pixels, -1)
    assert np.abs(reps.numpy() - expected[where]).max() <= 1e-5
