"""`bench --calibrate` here, then `plan` with that profile predicts a small region's measured `run` time here
within 15 % (both through the CLI, a real-size random v1.1 model at the run policy's precision)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tessera_pipeline.bench.calibrate import tokens_per_pixel
from tessera_pipeline.inputs.dpixel import open_tile_at
from tessera_pipeline.model.random_checkpoint import save_random_checkpoint
from run_support import BBOX, TILES, YEAR, make_inputs

pytestmark = pytest.mark.slow
SIZE = (16, 16)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera_pipeline.cli", *args], capture_output=True, text=True,
                          timeout=600)


def _predict_and_run(tmp_path: Path, attempt: int) -> tuple[float, float]:
    """Calibrate, plan the region with that profile at the run tiles' observations per pixel, run it:
    (predicted, measured) seconds."""
    work = tmp_path / f"attempt{attempt}"
    work.mkdir()
    profile = work / "cal.yaml"
    make_inputs(work / "inputs", TILES, SIZE)
    tokens = sum(tokens_per_pixel(open_tile_at(work / "inputs", YEAR, t)) for t in TILES) / len(TILES)
    cal = _cli("bench", "--calibrate", "--size", f"{SIZE[0]}x{SIZE[1]}", "--out", str(profile), "--name", "here")
    assert cal.returncode == 0, cal.stderr[-2000:]
    plan = _cli("plan", "--bbox", BBOX, "--model", "v1.1", "--pixels-per-tile", str(SIZE[0] * SIZE[1]),
                "--profiles", str(profile), "--no-builtin", "--machines", "here=1", "--tokens-per-pixel", str(tokens), "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    report = json.loads(plan.stdout)
    assert report["fleet"] is not None, report
    ckpt = save_random_checkpoint(work / "random_v1_1.pt")
    run = _cli("run", "--input", str(work / "inputs"), "--store", str(work / "store.zarr"), "--checkpoint",
               str(ckpt), "--year", str(YEAR), "--bbox", BBOX, "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    return float(report["fleet"]["wall_s"]), float(json.loads(run.stdout)["progress"]["elapsed_s"])


def test_a_calibrated_plan_predicts_the_run_within_15_percent(tmp_path: Path) -> None:
    """The host is shared: a burst of load during either measurement skews one pair, so a second
    calibrate-and-run pair is taken when the first misses, and the better pair must be within 15 %."""
    errors = []
    for attempt in range(2):
        predicted, measured = _predict_and_run(tmp_path, attempt)
        error = abs(predicted - measured) / measured
        print(f"attempt {attempt + 1}: predicted {predicted:.1f} s, measured {measured:.1f} s, error {100 * error:.1f} %")
        errors.append((error, predicted, measured))
        if error < 0.15:
            break
    assert min(errors)[0] < 0.15, errors
