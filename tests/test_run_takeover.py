"""A reprocess taken over from a live driver that cannot renew its lease is never undone: driver A (in its own
process and Ray) dispatches two slow tiles, then its lease writes fail while its workers still reach the
store; once the lease lapsed on the store's clock, `reprocess --takeover` with checkpoint B commits both
tiles; A's workers finish afterwards, and every marker must still name B. A stops, says it was taken over
and writes no failure record."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tessera_pipeline.cli.main import cli
from tessera_pipeline.model.checkpoint import sha256_file
from tessera_pipeline.run.session import start
from tessera_pipeline.store import TileStore
from tessera_pipeline.store.backend import open_backend
from tessera_pipeline.store.fencing import read_lease
from run_support import TESTS_DIR, TILES, YEAR, config, make_inputs, small_checkpoint, tileset, with_tests_on_path

pytestmark = pytest.mark.slow

DRIVER_A = """
import sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from tessera_pipeline.store import backend as B
from tessera_pipeline.run.session import start
from run_support import TILES, config, tileset

work = Path(sys.argv[1])
original = B.LocalBackend.put_if
first = []

def put_if(self, key, data, *, tag):
    # This driver's lease writes fail from 6 s after it took the lease (its workers are other processes).
    if key == "_run/lease.json":
        first.append(time.monotonic())
        if time.monotonic() - first[0] > 6.0:
            raise OSError("the lease object cannot be written from this driver")
    return original(self, key, data, tag=tag)

B.LocalBackend.put_if = put_if
start(config(work, checkpoint=str(work / "a.pt"), lease_ttl_s=4.0, window=2, local_cpus=1,
             region={"tiles": "x"}), tileset(TILES[:2]), processor_options={"delay_s": 14.0})
print("A finished", flush=True)
"""


def test_a_reprocess_taken_over_from_a_live_driver_is_never_undone(tmp_path: Path) -> None:
    make_inputs(tmp_path / "inputs", TILES[:2])
    small_checkpoint(tmp_path / "a.pt", seed=1)
    small_checkpoint(tmp_path / "b.pt", seed=2)
    store_url = str(tmp_path / "store.zarr")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    a = subprocess.Popen([sys.executable, "-c", DRIVER_A, str(tmp_path), TESTS_DIR], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        backend = open_backend(store_url)
        deadline = time.monotonic() + 90
        seen_a = False
        while time.monotonic() < deadline:
            lease = read_lease(backend)
            seen_a = seen_a or (lease is not None and lease.live())
            if seen_a and lease is not None and not lease.live():
                break
            assert a.poll() is None, a.communicate()
            time.sleep(0.5)
        assert seen_a, "driver A never held the store"
        with_tests_on_path()
        b = start(config(tmp_path, checkpoint=str(tmp_path / "b.pt"), region={"tiles": "x"}, local_cpus=1),
                  tileset(TILES[:2]), kind="reprocess", takeover=True)
        assert b.outcome is not None and b.outcome.progress.complete == 2
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.communicate()
    store = TileStore(store_url)
    b_sha = sha256_file(tmp_path / "b.pt")
    named = {t: store.marker(YEAR, t)["provenance"]["checkpoint_sha256"] for t in TILES[:2]}
    assert named == {t: b_sha for t in TILES[:2]}, (named, out, err[-3000:])
    assert a.returncode != 0 and "taken over" in err and "--takeover" in err, (a.returncode, out, err[-3000:])
    assert not (tmp_path / "store.zarr" / "_run" / "failures").exists() or \
        not any((tmp_path / "store.zarr" / "_run" / "failures").rglob("*.json"))
    result = CliRunner().invoke(cli, ["status", "--store", store_url, "--json"])
    assert result.exit_code == 0 and '"complete": 2' in result.output, result.output
