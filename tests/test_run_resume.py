"""A driver SIGKILLed mid-run (its local cluster goes with it), then `resume --store` from the store alone:
every tile ends complete exactly once and `verify` is clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from run_support import TILES, YEAR, assert_complete_once, make_inputs, small_checkpoint

pytestmark = pytest.mark.slow

SIX = [*TILES, "grid_-1.65_53.25", "grid_-1.65_53.35"]


def _cli(*args: str, **kw: object) -> list[str]:
    return [sys.executable, "-m", "tessera_pipeline.cli", *args]


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    make_inputs(tmp_path / "inputs", SIX)
    ckpt = small_checkpoint(tmp_path / "ckpt.pt")
    store = tmp_path / "store.zarr"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"input: {tmp_path / 'inputs'}\nstore: {store}\ncheckpoint: {ckpt}\nyear: {YEAR}\n"
        f"region: {{bbox: '-1.7,53.2,-1.4,53.4'}}\nlocal_cpus: 2\nprocessor_options: {{delay_s: 1.5}}\n"
    )
    driver = subprocess.Popen(_cli("run", "--config", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    markers = store / "_commits" / str(YEAR)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (markers.is_dir() and any(markers.iterdir())):
        assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        time.sleep(0.2)
    done_before = len(list(markers.iterdir()))
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    assert 1 <= done_before < len(SIX), "kill the driver mid-run"
    time.sleep(3)  # Ray's reaper ends the dead driver's local cluster

    status = subprocess.run(_cli("status", "--store", str(store), "--json"), capture_output=True, text=True, timeout=120)
    before = json.loads(status.stdout)
    assert before["planned"] == len(SIX) and before["pending"] >= 1

    resumed = subprocess.run(_cli("resume", "--store", str(store), "--local-cpus", "2"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_complete_once(str(store), SIX)
    verify = subprocess.run(_cli("verify", "--store", str(store)), capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    after = json.loads(subprocess.run(_cli("status", "--store", str(store), "--json"), capture_output=True,
                                      text=True, timeout=120).stdout)
    assert (after["complete"], after["pending"], after["failed"]) == (len(SIX), 0, 0)
    assert after["run_id"] == before["run_id"]
