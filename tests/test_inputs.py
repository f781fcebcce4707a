"""Every way a broken upstream stage can spoil a d-pixel tile gives a typed error naming tile, file and
problem, from a local directory and from an S3-compatible server alike."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tessera_pipeline.errors import (
    CorruptFileError,
    DoyError,
    DtypeError,
    InputError,
    MissingFileError,
    NonFiniteError,
    RemoteInputError,
    ShapeMismatchError,
)
from tessera_pipeline.grid import TileGeometry, tile_geometry
from tessera_pipeline.inputs import s3
from tessera_pipeline.inputs.dpixel import open_tile, open_tile_at
from tessera_pipeline.inputs.synthetic import write_roi, synthetic_arrays
from tessera_pipeline.inputs.tile import DPIXEL_FILES

TILE = "grid_0.15_52.05"
YEAR = 2024
H, W = 6, 5
FIXTURES = Path(__file__).parent / "fixtures" / "golden"

Arrays = dict[str, np.ndarray]


def good_arrays() -> Arrays:
    return synthetic_arrays(H, W, seed=3, n_s2=12, n_s1_asc=5, n_s1_desc=4)


def reduced_geometry(height: int = H, width: int = W) -> TileGeometry:
    grid = tile_geometry(TILE)
    return TileGeometry(grid.name, grid.lon, grid.lat, grid.epsg, height, width, grid.transform)


def write_tile(directory: Path, arrays: Arrays, *, roi: TileGeometry | None = None) -> Path:
    """Write arrays as upstream's files (+ roi.tiff) into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        np.save(directory / f"{key}.npy", array)
    if roi is not None:
        write_roi(directory / "roi.tiff", roi)
    return directory


class Backend:
    """Puts a local tile root where a test reads it: in place, or uploaded to a bucket."""

    def __init__(self, kind: str, tmp_path: Path, bucket: str | None) -> None:
        self.kind = kind
        self.local_root = tmp_path / "root"
        self.cache = tmp_path / "cache"
        self.bucket = bucket

    def tile_dir(self) -> Path:
        return self.local_root / str(YEAR) / TILE

    def publish(self) -> str:
        """Make the local root readable by the backend and return the root location."""
        if self.kind == "local":
            return str(self.local_root)
        import boto3

        prefix = uuid.uuid4().hex[:8]
        client = boto3.client("s3")
        for path in self.local_root.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(self.local_root)}")
        return f"s3://{self.bucket}/{prefix}"

    def open(self, arrays: Arrays | None = None, *, roi: TileGeometry | None = None, edit: Callable[[Path], None] | None = None):  # noqa: ANN201
        write_tile(self.tile_dir(), good_arrays() if arrays is None else arrays, roi=roi or reduced_geometry())
        if edit is not None:
            edit(self.tile_dir())
        return open_tile_at(self.publish(), YEAR, TILE, cache_dir=self.cache)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    bucket = None
    if request.param == "s3":
        bucket = request.getfixturevalue("inputs_bucket")
    return Backend(request.param, tmp_path, bucket)


@pytest.fixture(scope="module")
def inputs_bucket(s3_endpoint: str) -> str:
    from s3server import create_bucket

    return create_bucket(f"inputs-{uuid.uuid4().hex[:8]}")


def expect(backend: Backend, error: type[InputError], file: str, match: str, **kwargs: object) -> InputError:
    with pytest.raises(error, match=match) as info:
        backend.open(**kwargs)  # type: ignore[arg-type]
    err = info.value
    assert str(err).startswith(f"tile {TILE}: ")
    assert err.tile == TILE and err.file is not None and err.file.endswith(file)
    if backend.kind == "s3":
        assert err.file.startswith("s3://")
    return err


def with_array(key: str, value: np.ndarray) -> Arrays:
    arrays = good_arrays()
    arrays[key] = value
    return arrays


# --- good tiles ---------------------------------------------------------------------------------


def test_good_tile_opens_memory_mapped(backend: Backend) -> None:
    tile = backend.open()
    assert (tile.name, tile.height, tile.width) == (TILE, H, W)
    assert isinstance(tile.bands, np.memmap) and tile.bands.dtype == np.uint16
    assert tile.geometry == reduced_geometry()
    assert np.array_equal(tile.masks, good_arrays()["masks"])


def test_empty_orbit_is_valid(backend: Backend) -> None:
    arrays = good_arrays()
    arrays["sar_descending"] = np.zeros((0, H, W, 2), np.int16)
    arrays["sar_descending_doy"] = np.zeros((0,), np.int16)
    tile = backend.open(arrays)
    assert tile.sar_descending.shape == (0, H, W, 2)


def test_full_size_tile_without_roi_is_checked_against_the_grid(tmp_path: Path) -> None:
    # A 6 x 5 tile named like a grid tile but with no roi.tiff: the grid says 1139 x 729.
    write_tile(tmp_path / str(YEAR) / TILE, good_arrays())
    with pytest.raises(ShapeMismatchError, match="1139 x 729"):
        open_tile_at(tmp_path, YEAR, TILE)


def test_golden_fixture_tiles_open_without_geometry() -> None:
    tile = open_tile(FIXTURES / "v1_1" / "tile_b")
    assert tile.name == "tile_b" and tile.geometry is None
    assert tile.sar_descending.shape[0] == 0


# --- broken tiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("fname", DPIXEL_FILES)
def test_missing_file(backend: Backend, fname: str) -> None:
    expect(backend, MissingFileError, fname, "missing file", edit=lambda d: (d / fname).unlink())


