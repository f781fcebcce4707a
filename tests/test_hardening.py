"""Issue 10: no data loss, no silent corruption, bad input fails in one line before any encoding.

One section per class of the issue (numbered as there), then a fuzz-style test that feeds the CLI
a few hundred generated bad argument combinations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from tessera_pipeline.cli.main import cli
from tessera_pipeline.errors import (
    ArgumentError,
    GeoreferenceError,
    OutputError,
    RegionError,
    StoreConflictError,
    StoreIntegrityError,
)
from tessera_pipeline.grid import TileGeometry, tile_geometry
from tessera_pipeline.inputs.synthetic import make_synthetic_tile, synthetic_arrays, write_roi
from tessera_pipeline.store import TileStore, write_encoded_tile

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
V11 = str(GOLDEN / "v1_1" / "checkpoint.pt")
V10 = str(GOLDEN / "v1_0" / "checkpoint.pt")
REPO = Path(__file__).resolve().parents[1]
TILE = "grid_-1.55_53.25"
NEIGHBOUR = "grid_-1.65_53.25"
MODEL_V11 = {"model_version": "v1.1", "checkpoint_sha256": "cd" * 32, "dimensions": 128, "data_source": "mpc"}
TRANSFORM = tile_geometry(TILE).transform


def invoke(*args: str) -> Result:
    """Run the CLI in this process (stdout and stderr together in `output`)."""
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one `error:` line holding every needle; returns that line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError), result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under `root`: content sha256 (files) and mtime, to prove nothing changed."""
    state: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return state


def write_store_tile(url: str, tile: str = TILE, seed: int = 1, shape: tuple[int, int] = (7, 9)) -> dict:
    """Commit one random tile (v1.1, mpc) and return its marker."""
    rng = np.random.default_rng(seed)
    emb = rng.integers(-127, 128, (*shape, 128), dtype=np.int8)
    scales = rng.uniform(0.005, 0.02, shape).astype(np.float32)
    write_encoded_tile(url, 2024, tile, emb, scales, epsg=32630, transform=TRANSFORM,
                       provenance={"seed": seed}, model_attrs=MODEL_V11)
    marker = TileStore(url).marker(2024, tile)
    assert marker is not None
    return marker


