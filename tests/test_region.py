"""Region selection: boxes (across the antimeridian too), GeoJSON in any declared CRS, tile lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pyproj import Transformer

from tessera_pipeline.cli.main import cli
from tessera_pipeline.cli.options import RegionRequest, region_tile_names, select_tiles
from tessera_pipeline.errors import EmptySelectionError, RegionError, RegionFileError
from tessera_pipeline.grid import tile_geometry
from tessera_pipeline.landmask import LandMask, all_cells_mask, globe_landmask
from tessera_pipeline.region import parse_bbox, select_bbox, select_geojson, select_tile_file

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:
    HAVE_HYPOTHESIS = False

EVERYWHERE = all_cells_mask()


def write_geojson(path: Path, doc: dict[str, object]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def ring(w: float, s: float, e: float, n: float) -> list[list[float]]:
    return [[w, s], [e, s], [e, n], [w, n], [w, s]]


def test_bbox_on_cell_edges_selects_exactly_the_cells_inside() -> None:
    tiles = select_bbox(parse_bbox("-4,40,-3,41"), EVERYWHERE)  # central Spain
    assert len(tiles) == 100
    assert set(tiles.lon.round(2)) == {round(-3.95 + 0.1 * i, 2) for i in range(10)}


def test_bbox_is_intersected_with_the_land_mask() -> None:
    # Lisbon coast: part land, part Atlantic.
    everything = select_bbox(parse_bbox("-10,38,-9,39"), EVERYWHERE)
    land = select_bbox(parse_bbox("-10,38,-9,39"), globe_landmask())
    assert 0 < len(land) < len(everything)
    assert "grid_-9.15_38.75" in land  # Lisbon


def test_bbox_across_the_antimeridian() -> None:
    wrapped = select_bbox(parse_bbox("179.5,-17,-179.5,-16"), EVERYWHERE)
    assert len(wrapped) == 100
    assert {"grid_179.95_-16.55", "grid_-179.95_-16.55"} <= set(wrapped.names())
    land = select_bbox(parse_bbox("179.5,-17,-179.5,-16"), globe_landmask())  # Fiji's Vanua Levu / Taveuni
    assert len(land) > 0
    assert np.all((land.lon > 179.5) | (land.lon < -179.5))


def test_point_bbox_selects_its_tile() -> None:
    assert select_bbox(parse_bbox("-1.53,53.22,-1.53,53.22"), EVERYWHERE).names() == ["grid_-1.55_53.25"]


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,50,1,40", "0,-91,1,0", "-181,0,0,1"])
def test_bad_bbox_is_a_region_error(text: str) -> None:
    with pytest.raises(RegionError):
        parse_bbox(text)


def test_empty_selection_is_an_error_not_a_silent_success() -> None:
    with pytest.raises(EmptySelectionError, match="no land tile"):
        select_bbox(parse_bbox("-150,-21,-149.5,-20.5"), globe_landmask())


def test_geojson_polygon_selects_overlapping_tiles(tmp_path: Path) -> None:
    doc = {"type": "Polygon", "coordinates": [ring(-3.98, 40.02, -3.02, 40.98)]}
    tiles = select_geojson(write_geojson(tmp_path / "r.geojson", doc), EVERYWHERE)
    assert tiles.names() == select_bbox(parse_bbox("-4,40,-3,41"), EVERYWHERE).names()


def test_geojson_edges_touching_a_tile_do_not_select_it(tmp_path: Path) -> None:
    doc = {"type": "Polygon", "coordinates": [ring(-4.0, 40.0, -3.0, 41.0)]}
    assert len(select_geojson(write_geojson(tmp_path / "r.geojson", doc), EVERYWHERE)) == 100


def test_geojson_feature_collection_of_several_polygons(tmp_path: Path) -> None:
    features = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring(10.01, 45.01, 10.09, 45.09)]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "MultiPolygon", "coordinates": [[ring(11.01, 46.01, 11.19, 46.09)]]}},
    ]
    doc = {"type": "FeatureCollection", "features": features}
    tiles = select_geojson(write_geojson(tmp_path / "r.geojson", doc), EVERYWHERE)
    assert tiles.names() == ["grid_10.05_45.05", "grid_11.05_46.05", "grid_11.15_46.05"]


def test_geojson_declared_crs_is_honoured(tmp_path: Path) -> None:
    # A lon/lat box given in Web Mercator (a box there too) selects the same tiles.
    tr = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    w, s = tr.transform(-3.98, 40.02)
    e, n = tr.transform(-3.02, 40.98)
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring(w, s, e, n)]}}],
    }
    tiles = select_geojson(write_geojson(tmp_path / "r.geojson", doc), EVERYWHERE)
    assert tiles.names() == select_bbox(parse_bbox("-4,40,-3,41"), EVERYWHERE).names()


def test_geojson_in_british_national_grid(tmp_path: Path) -> None:
    # 2 km square around Manchester town hall (383800, 398200 in EPSG:27700).
    doc = {
        "type": "Polygon",
        "crs": {"type": "name", "properties": {"name": "EPSG:27700"}},
        "coordinates": [ring(382800, 397200, 384800, 399200)],
    }
    tiles = select_geojson(write_geojson(tmp_path / "r.geojson", doc), globe_landmask())
    assert "grid_-2.25_53.45" in tiles and len(tiles) <= 4


@pytest.mark.parametrize(
    "content",
    ["not json", json.dumps({"type": "Point", "coordinates": [0, 0]}), json.dumps({"type": "Polygon", "coordinates": "x"}),
     json.dumps({"type": "Polygon", "crs": {"type": "name", "properties": {"name": "EPSG:99999"}}, "coordinates": [ring(0, 0, 1, 1)]})],
)
def test_bad_region_files_are_typed_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(RegionFileError):
        select_geojson(path, EVERYWHERE)


def test_tile_list_is_intersected_with_the_land_mask(tmp_path: Path) -> None:
    path = tmp_path / "tiles.txt"
    path.write_text("grid_-1.55_53.25\ngrid_-150.05_-20.05\ngrid_0.15_52.05\n")
    assert select_tile_file(path, globe_landmask()).names() == ["grid_0.15_52.05", "grid_-1.55_53.25"]


def test_region_request_needs_exactly_one_selector(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match="no region"):
        select_tiles(RegionRequest())
    with pytest.raises(RegionError, match="choose one"):
        select_tiles(RegionRequest(bbox="0,0,1,1", global_=True))
    assert region_tile_names(RegionRequest(bbox="-1.6,53.2,-1.5,53.3", landmask="none")) == ["grid_-1.55_53.25"]


def test_cli_tiles_json_lists_geometry() -> None:
    result = CliRunner().invoke(cli, ["tiles", "--bbox", "-1.6,53.2,-1.5,53.3", "--json"])
    assert result.exit_code == 0, result.output
    (tile,) = json.loads(result.output)
    geom = tile_geometry("grid_-1.55_53.25")
    assert tile == {
        "name": "grid_-1.55_53.25", "lon": -1.55, "lat": 53.25, "epsg": 32630,
        "height": 1126, "width": 690, "transform": list(geom.transform),
    }


def test_cli_tiles_count_and_names() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["tiles", "--bbox", "-4,40,-3,41", "--count"]).output.strip() == "100"
    names = runner.invoke(cli, ["tiles", "--bbox", "-4,40,-3.8,40.1"]).output.split()
    assert names == ["grid_-3.95_40.05", "grid_-3.85_40.05"]


@pytest.mark.slow
def test_cli_global_count() -> None:
    result = CliRunner().invoke(cli, ["tiles", "--global", "--count"])
    assert result.exit_code == 0
    assert abs(int(result.output) - 1_593_480) < 15_935


def test_cli_empty_selection_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(cli, ["tiles", "--bbox", "-150,-21,-149.5,-20.5"])
    assert result.exit_code == 2
    assert "no land tile" in result.output


# --- hints: every box the region module suggests is one parse_bbox accepts ---------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"(?<![\w.,+-])({_NUM}(?:,{_NUM}){{3}})(?![\w.,])")
#: Values users type: plain and awkward numbers, range edges, just outside them.
_EDGES = [0.0, -0.0, 1.0, -1.0, 45.5, 53.2, -2.5, 89.9, 90.0, -90.0, 90.5, 120.0, 179.99, 180.0, -180.0, 180.5, 1e-7,
          0.1 + 0.2, 12.3456789, -89.99999999]


def assert_hints_are_valid(text: str, message: str) -> list[tuple[float, ...]]:
    """Each box `message` names besides the typed `text` parses, differs from it and rearranges its four numbers."""
    typed = sorted(float(p) for p in text.split(","))
    boxes = []
    for hint in _BOX_RE.findall(message.replace(text, "")):
        box = parse_bbox(hint)  # raises RegionError when the hint is itself refused
        assert sorted(box) == typed and list(box) != [float(p) for p in text.split(",")], (text, message)
        boxes.append(box)
    return boxes


def random_box_texts(rng: np.random.Generator, n: int) -> list[str]:
    """`n` W,S,E,N texts: random numbers, edge values, and good boxes with one mistake (S/N, W/E, lon/lat)."""
    def number() -> float:
        pick = rng.integers(4)
        if pick == 0:
            return float(rng.choice(_EDGES)) * float(rng.choice([1, -1]))
        if pick == 1:
            return float(rng.integers(-200, 201))
        return float(rng.uniform(-200, 200) if pick == 2 else rng.uniform(-95, 95))

    texts = []
    for i in range(n):
        w, s, e, n_ = (number() for _ in range(4))
        if i % 2:
            w, e = sorted(rng.uniform(-180, 180, 2))
            s, n_ = sorted(rng.uniform(-90, 90, 2))
            w, s, e, n_ = [(w, n_, e, s), (e, s, w, n_), (s, w, n_, e), (w, s, e, n_)][i // 2 % 4]
        texts.append(",".join(repr(float(v)) for v in (w, s, e, n_)))
    return texts


def test_every_bbox_hint_is_a_box_parse_bbox_accepts() -> None:
    """Thousands of typed boxes, good, bad and mistaken: whatever box an error suggests, --bbox accepts."""
    rng = np.random.default_rng(8)
    hinted = 0
    for text in random_box_texts(rng, 4000):
        try:
            parse_bbox(text)
        except RegionError as exc:
            hinted += len(assert_hints_are_valid(text, str(exc)))
    assert hinted > 500  # the property was exercised, not vacuously true


@pytest.mark.parametrize(("typed", "meant"), [
    ("0,10,1,5", "0,5,1,10"),  # south and north swapped
    ("-1.6,53.3,-1.5,53.2", "-1.6,53.2,-1.5,53.3"),
    ("-1,53,-2.5,54", "-2.5,53,-1,54"),  # west and east swapped: would wrap round the globe
    ("53,120,54,121", "120,53,121,54"),  # latitude first
    ("-1.123456789,53,-2.5,54", "-2.5,53,-1.123456789,54"),  # every digit survives in the hint
])
def test_a_likely_mistake_gets_the_box_meant(typed: str, meant: str) -> None:
    """One swap (S/N, W/E, lon/lat) is answered with exactly the box meant, to the last digit."""
    with pytest.raises(RegionError) as info:
        parse_bbox(typed)
    assert assert_hints_are_valid(typed, str(info.value)) == [parse_bbox(meant)]


def test_empty_selection_hints_are_valid_boxes() -> None:
    """A box that selects no land but whose lon/lat swap does: the suggested box parses and selects land."""
    rng = np.random.default_rng(3)
    grid = np.zeros((1800, 3600), dtype=bool)
    grid[rng.integers(0, 1800, 20_000), rng.integers(0, 3600, 20_000)] = True
    sparse = LandMask(grid=grid, source="sparse test mask")
    hinted = 0
    for _ in range(600):
        w, s = (float(v) for v in rng.uniform(-90, 88, 2))
        e, n = w + float(rng.uniform(0, 1.5)), s + float(rng.uniform(0, 1.5))
        box = parse_bbox(f"{w!r},{s!r},{e!r},{n!r}")
        try:
            select_bbox(box, sparse)
        except EmptySelectionError as exc:
            text = ",".join(repr(v) for v in box)
            found = assert_hints_are_valid(text, str(exc).split("selects no land tile", 1)[1])
            assert all(len(select_bbox(b, sparse)) for b in found)
            hinted += len(found)
    assert hinted > 20


if HAVE_HYPOTHESIS:
    coordinate = st.floats(min_value=-400, max_value=400, allow_nan=False) | st.sampled_from(_EDGES)

    @settings(max_examples=500, deadline=None)
    @given(st.tuples(coordinate, coordinate, coordinate, coordinate))
    def test_every_bbox_hint_parses_hypothesis(box: tuple[float, float, float, float]) -> None:
        """The same property over boxes hypothesis searches for."""
        text = ",".join(repr(v) for v in box)
        try:
            parse_bbox(text)
        except RegionError as exc:
            assert_hints_are_valid(text, str(exc))
