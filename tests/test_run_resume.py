"""A driver SIGKILLed mid-run (its local cluster goes with it) with a tile half-written, then the operator's
path through the CLI: a second driver is refused while the dead driver's lease is live, `status` says the
run is stopped once the lease expires, `resume` asks for `--takeover`, and `resume --takeover` finishes:
every tile complete once, `verify` clean, the tiles committed before the kill byte-for-byte untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tessera_pipeline.store import layout
from run_support import TESTS_DIR, TILES, YEAR, assert_complete_once, make_inputs, small_checkpoint

pytestmark = pytest.mark.slow

SIX = [*TILES, "grid_-1.65_53.25", "grid_-1.65_53.35"]
TTL_S = 15.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tessera_pipeline.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}


def _half_written(store: Path) -> list[str]:
    """Tiles with a version group but no commit marker."""
    out = []
    for tile in SIX:
        tile_dir = store / str(YEAR) / tile
        versions = [p for p in tile_dir.iterdir() if layout.is_version(p.name)] if tile_dir.is_dir() else []
        if versions and not (store / layout.marker_key(YEAR, tile)).exists():
            out.append(tile)
    return out


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    make_inputs(tmp_path / "inputs", SIX)
    ckpt = small_checkpoint(tmp_path / "ckpt.pt")
    store = tmp_path / "store.zarr"
    # The driver: the Python API, so the test can slow commits down (a test processor is never a config key).
    script = textwrap.dedent(f"""
        from tessera_pipeline.grid import TileSet
        from tessera_pipeline.run.config import build_config
        from tessera_pipeline.run.session import start
        config = build_config({{"input": {str(tmp_path / 'inputs')!r}, "store": {str(store)!r},
                                "checkpoint": {str(ckpt)!r}, "year": {YEAR}, "region": {{"tiles": "x"}},
                                "local_cpus": 2, "lease_ttl_s": {TTL_S}}})
        start(config, TileSet.from_names({SIX!r}), processor="run_faults:SlowCommit",
              processor_options={{"pause_s": 2.0, "delay_s": 0.5}})
    """)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True, env=_env())
    markers = store / "_commits" / str(YEAR)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (markers.is_dir() and any(markers.iterdir()) and _half_written(store)):
        assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        time.sleep(0.1)
    half = _half_written(store)
    committed = {p.name: p.read_bytes() for p in markers.iterdir()}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    assert half and 1 <= len(committed) < len(SIX), "kill the driver mid-run, with a tile half-written"

    # The dead driver's lease is still live: a second driver is refused, naming the run and its host.
    refused = subprocess.run(_cli("resume", "--store", str(store), "--local-cpus", "2"), capture_output=True,
                             text=True, timeout=120, env=_env())
    assert refused.returncode == 2, refused.stderr[-2000:]
    line = refused.stderr.strip()
    assert "\n" not in line and line.startswith("error:") and "is in use by run" in line and "last beat" in line, line

    time.sleep(TTL_S + 1)  # the lease expires; Ray's reaper has ended the dead driver's local cluster meanwhile
    status = subprocess.run(_cli("status", "--store", str(store), "--json"), capture_output=True, text=True,
                            timeout=120)
    before = json.loads(status.stdout)
    assert before["planned"] == len(SIX) and before["pending"] >= 1 and before["state"] == "stopped", before
    plain = subprocess.run(_cli("status", "--store", str(store)), capture_output=True, text=True, timeout=120)
    assert "not running" in plain.stdout and "--takeover" in plain.stdout, plain.stdout

    no_takeover = subprocess.run(_cli("resume", "--store", str(store), "--local-cpus", "2"), capture_output=True,
                                 text=True, timeout=120, env=_env())
    assert no_takeover.returncode == 2 and "pass --takeover" in no_takeover.stderr, no_takeover.stderr[-2000:]

    resumed = subprocess.run(_cli("resume", "--store", str(store), "--local-cpus", "2", "--takeover"),
                             capture_output=True, text=True, timeout=300, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_complete_once(str(store), SIX, debris=True)
    for name, raw in committed.items():
        assert (markers / name).read_bytes() == raw, f"{name} was committed before the kill and must not change"
    verify = subprocess.run(_cli("verify", "--store", str(store)), capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    after = json.loads(subprocess.run(_cli("status", "--store", str(store), "--json"), capture_output=True,
                                      text=True, timeout=120).stdout)
    assert (after["complete"], after["pending"], after["failed"], after["state"]) == (len(SIX), 0, 0, "finished")
    assert after["run_id"] == before["run_id"] and after["driver"] is None