@pytest.fixture
def no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any start of encoding fail the test: every check must come before the first pixel."""
    from tessera_pipeline.encode.encoder import TileEncoder

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("encoding started although the arguments were bad")

    monkeypatch.setattr(TileEncoder, "encode", refuse)


@pytest.fixture
def small_tile(tmp_path: Path) -> Path:
    """A 7 x 9 synthetic d-pixel tile of TILE, with its roi.tiff."""
    return make_synthetic_tile(tmp_path / "inputs", 2024, TILE, size=(7, 9))


# --- 1. data loss -----------------------------------------------------------------------------------


def test_demo_refuses_a_non_empty_folder_or_a_file_and_leaves_them_intact(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "sub" / "data.bin").write_bytes(os.urandom(64))
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("demo", "--out", str(mine)), "not empty", "--overwrite")
    assert snapshot(tmp_path) == before
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    result = invoke("demo", "--out", str(tmp_path / "afile"))
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
    assert snapshot(tmp_path) == before


def test_prepare_output_dir_deletes_only_what_the_command_writes(tmp_path: Path) -> None:
    from tessera_pipeline.cli.outputs import OWNER_FILE, prepare_output_dir

    own = prepare_output_dir(tmp_path / "demo", command="demo", owned=["store.zarr", "a.tif"])
    (own / "store.zarr").mkdir()
    (own / "a.tif").write_text("old")
    (own / "notes.txt").write_text("the user's")
    prepare_output_dir(own, command="demo", owned=["store.zarr", "a.tif"])  # an earlier demo's folder: reused
    assert sorted(p.name for p in own.iterdir()) == sorted([OWNER_FILE, "notes.txt"])
    assert (own / "notes.txt").read_text() == "the user's"
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.tif").write_text("theirs")
    (other / "b.txt").write_text("theirs too")
    with pytest.raises(OutputError):
        prepare_output_dir(other, command="demo", owned=["a.tif"])
    assert (other / "a.tif").read_text() == "theirs"
    prepare_output_dir(other, command="demo", owned=["a.tif"], overwrite=True)
    assert not (other / "a.tif").exists() and (other / "b.txt").read_text() == "theirs too"
    with pytest.raises(OutputError, match="does not exist"):
        prepare_output_dir(tmp_path / "no" / "such", command="demo", owned=[])


def test_export_refuses_existing_files_unless_overwrite(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    write_store_tile(store)
    out = tmp_path / "m.tif"
    out.write_bytes(b"precious")
    (tmp_path / "m_scales.tif").write_bytes(b"precious too")
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("export", "--store", store, "--year", "2024", "--tile", TILE, "--geotiff", str(out)),
                          "exists", "--overwrite")
    assert snapshot(tmp_path) == before
    ok = invoke("export", "--store", store, "--year", "2024", "--tile", TILE, "--geotiff", str(out), "--overwrite")
    assert ok.exit_code == 0, ok.output
    assert out.read_bytes()[:2] in (b"II", b"MM")


def test_encode_tile_refuses_existing_outputs_before_encoding(tmp_path: Path, small_tile: Path, no_encoding: None) -> None:
    out = tmp_path / "npy"
    out.mkdir()
    (out / f"{TILE}_emb128_int8.npy").write_bytes(b"earlier result")
    before = snapshot(out)
    assert_one_line_error(invoke("encode-tile", "--checkpoint", V11, "--input", str(small_tile), "--out", str(out)),
                          f"{TILE}_emb128_int8.npy", "--overwrite")
    assert snapshot(out) == before
    store = str(tmp_path / "store")
    write_store_tile(store)
    before = snapshot(tmp_path / "store")
    assert_one_line_error(invoke("encode-tile", "--checkpoint", V11, "--input", str(small_tile), "--store", store,
                                 "--year", "2024"), "already complete", "--overwrite")
    assert snapshot(tmp_path / "store") == before


def test_synth_refuses_existing_tile_directories(tmp_path: Path) -> None:
    make_synthetic_tile(tmp_path, 2024, TILE, size=(4, 4))
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("synth", "--out", str(tmp_path), "--year", "2024", "--bbox=-1.6,53.2,-1.5,53.3",
                                 "--size", "4x4"), "exist", "--overwrite")
    assert snapshot(tmp_path) == before


# --- 2. silent corruption on read -------------------------------------------------------------------


def test_flipped_bytes_fail_every_read_path_naming_the_object(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    marker = write_store_tile(store)
    shard = tmp_path / "store" / marker["path"] / "embeddings" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    shard.write_bytes(bytes(data))
    where = f"{marker['path']}/embeddings"
    line = assert_one_line_error(
        invoke("export", "--store", store, "--year", "2024", "--tile", TILE, "--geotiff", str(tmp_path / "x.tif")),
        where,
    )
    assert TILE in line and not (tmp_path / "x.tif").exists()
    npy = invoke("export", "--store", store, "--year", "2024", "--tile", TILE, "--npy", str(tmp_path / "mirror"))
    assert_one_line_error(npy, where)
    with pytest.raises(StoreIntegrityError, match="embeddings"):
        TileStore(store).read_tile(2024, TILE)
    with pytest.raises(StoreIntegrityError, match="embeddings"):
        TileStore(store).open_dataset(2024, TILE)
    verify = invoke("verify", "--store", store)
    assert verify.exit_code == 1 and where in verify.output


def test_a_missing_chunk_is_named_never_read_as_fill_values(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    marker = write_store_tile(store)
    missing = f"{marker['path']}/scales/c/0/0"
    (tmp_path / "store" / missing).unlink()
    assert_one_line_error(
        invoke("export", "--store", store, "--year", "2024", "--tile", TILE, "--geotiff", str(tmp_path / "s.tif")),
        f"missing object {missing}",
    )
    opened = TileStore(store)
    for read in (lambda: opened.read_tile(2024, TILE), lambda: opened.read_tile(2024, TILE, verify=False),
                 lambda: opened.read_tile(2024, TILE, window=(slice(0, 2), slice(0, 2))),
                 lambda: opened.open_dataset(2024, TILE)):
        with pytest.raises(StoreIntegrityError, match=f"missing object {missing}"):
            read()
    verify = invoke("verify", "--store", store, "--json")
    assert verify.exit_code == 1
    (failed,) = json.loads(verify.output)["tiles"]
    assert failed["problems"] == [f"missing object {missing} in {opened.url}"]


# --- 3. georeference of the input vs --tile -----------------------------------------------------------


def test_input_of_another_tile_is_refused_before_encoding(tmp_path: Path, small_tile: Path, no_encoding: None) -> None:
    store = str(tmp_path / "store")
    assert_one_line_error(invoke("encode-tile", "--checkpoint", V11, "--input", str(small_tile), "--store", store,
                                 "--year", "2024", "--tile", NEIGHBOUR), f"tile {TILE}, not {NEIGHBOUR}")
    renamed = small_tile.rename(tmp_path / "patch")  # no name to go by: the roi.tiff must lie inside the tile
    assert_one_line_error(invoke("encode-tile", "--checkpoint", V11, "--input", str(renamed), "--store", store,
                                 "--year", "2024", "--tile", NEIGHBOUR), "does not lie inside", NEIGHBOUR)
    assert not Path(store).exists()


def test_georeference_for_accepts_a_patch_inside_the_tile_only() -> None:
    from tessera_pipeline.inputs.dpixel import georeference_for
    from tessera_pipeline.inputs.tile import DPixelTile

    grid = tile_geometry(TILE)
    a, b, c, d, e, f = grid.transform

    def patch(row: float, col: float, h: int, w: int, epsg: int = grid.epsg) -> DPixelTile:
        geom = TileGeometry(TILE, grid.lon, grid.lat, epsg, h, w, (a, b, c + 10 * col, d, e, f - 10 * row))
        return DPixelTile(name="p", geometry=geom, **synthetic_arrays(h, w, seed=0))

    inside = georeference_for(patch(5, 7, 3, 4), TILE)
    assert inside.transform == (a, b, c + 70, d, e, f - 50) and inside.shape == (3, 4)
    for bad, why in ((patch(0, grid.width - 2, 3, 4), "does not lie inside"), (patch(0.5, 0, 3, 4), "pixel grid"),
                     (patch(0, 0, 3, 4, epsg=32631), "EPSG")):
        with pytest.raises(GeoreferenceError, match=why):
            georeference_for(bad, TILE)


# --- 4. URLs and missing folders for local outputs --------------------------------------------------------


def test_url_outputs_and_missing_folders_are_refused_before_anything(
    tmp_path: Path, small_tile: Path, monkeypatch: pytest.MonkeyPatch, no_encoding: None
) -> None:
    store = str(tmp_path / "store")
    write_store_tile(store)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    base = ["export", "--store", store, "--year", "2024", "--tile", TILE]
    assert_one_line_error(invoke("encode-tile", "--checkpoint", V11, "--input", str(small_tile), "--out", "s3://b/out"),
                          "must be a local path")
    assert_one_line_error(invoke(*base, "--geotiff", "s3://b/x.tif"), "must be a local path")
    assert_one_line_error(invoke(*base, "--npy", "s3://b/mirror"), "must be a local path")
    assert_one_line_error(invoke(*base, "--geotiff", str(tmp_path / "nonexistent" / "dir" / "x.tif")), "does not exist")
    assert list(work.iterdir()) == [] and not (tmp_path / "nonexistent").exists()


# --- 5. everything checkable is checked before encoding ------------------------------------------------------


def test_tile_checkpoint_and_store_mismatches_fail_before_encoding(
    tmp_path: Path, small_tile: Path, no_encoding: None
) -> None:
    store = str(tmp_path / "store")
    write_store_tile(store, tile="grid_0.15_52.05")  # a v1.1 store
    before = snapshot(tmp_path / "store")
    base = ["encode-tile", "--input", str(small_tile), "--store", store, "--year", "2024"]
    assert_one_line_error(invoke(*base, "--checkpoint", V11, "--tile", "grid_-1.55_53.2"), "not a tile name")
    assert_one_line_error(invoke(*base, "--checkpoint", V10), "model_version='v1.1'", "'v1.0'")
    assert_one_line_error(invoke(*base, "--checkpoint", V10, "--model", "v1.0"), "model_version='v1.1'")
    assert_one_line_error(invoke(*base, "--checkpoint", V11, "--data-source", "aws"), "data_source='mpc'", "'aws'")
    assert snapshot(tmp_path / "store") == before


# --- 6. sizes must fit the tile -----------------------------------------------------------------------------


def test_sizes_larger_than_the_tile_are_refused(tmp_path: Path, no_encoding: None) -> None:
    assert_one_line_error(invoke("synth", "--out", str(tmp_path), "--year", "2024", "--bbox=-1.6,53.2,-1.5,53.3",
                                 "--size", "5000x5000"), "does not fit")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArgumentError, match="does not fit"):
        make_synthetic_tile(tmp_path, 2024, TILE, size=(8, 800))
    wide = tmp_path / "inputs" / "2024" / TILE  # an 8 x 800 tile, wider than its 690 px grid tile
    wide.mkdir(parents=True)
    for key, array in synthetic_arrays(8, 800, seed=1).items():
        np.save(wide / f"{key}.npy", array)
    grid = tile_geometry(TILE)
    write_roi(wide / "roi.tiff", TileGeometry(TILE, grid.lon, grid.lat, grid.epsg, 8, 800, grid.transform))
    assert_one_line_error(invoke("encode-tile", "--checkpoint", V11, "--input", str(wide), "--store",
                                 str(tmp_path / "store"), "--year", "2024"), "8 x 800", "does not lie inside")
    result = invoke("bench", "--size", "5000x5000")
    assert result.exit_code == 2 and "larger than any grid tile" in result.output


# --- 7. data source recorded, mismatches refused, checkpoint disagreement warned ----------------------------------


def test_root_records_the_data_source() -> None:
    from tessera_pipeline.store.zarr_store import root_attributes

    assert root_attributes(MODEL_V11)["tessera-pipeline:model"]["data_source"] == "mpc"


def test_data_source_mismatch_refused_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tessera_pipeline.encode.setup import build_encoder

    store = TileStore(str(tmp_path / "store"))
    store.create(MODEL_V11)
    with pytest.raises(StoreConflictError, match="data_source"):
        store.create({**MODEL_V11, "data_source": "aws"})
    with caplog.at_level(logging.WARNING, logger="tessera_pipeline"):
        build_encoder(V11, data_source="aws", precision="fp32")
    assert any("declares data source 'mpc'" in r.getMessage() for r in caplog.records)


# --- 8. bounding boxes ---------------------------------------------------------------------------------------------


def test_swapped_west_east_needs_a_flag_and_gets_a_hint() -> None:
    from tessera_pipeline.region import parse_bbox

    with pytest.raises(RegionError, match=r"did you mean -2.5,53,-1,54\?.*--allow-wide-bbox"):
        parse_bbox("-1,53,-2.5,54")
    assert parse_bbox("-1,53,-2.5,54", allow_wide=True) == (-1.0, 53.0, -2.5, 54.0)
    assert parse_bbox("170,-20,-170,-10") == (170.0, -20.0, -170.0, -10.0)  # 20 degrees across the antimeridian
    with pytest.raises(RegionError, match="wider than 180"):
        parse_bbox("-170,0,170,1")
    assert_one_line_error(invoke("tiles", "--bbox=-1,53,-2.5,54", "--count"), "--allow-wide-bbox")
    assert_one_line_error(invoke("tiles", "--bbox=53,-2.5,54,-1", "--count"), "did you swap", "-2.5,53,-1,54")
    assert_one_line_error(invoke("tiles", "--bbox=53,120,54,121", "--count"), "did you swap")
    wide = invoke("tiles", "--bbox=170,-20,-170,-10", "--count")
    assert wide.exit_code == 0 and int(wide.output) > 0


# --- 9. one line, fast, for unreachable endpoints and malformed values ------------------------------------------------


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Test credentials for S3 (the endpoint is set by each test)."""
    for key, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    yield