def test_truncated_file(backend: Backend) -> None:
    def truncate(d: Path) -> None:
        data = (d / "bands.npy").read_bytes()
        (d / "bands.npy").write_bytes(data[: len(data) // 2])

    expect(backend, CorruptFileError, "bands.npy", "truncated", edit=truncate)


def test_not_an_npy_file(backend: Backend) -> None:
    expect(backend, CorruptFileError, "masks.npy", "not a valid .npy", edit=lambda d: (d / "masks.npy").write_text("<html>oops</html>"))


def test_wrong_dtype(backend: Backend) -> None:
    arrays = with_array("bands", good_arrays()["bands"].astype(np.float32))
    expect(backend, DtypeError, "bands.npy", "float32, expected uint16", arrays=arrays)


def test_float_doys_are_a_dtype_error(backend: Backend) -> None:
    arrays = with_array("doys", good_arrays()["doys"].astype(np.float64))
    expect(backend, DtypeError, "doys.npy", "integer day of year", arrays=arrays)


def test_nan_in_a_float_array(backend: Backend) -> None:
    bands = good_arrays()["bands"].astype(np.float32)
    bands[3, 2, 1, 4] = np.nan
    expect(backend, NonFiniteError, "bands.npy", "1 NaN or infinite", arrays=with_array("bands", bands))


def test_inf_in_doys(backend: Backend) -> None:
    doys = good_arrays()["sar_ascending_doy"].astype(np.float32)
    doys[-1] = np.inf
    expect(backend, NonFiniteError, "sar_ascending_doy.npy", "NaN or infinite", arrays=with_array("sar_ascending_doy", doys))


@pytest.mark.parametrize(
    ("key", "file"),
    [("masks", "masks.npy"), ("doys", "doys.npy"), ("sar_ascending_doy", "sar_ascending_doy.npy"),
     ("sar_descending", "sar_descending_doy.npy")],
)
def test_time_lengths_differ(backend: Backend, key: str, file: str) -> None:
    arrays = with_array(key, good_arrays()[key][:-1])
    expect(backend, ShapeMismatchError, file, "time steps", arrays=arrays)


@pytest.mark.parametrize("key", ["masks", "sar_ascending", "sar_descending"])
def test_height_or_width_differs_between_streams(backend: Backend, key: str) -> None:
    arrays = with_array(key, good_arrays()[key][:, :, :-1])
    expect(backend, ShapeMismatchError, f"{key}.npy", "height x width", arrays=arrays)


def test_size_differs_from_roi_tiff(backend: Backend) -> None:
    expect(backend, ShapeMismatchError, "bands.npy", "tile geometry is 8 x 5", roi=reduced_geometry(8, W))


def test_wrong_rank_or_band_count(backend: Backend) -> None:
    arrays = with_array("bands", good_arrays()["bands"][..., :9])
    expect(backend, ShapeMismatchError, "bands.npy", "last axis 9, expected 10", arrays=arrays)


def test_corrupt_roi_tiff(backend: Backend) -> None:
    expect(backend, CorruptFileError, "roi.tiff", "GeoTIFF", edit=lambda d: (d / "roi.tiff").write_bytes(b"II*\x00junk"))


@pytest.mark.parametrize(("value", "match"), [(0, "outside 1..366"), (367, "outside 1..366")])
def test_doy_out_of_range(backend: Backend, value: int, match: str) -> None:
    doys = good_arrays()["doys"].copy()
    doys[2] = value
    expect(backend, DoyError, "doys.npy", match, arrays=with_array("doys", doys))


def test_doys_unsorted(backend: Backend) -> None:
    doys = good_arrays()["sar_descending_doy"][::-1].copy()
    expect(backend, DoyError, "sar_descending_doy.npy", "not sorted", arrays=with_array("sar_descending_doy", doys))


# --- S3 specifics -------------------------------------------------------------------------------


def test_s3_cache_is_reused_and_refreshed_when_the_object_changes(s3_endpoint: str, inputs_bucket: str, tmp_path: Path) -> None:
    backend = Backend("s3", tmp_path, inputs_bucket)
    write_tile(backend.tile_dir(), good_arrays(), roi=reduced_geometry())
    root = backend.publish()
    first = open_tile_at(root, YEAR, TILE, cache_dir=backend.cache)
    cached = Path(first.bands.filename)
    assert cached.is_relative_to(backend.cache)
    mtime = cached.stat().st_mtime_ns
    open_tile_at(root, YEAR, TILE, cache_dir=backend.cache)
    assert cached.stat().st_mtime_ns == mtime  # not downloaded again
    import boto3

    bucket, prefix = s3.split_s3(root)
    masks = np.zeros((12, H, W), np.uint8)
    path = tmp_path / "masks.npy"
    np.save(path, masks)
    boto3.client("s3").upload_file(str(path), bucket, f"{prefix}/{YEAR}/{TILE}/masks.npy")
    assert not open_tile_at(root, YEAR, TILE, cache_dir=backend.cache).masks.any()


def test_unreachable_store_is_a_typed_error_after_retries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from s3server import free_port

    monkeypatch.setattr(s3, "BACKOFF_BASE_S", 0.0)
    monkeypatch.setattr(s3, "MAX_ATTEMPTS", 2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(RemoteInputError, match=f"tile {TILE}: s3://nobucket/root/2024/{TILE}/bands.npy: HEAD failed"):
        open_tile_at("s3://nobucket/root", YEAR, TILE, cache_dir=tmp_path)


def test_transient_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setattr(s3, "BACKOFF_BASE_S", 0.0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise EndpointConnectionError(endpoint_url="http://x")
        return "ok"

    assert s3.with_retries(flaky, what="GET", tile=TILE, file="s3://b/k") == "ok"
    assert len(calls) == 3
