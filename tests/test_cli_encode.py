"""The encode-tile, bench and demo commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tessera_pipeline.cli.main import cli
from tessera_pipeline.inputs.synthetic import make_synthetic_tile
from tessera_pipeline.store import TileStore

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
V11 = str(GOLDEN / "v1_1" / "checkpoint.pt")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed command in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "tessera_pipeline.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "breakage,expected",
    [
        ("missing", "masks.npy: "),
        ("truncated", "bands.npy: "),
        ("wrong_checkpoint", "is a v1.0 checkpoint"),
    ],
)
def test_bad_input_or_checkpoint_is_one_line_exit_2(tmp_path: Path, breakage: str, expected: str) -> None:
    tile = tmp_path / "tile_x"
    tile.mkdir()
    for f in (GOLDEN / "v1_1" / "tile_a").iterdir():
        (tile / f.name).write_bytes(f.read_bytes())
    checkpoint = V11
    if breakage == "missing":
        (tile / "masks.npy").unlink()
    elif breakage == "truncated":
        data = (tile / "bands.npy").read_bytes()
        (tile / "bands.npy").write_bytes(data[: len(data) // 2])
    else:
        checkpoint = str(GOLDEN / "v1_0" / "checkpoint.pt")
    result = run_cli("encode-tile", "--checkpoint", checkpoint, "--input", str(tile), "--out", str(tmp_path / "o"), "--model", "v1.1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_encode_tile_into_store_commits_a_verified_georeferenced_tile(tmp_path: Path) -> None:
    tile = "grid_0.15_52.05"
    tile_dir = make_synthetic_tile(tmp_path / "in", 2024, tile, size=(7, 9))
    store = str(tmp_path / "store.zarr")
    result = CliRunner().invoke(cli, ["encode-tile", "--checkpoint", V11, "--input", str(tile_dir), "--store", store,
                                      "--year", "2024", "--precision", "fp32", "--out", str(tmp_path / "npy")])
    assert result.exit_code == 0, result.output
    opened = TileStore(store)
    assert opened.is_complete(2024, tile) and opened.verify_tile(2024, tile).ok
    data = opened.read_tile(2024, tile)
    assert data.epsg == 32631 and data.embeddings.shape == (7, 9, 128)
    assert np.array_equal(data.embeddings, np.load(tmp_path / "npy" / f"{tile}_emb128_int8.npy"))
    prov = data.provenance
    assert prov["checkpoint_sha256"] == "210d83301d2a51db0458f0be2ba049ed3816e4aea4f6ce4c3c36f374c21e40e4"
    assert prov["precision"] == "fp32" and prov["model_version"] == "v1.1" and len(prov["input_fingerprint"]) == 64


def test_bench_json_has_the_promised_keys() -> None:
    result = CliRunner().invoke(cli, ["bench", "--size", "2x3", "--peak-seconds", "0.05", "--no-store", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("ms_per_pixel_fp32", "ms_per_pixel_bf16", "gflops_fp32", "gflops_bf16", "peak_gflops_fp32",
                "peak_gflops_bf16", "mfu_fp32", "mfu_bf16"):
        assert report[key] > 0, key
    assert set(report["quality"]) == {"exact", "off_by_1", "off_by_2_plus", "cosine_mean", "cosine_min"}
    assert 0.0 <= report["quality"]["exact"] <= 1.0 and report["quality"]["cosine_min"] > 0.99
    assert report["weights"].startswith("random")


@pytest.mark.slow
def test_demo_runs_end_to_end_and_says_weights_are_random(tmp_path: Path) -> None:
    result = run_cli("demo", "--out", str(tmp_path / "demo"), "--size", "3x4")
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stdout and "verified 4 committed tiles" in result.stdout
    assert "all checksums match" in result.stdout and "4 tiles committed, 0 failed" in result.stdout
    assert "48 px encoded" in result.stdout  # 4 tiles of 3 x 4 px, not the plan's full-size count
    assert (tmp_path / "demo" / "grid_-1.55_53.25.tif").is_file()
    picture = np.asarray(Image.open(tmp_path / "demo" / "region_pca.png").convert("RGB")).astype(int)
    assert (picture.sum(axis=2) < 30).mean() < 0.05, "the region picture is mostly black"
    assert (tmp_path / "demo" / "status_map.png").is_file()
    assert "sample_points" in result.stdout and "no-observations" in result.stdout and "water" in result.stdout