def test_unreachable_endpoint_fails_fast_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_env: None
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for args in (["verify", "--store", "s3://bucket/store"],
                 ["export", "--store", "s3://bucket/store", "--year", "2024", "--tile", TILE,
                  "--geotiff", str(tmp_path / "x.tif")]):
        start = time.monotonic()
        assert_one_line_error(invoke(*args), "unreachable")
        assert time.monotonic() - start < 30


def test_a_silent_endpoint_is_bounded_by_the_time_budget(monkeypatch: pytest.MonkeyPatch, s3_env: None) -> None:
    from tessera_pipeline import locations

    with socket.socket() as server:  # accepts connections (kernel backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(locations, "S3_OPERATION_BUDGET_S", 1.0)
        start = time.monotonic()
        assert_one_line_error(invoke("verify", "--store", "s3://bucket/store"), "unreachable")
        assert time.monotonic() - start < 10


def test_malformed_sizes_are_usage_errors() -> None:
    for args in (["bench", "--size", "foo"], ["demo", "--size", "foo"], ["synth", "--out", "x", "--year", "2024",
                                                                             "--global", "--size", "foo"]):
        result = invoke(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output and "HxW" in result.output, result.output


def test_usage_errors_are_one_line_naming_the_commands_help() -> None:
    """click's own usage errors (unknown option or command, bad or missing value) read like every other error."""
    for args, needle, command in (
        (["tiles", "--bogus"], "No such option '--bogus'", "tessera-pipeline tiles --help"),
        (["bench", "--size", "foo"], "size must be HxW", "tessera-pipeline bench --help"),
        (["export", "--tile", TILE], "Missing option '--store'", "tessera-pipeline export --help"),
        (["no-such-command"], "No such command 'no-such-command'", "tessera-pipeline --help"),
    ):
        result = invoke(*args)
        assert result.stderr.splitlines() == [assert_one_line_error(result, needle, f"(see `{command}`)")]
        assert "Usage:" not in result.output and "Try " not in result.output
    bare = invoke()  # no command at all: the help itself, as before
    assert bare.exit_code == 2 and "Usage:" in bare.output and "Commands:" in bare.output


# --- 10. output that is not a terminal ---------------------------------------------------------------------------------


def test_plain_output_neither_wraps_nor_cuts(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.table import Table

    from tessera_pipeline.cli import console as console_mod

    console = console_mod.make_console(stderr=True)
    long_line = "tile grid_-1.55_53.25: " + "x" * 150 + " END"
    console.print(long_line)
    table = Table("precision", "ms/pixel", "GFLOP/s", "matmul peak GFLOP/s (mean of samples)", "MFU", "best peak window",
                  "MFU vs best", "fused kernels")
    table.add_row("bf16", "1.00", "100", "200", "0.50", "210", "0.48", "yes")
    console_mod.print_table(console, table)
    with console_mod.progress(console, "encoding", 100) as advance:
        advance(40)
        advance(60)
    err = capsys.readouterr().err
    assert long_line in err.splitlines()
    assert "matmul peak GFLOP/s (mean of samples)" in err and "fused kernels" in err and "…" not in err
    assert "encoding: 0/100 px (0%)" in err and "encoding: 100/100 px (100%)" in err


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a fresh process, with pipes for stdout and stderr (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "tessera_pipeline.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_library_loggers_stay_quiet_unless_asked(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    write_store_tile(store)
    ours = run_cli("-vv", "verify", "--store", store)
    assert ours.returncode == 0, ours.stderr
    foreign = [line for line in ours.stderr.splitlines() if " DEBUG " in line and " tessera_pipeline" not in line]
    assert foreign == []
    everything = run_cli("-vvv", "verify", "--store", store)
    assert any(" DEBUG " in line and " tessera_pipeline" not in line for line in everything.stderr.splitlines())


# --- 11. nothing dropped or ignored silently ------------------------------------------------------------------------


def test_tile_lists_report_dropped_ocean_tiles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = tmp_path / "tiles.txt"
    names.write_text(f"{TILE}\ngrid_-20.05_45.05\ngrid_-30.05_40.05\n")  # one land tile, two in the Atlantic
    with caplog.at_level(logging.WARNING, logger="tessera_pipeline"):
        result = invoke("tiles", "--tiles", str(names))
    assert result.exit_code == 0 and result.output.split() == [TILE]
    assert any("2 of the 3 tiles" in r.getMessage() for r in caplog.records)


def test_ignored_flags_are_refused() -> None:
    result = invoke("tiles", "--bbox=-1.6,53.2,-1.5,53.3", "--count", "--json")
    assert result.exit_code == 2 and "not both" in result.output
    result = invoke("encode-tile", "--checkpoint", V11, "--input", "x", "--out", "o", "--year", "2024")
    assert result.exit_code == 2 and "--year applies to --store only" in result.output
    result = invoke("tiles", "--global", "--allow-wide-bbox", "--count")
    assert result.exit_code == 2 and "--bbox only" in result.output


def test_verify_reports_data_without_a_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera_pipeline.cli import verify as verify_mod

    store = str(tmp_path / "store")
    marker = write_store_tile(store)
    (tmp_path / "store" / "_commits" / "2024" / f"{TILE}.json").unlink()
    young = invoke("verify", "--store", store)
    assert young.exit_code == 0 and f"INCOMPLETE 2024/{TILE}" in young.output and "being written?" in young.output
    monkeypatch.setattr(verify_mod, "IN_PROGRESS_GRACE_S", 0.0)
    old = invoke("verify", "--store", store, "--json")
    assert old.exit_code == 1
    doc = json.loads(old.output)
    assert doc["checked"] == 0 and doc["incomplete"] == 1
    assert doc["incomplete_tiles"][0]["versions"] == [marker["version"]]


# --- 3, 7, 10, 11, 12 together: a good run records what it should ------------------------------------------------------


def test_tile_flag_names_outputs_and_provenance_is_portable(tmp_path: Path) -> None:
    tile = "grid_0.15_52.05"
    src = make_synthetic_tile(tmp_path / "in", 2024, tile, size=(7, 9))
    patch = src.rename(tmp_path / "patch_7x9")  # not a grid name: --tile says which tile it is
    store = str(tmp_path / "store")
    result = invoke("encode-tile", "--checkpoint", V11, "--input", str(patch), "--tile", tile, "--store", store,
                    "--year", "2024", "--out", str(tmp_path / "npy"), "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "npy" / f"{tile}_emb128_int8.npy").is_file()
    assert "encoding: 0/63 px (0%)" in result.output and "encoding: 63/63 px (100%)" in result.output
    opened = TileStore(store)
    data = opened.read_tile(2024, tile)
    assert data.provenance["checkpoint_source"] == "checkpoint.pt"
    assert data.provenance["data_source"] == "mpc"
    root = opened.root_attrs()
    assert root is not None and root["tessera-pipeline:model"]["data_source"] == "mpc"
    assert root["tessera-pipeline:model"]["model_version"] == "v1.1"


def test_checkpoint_label_keeps_urls_and_only_local_file_names() -> None:
    from tessera_pipeline.encode.setup import checkpoint_label

    assert checkpoint_label("/home/someone/ckpt/tessera_v1_1.pt") == "tessera_v1_1.pt"
    assert checkpoint_label("s3://models/tessera/v1_1.pt") == "s3://models/tessera/v1_1.pt"
    assert checkpoint_label("https://user:pw@h.org/v1_1.pt?X-Amz-Signature=abc") == "https://h.org/v1_1.pt"


# --- 12. docs agree with behaviour --------------------------------------------------------------------------------------


def test_docs_match_what_the_code_writes() -> None:
    formats = (REPO / "docs" / "formats.md").read_text()
    assert '"model_version": "1.1"' not in formats and '"model_version": "v1.1"' in formats
    assert "discover_tiles(DIR)" not in formats and "discover_tiles(Path(DIR))" in formats
    assert '"data_source": "mpc"' in formats
    assert "checkpoint_source" in formats


# --- fuzz: a few hundred bad argument combinations -----------------------------------------------------------------------


@pytest.fixture
def fuzz_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_encoding: None) -> tuple[Path, Path]:
    """A temporary world: `outside/` holds inputs, a store and files that must survive; cwd is `work/`."""
    outside, work = tmp_path / "outside", tmp_path / "work"
    make_synthetic_tile(outside / "inputs", 2024, TILE, size=(5, 6))
    write_store_tile(str(outside / "store.zarr"))
    (outside / "keep" / "sub").mkdir(parents=True)
    (outside / "keep" / "notes.txt").write_text("keep me")
    (outside / "keep" / "sub" / "data.bin").write_bytes(os.urandom(128))
    (outside / "existing.tif").write_bytes(b"not yours")
    (outside / "existing_scales.tif").write_bytes(b"not yours either")
    (outside / "upstream").mkdir()
    (outside / "upstream" / f"{TILE}_emb128_int8.npy").write_bytes(b"an earlier run")
    work.mkdir()
    monkeypatch.chdir(work)
    return outside, work


def bad_argument_cases(outside: Path, rng: random.Random, n: int) -> list[list[str]]:
    """`n` command lines: a valid base per command plus one or two fragments, each bad on its own."""
    o = str(outside)
    store, inputs = f"{o}/store.zarr", f"{o}/inputs/2024/{TILE}"
    no_dir = f"{o}/no/such/dir"
    urls = ["s3://bucket/out", "gs://b/o", "https://h.example/x"]
    sizes = ["foo", "0x5", "5x0", "-1x3", "5000x5000", "3", "x", "1.5x2", "99999x1", ""]
    years = ["abc", "99", "123456", "-2024", "20.24"]
    tiles = ["grid_-1.55_53.2", "grid_1_2", "tile", "../x", "grid_200.05_0.05", ""]
    bboxes = ["1,2,3", "a,b,c,d", "-1,53,-2.5,54", "0,91,1,92", "181,0,182,1", "0,10,1,5", "nan,0,1,1",
              "-170,0,170,1", "53,120,54,121", "", "1,,2,3", "53,-2.5,54,-1"]
    plans: dict[str, tuple[list[str], list[list[str]]]] = {
        "tiles": (["tiles", "--bbox=-1.6,53.2,-1.5,53.3", "--count"],
                  [[f"--bbox={b}"] for b in bboxes] + [["--json"], ["--global"], ["--tiles", f"{o}/missing.csv"],
                   ["--landmask", f"{o}/missing.tif"], ["--region-file", f"{o}/keep/notes.txt"], ["--bogus"]]),
        "synth": (["synth", "--out", "synth_out", "--year", "2024", "--bbox=-1.6,53.2,-1.5,53.3", "--size", "4x4"],
                  [["--size", s] for s in sizes] + [["--year", y] for y in years] + [["--out", u] for u in urls]
                  + [[f"--bbox={b}"] for b in bboxes[:6]]
                  + [["--out", no_dir], ["--out", f"{o}/inputs"], ["--out", f"{o}/keep/notes.txt"], ["--global"]]),
        "export": (["export", "--store", store, "--year", "2024", "--tile", TILE, "--geotiff", "x.tif"],
                   [["--geotiff", u] for u in urls] + [["--npy", u] for u in urls] + [["--year", y] for y in years]
                   + [["--tile", t] for t in tiles]
                   + [["--geotiff", f"{no_dir}/x.tif"], ["--geotiff", f"{o}/existing.tif"], ["--geotiff", f"{o}/keep"],
                      ["--npy", f"{o}/mirror"], ["--year", "2023"], ["--store", f"{o}/nostore"],
                      ["--store", "gs://b/s"], ["--bbox=-1.6,53.2,-1.5,53.3"], ["--dequantise", "--npy", "m"],
                      ["--bogus"]]),
        "verify": (["verify", "--store", store],
                   [["--store", f"{o}/nostore"], ["--store", "gs://b/s"], ["--store", "ftp://h/s"], ["--workers", "0"],
                    ["--year", "abc"], ["--year", "99999"], ["--bogus"], ["--release", "nope"], ["--release", "../x"],
                    ["--release", "r", "--year", "2024"]]),
        "manifest": (["manifest", "--store", store, "--out", "m.parquet"],
                     [["--out", u] for u in urls] + [["--year", y] for y in years]
                     + [["--store", f"{o}/nostore"], ["--store", "gs://b/s"], ["--out", f"{no_dir}/m.parquet"],
                        ["--out", f"{o}/existing.tif"], ["--out", f"{o}/keep"], ["--release", "../x"],
                        ["--release", ""], ["--drop-release", "nope"], ["--bogus"]]),
        "encode-tile": (["encode-tile", "--checkpoint", V11, "--input", inputs, "--out", "enc_out"],
                        [["--out", u] for u in urls] + [["--tile", t] for t in tiles] + [["--year", y] for y in years]
                        + [["--out", no_dir], ["--out", f"{o}/upstream"], ["--out", f"{o}/keep/notes.txt"],
                           ["--year", "2024"], ["--tile", NEIGHBOUR], ["--input", f"{o}/nothing"],
                           ["--checkpoint", f"{o}/nothing.pt"], ["--checkpoint", V10, "--model", "v1.1"],
                           ["--batch-size", "0"], ["--precision", "int4"], ["--model", "v2"], ["--threads", "0"],
                           ["--data-source", "gcs"], ["--store", store, "--year", "2024"],
                           ["--store", store, "--year", "2024", "--overwrite", "--model", "v1.0"],
                           ["--store", "gs://x/y", "--year", "2024"]]),
        "bench": (["bench", "--size", "2x2", "--no-store", "--json", "--peak-seconds", "0.05"],
                  [["--size", s] for s in sizes] + [["--batch-size", "0"], ["--model", "v2"], ["--precision", "int4"],
                   ["--peak-seconds", "0"], ["--segments", "0"], ["--threads", "-1"]]),
        "demo": (["demo", "--out", "demo_out", "--size", "2x2"],
                 [["--size", s] for s in sizes] + [["--size", "1126x691"]] + [["--out", u] for u in urls]
                 + [["--out", f"{o}/keep"], ["--out", f"{o}/keep/notes.txt"], ["--out", no_dir],
                    ["--precision", "int4"]]),
    }
    cases: list[list[str]] = [["no-such-command"], ["--no-such-flag"]]
    names = sorted(plans)
    while len(cases) < n:
        base, fragments = plans[rng.choice(names)]
        picked = rng.sample(fragments, rng.choice([1, 1, 2]))
        cases.append(base + [arg for fragment in picked for arg in fragment])
    return cases


def assert_one_error_line(args: object, stderr: str) -> None:
    """What the README promises a bad invocation: exactly one line on stderr, `error: ...`, no usage block."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, stderr)


def test_fuzz_bad_arguments_exit_2_in_one_line_and_touch_nothing(fuzz_world: tuple[Path, Path]) -> None:
    outside, work = fuzz_world
    tmp = outside.parent
    before = snapshot(outside)
    runner = CliRunner()
    cases = bad_argument_cases(outside, random.Random(10), 300)
    for args in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        assert "Traceback" not in result.output, (args, result.output)
        assert_one_error_line(args, result.stderr)
    assert snapshot(outside) == before
    assert sorted(p.name for p in tmp.iterdir()) == ["outside", "work"]
    assert list(work.iterdir()) == [], [p.name for p in work.iterdir()]
    # a handful as real processes (pipes, not a terminal): the same one line, exit 2
    procs = [
        subprocess.Popen([sys.executable, "-m", "tessera_pipeline.cli", *args], cwd=work, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in (["tiles", "--bbox=-1,53,-2.5,54"], ["bench", "--size", "foo"], ["demo", "--size", "foo"],
                     ["verify", "--store", f"{outside}/nostore"],
                     ["export", "--store", f"{outside}/store.zarr", "--year", "2024", "--tile", TILE,
                      "--geotiff", "s3://b/x.tif"])
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (proc.args, err)
        assert_one_error_line(proc.args, err)
    assert snapshot(outside) == before and list(work.iterdir()) == []


def test_reads_of_tiles_larger_than_one_chunk_find_every_shard(tmp_path: Path) -> None:
    """A multi-chunk tile (one shard of several inner chunks) reads back and verifies: no false 'missing object'."""
    from tessera_pipeline.store import TileStore

    store = TileStore(str(tmp_path / "big.zarr"))
    store.create({"model_version": "v1.1", "checkpoint_sha256": "0" * 64, "data_source": "mpc"})
    rng = np.random.default_rng(0)
    emb = rng.integers(-127, 128, size=(300, 200, 128), dtype=np.int8)
    sc = rng.random((300, 200), dtype=np.float32)
    store.write_tile(2024, "grid_-1.55_53.25", emb, sc, epsg=32630, transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 5900000.0))
    data = store.read_tile(2024, "grid_-1.55_53.25")
    assert np.array_equal(data.embeddings, emb)
    assert store.read_tile(2024, "grid_-1.55_53.25", window=(slice(130, 140), slice(0, 200))).embeddings.shape == (10, 200, 128)
    assert store.verify_tile(2024, "grid_-1.55_53.25").ok
