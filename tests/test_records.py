"""Typed records: what the store writes parses with its model, what older writers wrote still reads,
unknown keys are refused on write, and the bytes written keep their shape."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_pipeline import __version__
from tessera_pipeline.errors import StoreConflictError, StoreError, StoreIntegrityError
from tessera_pipeline.run.progress import RunProgress
from tessera_pipeline.store import TileStore, layout, write_encoded_tile
from tessera_pipeline.store.backend import LocalBackend
from tessera_pipeline.store.manifest import build_manifest
from tessera_pipeline.store.records import (
    GEOEMB_CONVENTION,
    CommitMarker,
    FailureRecord,
    ManifestRow,
    ProgressSnapshot,
    RootAttributes,
    RunRecord,
    check_model,
    root_attributes,
)
from tessera_pipeline.store.runlog import RunLog

MODEL = {"model_version": "v1.1", "checkpoint_sha256": "ab" * 32, "dimensions": 128, "representation_dim": 192,
         "data_source": "mpc"}
TRANSFORM = (10.0, 0.0, 599000.123, 0.0, -10.0, 5907000.456)
TILE = "grid_-1.55_53.25"
YEAR = 2024

#: A marker as the store wrote it before the records were typed (docs/formats.md section 4's example).
OLD_MARKER: dict[str, Any] = {
    "format": "tessera-commit/1", "year": 2024, "tile": TILE,
    "version": "v20261122T003412393446Z-75247d34",
    "path": f"2024/{TILE}/v20261122T003412393446Z-75247d34",
    "committed_at": "2026-11-22T00:34:12.592446+00:00", "epsg": 32630,
    "transform": [10.0, 0.0, 599000.123, 0.0, -10.0, 5907000.456], "shape": [1126, 690, 128],
    "checksum_algorithm": "sha256",
    "arrays": {"embeddings": {"dtype": "int8", "shape": [1126, 690, 128], "sha256": "0" * 64},
               "scales": {"dtype": "float32", "shape": [1126, 690], "sha256": "1" * 64}},
    "provenance": {"checkpoint_sha256": "ab" * 32, "model_version": "v1.1", "pipeline_version": "0.1.0",
                   "precision": "bf16", "timings": {"encode_s": 1.5}},
    "store_write_s": 1.1,
}
#: Root attributes as the store wrote them before (docs/formats.md section 2's example).
OLD_ROOT: dict[str, Any] = {
    "tessera:store_format": "tessera-store/1",
    "tessera:model": dict(MODEL),
    "tessera:quantisation": {"method": "per_pixel_symmetric_int8", "quantized_dtype": "int8", "scale_dtype": "float32",
                             "scale_array": "scales", "dequantise": "embeddings.astype(float32) * scales[..., None]",
                             "scale_nodata": "NaN"},
    "tessera:layout": {"tile_group": "{year}/{tile}/{version}", "commit_marker": "_commits/{year}/{tile}.json"},
    "geoemb:type": "pixel", "geoemb:dimensions": 128, "geoemb:data_type": "int8",
    "geoemb:gsd": 10.0, "geoemb:spatial_layout": "utm_tiles",
}
#: Root attributes as written now: our keys under our own prefix, and the registered geoemb: convention.
NEW_ROOT: dict[str, Any] = {
    **{k.replace("tessera:", "tessera-pipeline:"): v for k, v in OLD_ROOT.items()},
    "zarr_conventions": [GEOEMB_CONVENTION],
    "geoemb:model": "https://geotessera.org/model/1.1",
    "geoemb:source_data": ["https://sentinel.esa.int/web/sentinel/missions/sentinel-1",
                           "https://sentinel.esa.int/web/sentinel/missions/sentinel-2"],
    "geoemb:build_version": f"tessera-pipeline {__version__}",
    "geoemb:quantization": {"method": "per_pixel_scale", "original_dtype": "float32", "quantized_dtype": "int8",
                            "scale": {"type": "array", "array_name": "scales", "nodata": "NaN"}},
}


def write(url: str) -> None:
    """Commit one small random tile."""
    rng = np.random.default_rng(3)
    emb = rng.integers(-127, 128, (20, 30, 128), dtype=np.int8)
    scales = rng.uniform(0.005, 0.02, (20, 30)).astype(np.float32)
    write_encoded_tile(url, YEAR, TILE, emb, scales, epsg=32630, transform=TRANSFORM,
                       provenance={"precision": "bf16", "timings": {"encode_s": np.float32(1.5)}}, model_attrs=MODEL)


def test_marker_and_root_written_now_parse_and_keep_their_shape(tmp_path: Path) -> None:
    """The marker bytes are `json.dumps(indent=1, sort_keys=True)` of exactly the documented keys; root likewise."""
    url = str(tmp_path / "store")
    write(url)
    raw = (tmp_path / "store" / layout.marker_key(YEAR, TILE)).read_bytes()
    doc = json.loads(raw)
    assert raw == json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()
    assert set(doc) == set(OLD_MARKER) and set(doc["arrays"]["embeddings"]) == {"dtype", "shape", "sha256"}
    assert isinstance(doc["epsg"], int) and all(isinstance(v, float) for v in doc["transform"])
    assert not CommitMarker.parse(doc, where="marker").unknown_keys()
    root = json.loads((tmp_path / "store" / "zarr.json").read_bytes())
    assert root["attributes"] == NEW_ROOT and root_attributes(MODEL) == NEW_ROOT
    assert not RootAttributes.parse(root["attributes"], where="root").unknown_keys()
    assert not [k for k in root["attributes"] if k.startswith("tessera:")]  # ucam-eo's registered prefix, not ours
    version = json.loads((tmp_path / "store" / doc["path"] / "zarr.json").read_bytes())["attributes"]
    assert version["tessera-pipeline:tile"] == TILE and not [k for k in version if k.startswith("tessera:")]
    # The tile's georeference under the registered proj: and spatial: conventions, as geotessera's zone groups carry it.
    assert {c["name"] for c in version["zarr_conventions"]} == {"proj", "spatial"}
    assert version["proj:code"] == "EPSG:32630" and version["spatial:transform"] == list(TRANSFORM)
    assert version["spatial:shape"] == [20, 30] and version["spatial:registration"] == "pixel"
    assert version["spatial:bbox"] == [TRANSFORM[2], TRANSFORM[5] - 200.0, TRANSFORM[2] + 300.0, TRANSFORM[5]]


def test_the_root_carries_geotesseras_geoemb_convention_entry() -> None:
    """The same registration geotessera 0.11.0 stamps on its stores (and the same quantisation description)."""
    zarr_mod = pytest.importorskip("geotessera.zarr")
    assert NEW_ROOT["zarr_conventions"] == [zarr_mod.GEOEMB_CONVENTION]


def test_a_store_written_in_the_old_shape_reads(tmp_path: Path) -> None:
    """Old markers and roots validate; keys a newer writer might add are kept on read, refused on write."""
    assert CommitMarker.parse(OLD_MARKER, where="old").version == OLD_MARKER["version"]
    assert RootAttributes.parse(OLD_ROOT, where="old").model.data_source == "mpc"
    newer = {**OLD_MARKER, "written_by": "a newer pipeline"}
    assert CommitMarker.parse(newer, where="newer").model_extra == {"written_by": "a newer pipeline"}
    with pytest.raises(StoreError, match="unknown key 'written_by'"):
        CommitMarker.build(**newer)
    with pytest.raises(StoreError, match="unknown key 'arrays.scales.crc'"):
        CommitMarker.build(**{**OLD_MARKER, "arrays": {**OLD_MARKER["arrays"],
                                                     "scales": {**OLD_MARKER["arrays"]["scales"], "crc": 1}}})
    store = TileStore(str(tmp_path / "store"))
    store.backend.put_atomic("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group",
                                                      "attributes": OLD_ROOT}).encode())
    store.backend.put_atomic(layout.marker_key(YEAR, TILE), json.dumps(newer).encode())
    legacy_read = {k.replace("tessera:", "tessera-pipeline:"): v for k, v in OLD_ROOT.items()}
    assert store.root_attrs() == legacy_read and store.marker(YEAR, TILE) == newer


def test_a_store_with_legacy_keys_takes_new_tiles_and_keeps_its_root(tmp_path: Path) -> None:
    """A store created before the prefix moved: same-model writes commit and read; another model is still refused."""
    url = str(tmp_path / "store")
    store = TileStore(url)
    store.backend.put_atomic("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": OLD_ROOT}).encode())
    write(url)
    assert json.loads((tmp_path / "store" / "zarr.json").read_bytes())["attributes"] == OLD_ROOT
    assert store.read_tile(YEAR, TILE).embeddings.shape == (20, 30, 128)
    with pytest.raises(StoreConflictError, match="refusing to add model_version='v1.0'"):
        write_encoded_tile(url, YEAR, "grid_1.05_1.05", np.zeros((2, 2, 128), np.int8), np.ones((2, 2), np.float32),
                           epsg=32630, transform=TRANSFORM, provenance={}, model_attrs={**MODEL, "model_version": "v1.0"})


def test_a_malformed_marker_is_an_integrity_error_naming_the_key(tmp_path: Path) -> None:
    """A read checks the marker against its model before it trusts a field of it."""
    store = TileStore(str(tmp_path / "store"))
    store.backend.put_atomic(layout.marker_key(YEAR, TILE), json.dumps({**OLD_MARKER, "epsg": "utm"}).encode())
    with pytest.raises(StoreIntegrityError, match=f"tile {TILE}: commit marker: epsg"):
        store.read_tile(YEAR, TILE)
    assert not store.verify_tile(YEAR, TILE).ok


def test_model_compatibility_rule(caplog: pytest.LogCaptureFixture) -> None:
    have = NEW_ROOT["tessera-pipeline:model"]
    with pytest.raises(StoreConflictError, match="model_version='v1.1', refusing to add model_version='v1.0'"):
        check_model("s", have, {**have, "model_version": "v1.0"})
    with pytest.raises(StoreConflictError, match="data_source"):
        check_model("s", have, {**have, "data_source": "aws"})
    with caplog.at_level(logging.WARNING):
        check_model("s", have, {**have, "checkpoint_sha256": "cd" * 32})
    assert "created with checkpoint" in caplog.text


def test_run_records_failures_and_progress(tmp_path: Path) -> None:
    """Run, failure and progress records are built from their models; unknown keys are refused on write."""
    log_ = RunLog(LocalBackend(tmp_path))
    from tessera_pipeline.store.runlog import PlannedTiles

    plan = PlannedTiles(np.array([YEAR], np.int32), [TILE], np.array([100], np.int64))
    record = {"kind": "run", "created_at": "2026-11-22T00:00:00+00:00", "config": {"year": YEAR},
              "checkpoint": {"source": "c.pt", "sha256": "ab", "model_version": "v1.1", "data_source": "mpc"},
              "plan": {"tiles": 1, "pixels": 100, "order": "pixels descending"}}
    log_.save_run("r1", record, plan)
    assert log_.load_run("r1") == {"format": "tessera-run/1", "run_id": "r1", **record}
    with pytest.raises(StoreError, match="unknown key 'checkpoint.trust'"):
        log_.save_run("r2", {**record, "checkpoint": {**record["checkpoint"], "trust": True}}, plan)
    old = {"format": "tessera-run/1", "run_id": "r3", "kind": "run", "config": {"processor": "x"}, "trust_checkpoint": 1}
    log_.backend.put_atomic("_run/runs/r3/run.json", json.dumps(old).encode())
    assert RunRecord.parse(log_.load_run("r3"), where="r3").model_extra == {"trust_checkpoint": 1}

    log_.record_failure(YEAR, TILE, {"reason": "io-error", "kind": "exhausted", "message": "503", "attempts": 3,
                                     "hw_class": "cpu", "run_id": "r1"})
    doc = log_.failure(YEAR, TILE)
    assert doc is not None and FailureRecord.parse(doc, where="f").kind == "exhausted"
    assert set(doc) == {"year", "tile", "failed_at", "reason", "kind", "message", "attempts", "hw_class", "run_id"}
    with pytest.raises(StoreError, match="unknown key 'traceback'"):
        log_.record_failure(YEAR, TILE, {"reason": "x", "traceback": "..."})
    assert FailureRecord.parse({"reason": "x", "message": "old"}, where="old").kind == "permanent"

    snapshot = RunProgress("r1", total=3, already_complete=1).to_dict()
    log_.save_progress("r1", snapshot)
    assert log_.load_progress("r1") == json.loads(json.dumps(snapshot))
    assert set(ProgressSnapshot.model_fields) == set(snapshot)
    assert ProgressSnapshot.parse({"run_id": "r0", "total": 2}, where="old").finished is False
    with pytest.raises(StoreError, match="unknown key 'extra'"):
        log_.save_progress("r1", {**snapshot, "extra": 1})


def test_manifest_columns_are_the_manifest_row_model(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    write(url)
    table = build_manifest(TileStore(url)).table
    assert set(table.column_names) == set(ManifestRow.model_fields)
    row = ManifestRow.parse(table.to_pylist()[0], where="row")
    assert row.tile == TILE and not row.unknown_keys() and row.version_marker()["path"] == row.path
