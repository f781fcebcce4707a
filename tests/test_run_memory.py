"""What the driver keeps per tile once it is committed: at a global year (1.6 M tiles) it must stay within
100 bytes a tile, so the driver's memory is the plan's and not a growing ledger. Measured as the growth of
the resident set of a fresh process across the real Scheduler's run of 10^5 tiles on instant actors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import gc, json, os, sys, tempfile
from pathlib import Path
from tessera_pipeline.bench.scale_bench import SHA, YEAR, _global_plan, _InstantActors
from tessera_pipeline.run.config import build_config
from tessera_pipeline.run.messages import WorkerSpec
from tessera_pipeline.run.policy import class_policy
from tessera_pipeline.run.progress import RecordWriter
from tessera_pipeline.run.scheduler import Scheduler
from tessera_pipeline.store.backend import LocalBackend
from tessera_pipeline.store.runlog import RunLog

def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

tiles = int(sys.argv[1])
plan = _global_plan(tiles)
with tempfile.TemporaryDirectory() as tmp:
    config = build_config({"input": "in", "store": str(Path(tmp) / "s.zarr"), "checkpoint": "c.pt", "year": YEAR,
                           "window": 2, "progress_every_s": 60.0})
    spec = WorkerSpec("", "", "fp32", 1, "cpu", (), 1, config.store, "in", "c.pt", SHA)
    pool = _InstantActors(64, class_policy("cpu-x86_64", config), spec)
    records = RecordWriter(RunLog(LocalBackend(Path(tmp) / "s.zarr")), "rmem")
    scheduler = Scheduler(run_id="rmem", todo=plan, already_complete=0, pool=pool, records=records,
                          known_failures=set(), config=config)
    before = rss()
    outcome = scheduler.run()
    records.flush(60.0)
    after = rss()
    print(json.dumps({"complete": outcome.progress.complete, "growth": after - before}))
"""


def test_the_driver_keeps_at_most_100_bytes_per_committed_tile() -> None:
    tiles = 100_000
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiles)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["complete"] == tiles
    assert result["growth"] / tiles <= 100, f"{result['growth'] / tiles:.0f} bytes per tile ({result})"
