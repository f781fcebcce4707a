"""An operator's mistakes cost one line, before anything starts, tried through the CLI as a new user would:
a wrong input root or year, tiles failed in an earlier session, Ctrl-C, a checkpoint other than the store's,
and `reprocess` without `--checkpoint`."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tessera_pipeline.store import TileStore
from run_support import BBOX, TESTS_DIR, TILES, YEAR, make_inputs, small_checkpoint

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tessera_pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    make_inputs(tmp_path / "inputs")
    small_checkpoint(tmp_path / "ckpt.pt")
    return tmp_path


def _run_args(work: Path, *extra: str, checkpoint: str = "ckpt.pt", inputs: str = "inputs") -> list[str]:
    return ["run", "--input", str(work / inputs), "--store", str(work / "store.zarr"), "--checkpoint",
            str(work / checkpoint), "--year", str(YEAR), "--bbox", BBOX, "--local-cpus", "2", *extra]


def test_a_wrong_input_root_or_year_is_refused_before_anything_starts(work: Path) -> None:
    for dry in ([], ["--dry-run"]):
        wrong_root = _cli(*_run_args(work, *dry, inputs="nope"))
        assert wrong_root.returncode == 2 and "input root" in _one_error_line(wrong_root) and "does not exist" in wrong_root.stderr
        wrong_year = _cli(*[a if a != str(YEAR) else "2023" for a in _run_args(work, *dry)])
        line = _one_error_line(wrong_year)
        assert wrong_year.returncode == 2 and "no inputs for 2023" in line and "years there: 2024" in line, line
    assert not (work / "store.zarr").exists(), "nothing may be written before the inputs are checked"


def test_failures_from_an_earlier_session_keep_the_exit_code_1_and_say_how_to_retry(work: Path) -> None:
    for tile in TILES:
        bands = work / "inputs" / str(YEAR) / tile / "bands.npy"
        bands.write_bytes(bands.read_bytes()[:200])
    first = _cli(*_run_args(work))
    assert first.returncode == 1, first.stderr[-2000:]
    again = _cli(*_run_args(work))
    assert again.returncode == 1, again.stdout + again.stderr[-2000:]
    assert "4 tile(s) of this plan have failed" in again.stdout and "--retry-failed" in again.stdout, again.stdout
    assert " E " not in again.stderr and "core_worker" not in again.stderr, again.stderr[-3000:]
    dashboard = _cli(*_run_args(work, "--dashboard", "--retry-failed"))
    if importlib.util.find_spec("aiohttp_cors") is None:
        line = _one_error_line(dashboard)
        assert dashboard.returncode == 2 and "tessera-pipeline[dashboard]" in line, line
    else:
        assert dashboard.returncode == 1 and "Ray dashboard: http://" in dashboard.stderr, dashboard.stderr[-2000:]
    resumed = _cli("resume", "--store", str(work / "store.zarr"), "--local-cpus", "2")
    assert resumed.returncode == 1 and "--retry-failed" in resumed.stdout, resumed.stdout + resumed.stderr[-2000:]
    status = _cli("status", "--store", str(work / "store.zarr"), "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["failed_by_kind"] == {"permanent": 4}


def test_ctrl_c_says_what_is_committed_and_how_to_resume(work: Path) -> None:
    many = [*TILES, "grid_-1.65_53.25", "grid_-1.65_53.35", "grid_-1.75_53.25", "grid_-1.75_53.35"]
    make_inputs(work / "inputs", many)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    args = [a if a != BBOX else "-1.8,53.2,-1.4,53.4" for a in _run_args(work)]
    proc = subprocess.Popen([sys.executable, "-m", "tessera_pipeline.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    markers = work / "store.zarr" / "_commits" / str(YEAR)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (markers.is_dir() and any(markers.iterdir())):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err[-3000:])
    assert "interrupted:" in out and "are committed and kept" in out, out
    assert f"tessera-pipeline resume --store {work / 'store.zarr'}" in out, out
    assert "Aborted!" not in out + err
    status = json.loads(_cli("status", "--store", str(work / "store.zarr"), "--json").stdout)
    assert status["state"] == "stopped" and status["driver"] is None, status


def test_a_store_never_mixes_checkpoints_by_accident(work: Path) -> None:
    first = _cli(*_run_args(work))
    assert first.returncode == 0, first.stderr[-2000:]
    small_checkpoint(work / "other.pt", seed=5)
    for dry in ([], ["--dry-run"]):
        other = _cli(*_run_args(work, *dry, checkpoint="other.pt"))
        line = _one_error_line(other)
        assert other.returncode == 2 and "never mixes checkpoints" in line and "tessera-pipeline reprocess" in line, line
    # reprocess with the new checkpoint on one tile, then without --checkpoint on another: the store's own is used.
    store = str(work / "store.zarr")
    one = _cli("reprocess", "--store", store, "--bbox", "-1.56,53.24,-1.54,53.26", "--checkpoint",
               str(work / "other.pt"), "--local-cpus", "2")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _cli("reprocess", "--store", store, "--bbox", "-1.46,53.24,-1.44,53.26", "--local-cpus", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    tiles = TileStore(store)
    own = tiles.root_attrs()["tessera-pipeline:model"]["checkpoint_sha256"]
    assert tiles.marker(YEAR, "grid_-1.45_53.25")["provenance"]["checkpoint_sha256"] == own
    assert tiles.marker(YEAR, "grid_-1.55_53.25")["provenance"]["checkpoint_sha256"] != own
