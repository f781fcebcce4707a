"""`bench --calibrate` here, then `plan` with that profile predicts a small region's measured `run` time here
within 15 % (both through the CLI, a real-size random v1.1 model at the run policy's precision)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tessera_pipeline.bench.calibrate import tokens_per_pixel
from tessera_pipeline.inputs.dpixel import open_tile_at
from tessera_pipeline.model.random_checkpoint import save_random_checkpoint
from tessera_pipeline.plan.profiles import Profile, load_profiles
from run_support import BBOX, TILES, YEAR, make_inputs

pytestmark = pytest.mark.slow
SIZE = (16, 16)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera_pipeline.cli", *args], capture_output=True, text=True,
                          timeout=600)


def _predict_and_run(tmp_path: Path, attempt: int) -> tuple[float, float, str]:
    """Calibrate, plan the region with that profile at the run tiles' observations per pixel, run it:
    (predicted, measured) seconds and where each side's seconds went, to tell a missing term from noise."""
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
    predicted, progress = float(report["fleet"]["wall_s"]), json.loads(run.stdout)["progress"]
    measured = float(progress["elapsed_s"])
    return predicted, measured, _breakdown(load_profiles(profile)[0], progress, len(TILES) * SIZE[0] * SIZE[1])


def _breakdown(profile: Profile, progress: dict, pixels: int) -> str:
    """The calibrated start-up and encode seconds beside the run's own encode seconds and the rest of its wall time."""
    timing = profile.timings[0]
    cls = next(iter(progress["by_class"].values()))
    encode = cls["encode_s_per_mpx"] * pixels / 1e6
    return (f"calibrated: start-up {profile.startup_s:.1f} s, {timing.seconds / timing.pixels * 1e3:.1f} ms/px, "
            f"threads {profile.measured_on.get('threads_per_actor')}; run: encode {encode:.1f} s "
            f"({encode / pixels * 1e3:.1f} ms/px), the rest {progress['elapsed_s'] - encode:.1f} s, "
            f"threads {progress['threads_by_class']}")


def test_a_calibrated_plan_predicts_the_run_within_15_percent(tmp_path: Path) -> None:
    """The host is shared and its speed drifts by 5-10 % between minutes: a burst of load during either
    measurement skews one pair, so another calibrate-and-run pair is taken when one misses (at most
    three), and the best pair must be within 15 %. A plan that is off by more on this host fails all three."""
    errors = []
    for attempt in range(3):
        predicted, measured, breakdown = _predict_and_run(tmp_path, attempt)
        error = abs(predicted - measured) / measured
        line = f"attempt {attempt + 1}: predicted {predicted:.1f} s, measured {measured:.1f} s, error {100 * error:.1f} %; {breakdown}"
        print(line)
        errors.append((error, predicted, measured, breakdown))
        if error < 0.15:
            break
        warnings.warn(f"a calibrate-and-run pair missed: {line}", stacklevel=1)  # in CI's warnings summary
    assert min(errors)[0] < 0.15, errors
