"""`plan`: the published global table, real tile geometry, profiles files, the fleet model and the cheapest mix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tessera_pipeline.bench import encoder_bench

from tessera_pipeline.cli.main import cli
from tessera_pipeline.encode.setup import encode_settings
from tessera_pipeline.hardware import detect
from tessera_pipeline.errors import ArgumentError, ConfigError
from tessera_pipeline.grid import TileSet, tile_geometry
from tessera_pipeline.model import LoadedModel, build_model, v1_1_config
from tessera_pipeline.plan import (
    Profile,
    Timing,
    Work,
    assumed_work,
    build_options,
    builtin_profiles,
    cheapest_mix,
    cost_rows,
    fleet_estimate,
    fleet_from_counts,
    load_profiles,
    work_from_tiles,
)
from tessera_pipeline.plan.profiles import dump_profiles, parse_duration

T4 = "azure-nc8as-t4-v3"
AMX = "azure-d16s-v6-amx"


def _plan(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _plan_json(*args: str) -> list[dict]:
    return _plan(*args)["rows"]


def _row(rows: list[dict], profile: str, precision: str) -> dict:
    """The row of a profile (or the first of its table-priced copies) at a precision."""
    return next(r for r in rows if r["kind"] == "profile" and profile in (r["profile"], r["family"])
                and r["precision"] == precision)


def test_published_global_table_is_reproduced_within_1_percent() -> None:
    """The v1.1 post's global table: 1,593,480 tiles, each costing what the 776,940-pixel Manchester tile cost."""
    rows = _plan_json("--tile-count", "1593480", "--pixels-per-tile", "776940", "--model", "v1.1")
    published = {  # profile, precision: (s/tile, machine-hours, total $)
        (T4, "fp32"): (1545, 686e3, 641e3),
        (AMX, "bf16"): (1566, 696e3, 679e3),
        (T4, "bf16"): (2015, 900e3, 837e3),
    }
    for (profile, precision), (seconds, hours, usd) in published.items():
        row = _row(rows, profile, precision)
        assert row["seconds_per_tile"] == pytest.approx(seconds, rel=1e-9)
        assert row["hours"] == pytest.approx(hours, rel=0.02)  # the published hours are rounded harder
        assert row["usd_total"] == pytest.approx(usd, rel=0.01)
        assert row["basis"] == "published"
        assert set(row) >= {"profile", "precision", "seconds_per_tile", "hours", "usd_per_tile", "usd_total", "usd_total_spot"}
    assert _row(rows, T4, "fp32")["policy"] and _row(rows, AMX, "bf16")["policy"]
    assert not _row(rows, T4, "bf16")["policy"]
    # Spot: the AMX post's $0.1785/h against the T4's $0.5176/h reverses the order.
    assert _row(rows, AMX, "bf16")["usd_total_spot"] < _row(rows, T4, "fp32")["usd_total_spot"]


def test_global_plan_uses_real_geometry_and_is_fast() -> None:
    """`plan --global`: every land tile's own raster size, vectorised (seconds, not minutes)."""
    start = time.perf_counter()
    rows = _plan_json("--global", "--model", "v1.1")
    elapsed = time.perf_counter() - start
    t4 = _row(rows, T4, "fp32")
    tiles = t4["hours"] * 3600 / t4["seconds_per_tile"]
    assert tiles == pytest.approx(1_598_651, rel=1e-9)
    mean_pixels = t4["seconds_per_tile"] / (1545 / 776_940)
    # Tiles near the equator are ~1.24 M px, near 60 N ~0.6 M: the land-weighted mean is above Manchester's.
    assert 850_000 < mean_pixels < 950_000
    assert t4["usd_total"] > 641e3 * 1.1
    assert elapsed < 30, f"plan --global took {elapsed:.1f} s"


def test_region_pixels_are_the_sum_of_the_tiles_rasters() -> None:
    """The geometry path counts exactly each tile's height x width, as the grid module defines them."""
    tiles = TileSet.from_names(["grid_-1.55_53.25", "grid_0.15_52.05", "grid_20.05_-33.95", "grid_100.05_0.05"])
    work = work_from_tiles(tiles)
    expected = sum(g.height * g.width for g in (tile_geometry(n) for n in tiles.names()))
    assert work.tiles == 4 and work.pixels == expected
    assert tile_geometry("grid_-1.55_53.25").height * tile_geometry("grid_-1.55_53.25").width == 776_940
    assert work_from_tiles(tiles, pixels_per_tile=10).pixels == 40


def test_bbox_plan_matches_the_manchester_tile_time() -> None:
    """One Manchester tile by bbox takes exactly the published T4 v1.1 fp32 time (same pixel count)."""
    rows = _plan_json("--bbox", "-1.58,53.22,-1.52,53.28", "--model", "v1.1")
    assert _row(rows, T4, "fp32")["seconds_per_tile"] == pytest.approx(1545, rel=1e-9)


def test_durations_and_profile_files(tmp_path: Path) -> None:
    """mm:ss and h:mm:ss parse; a user file round-trips, overrides a built-in, and bad keys are named."""
    assert parse_duration("1:17:58") == 4678 and parse_duration("25:45") == 1545 and parse_duration(12) == 12
    amx = next(p for p in builtin_profiles() if p.name == AMX)
    assert amx.timing("v1.1", "fp32").seconds == 4678
    cheaper = amx.with_prices(0.5)
    path = tmp_path / "profiles.yaml"
    path.write_text(dump_profiles([cheaper]))
    assert load_profiles(path) == [cheaper]
    rows = _plan_json("--tile-count", "10", "--profiles", str(path))
    assert _row(rows, AMX, "bf16")["usd_per_hour"] == 0.5
    path.write_text("profiles:\n  - name: x\n    hw_class: cpu-amx\n    timings:\n      - {model: v1.1, precision: fp8, seconds: 1, pixels: 1}\n")
    with pytest.raises(ConfigError, match=r"profiles.0.timings.0.precision"):
        load_profiles(path)
    result = CliRunner().invoke(cli, ["plan", "--tile-count", "1", "--profiles", str(path)])
    assert result.exit_code == 2 and "precision" in result.output


def test_builtin_profiles_name_their_sources() -> None:
    """Every built-in timing and price says where it comes from; the L4 has no invented price."""
    profiles = {p.name: p for p in builtin_profiles()}
    assert {T4, AMX, "local-l4"} <= set(profiles)
    for profile in profiles.values():
        assert profile.price_source
        assert all(t.source for t in profile.timings)
    assert profiles["local-l4"].usd_per_hour is None
    assert profiles[T4].usd_per_hour == 0.94 and profiles[AMX].usd_per_hour == 0.98


def _profile(name: str, seconds: float, usd: float | None, spot: float | None = None, startup: float = 0.0) -> Profile:
    return Profile(name=name, machine=name.upper(), hw_class="cpu-amx", usd_per_hour=usd, usd_per_hour_spot=spot,
                   startup_s=startup, timings=[Timing(model="v1.1", precision="bf16", seconds=seconds, pixels=100)])


def test_fleet_pulls_tiles_until_none_are_left() -> None:
    """Wall time is tiles over the fleet's summed rate (plus start-up); every machine is paid for all of it."""
    fast, slow = _profile("fast", 10, 2.0, startup=5), _profile("slow", 30, 1.0)
    work = assumed_work(120, 100)
    fleet = fleet_estimate(work, fleet_from_counts([fast, slow], "v1.1", {"fast": 1, "slow": 3}), "v1.1")
    # rates: 1/10 + 3/30 = 0.2 tiles/s -> 600 s, plus the slowest start-up.
    assert fleet.wall_s == pytest.approx(605)
    assert [i.tiles for i in fleet.items] == pytest.approx([60, 60])
    assert fleet.usd_total == pytest.approx(605 / 3600 * (2.0 + 3 * 1.0))


def test_cheapest_mix_fills_the_cheapest_type_first_within_quotas() -> None:
    """Greedy by cost per tile, capped by quotas; the result meets the deadline and costs what the fleet costs."""
    cheap, dear = _profile("cheap", 100, 1.0, spot=0.2), _profile("dear", 50, 4.0)
    work = assumed_work(100_000, 100)
    deadline_days = 10.0
    unlimited = cheapest_mix(work, build_options([cheap, dear], "v1.1"), "v1.1", deadline_days)
    assert [i.profile for i in unlimited.items] == ["cheap"] and unlimited.meets_deadline
    assert unlimited.items[0].machines == 12  # 100,000 tiles x 100 s / 864,000 s = 11.6 -> 12
    capped = cheapest_mix(work, build_options([cheap, dear], "v1.1", quotas={"cheap": 5}), "v1.1", deadline_days)
    assert {i.profile: i.machines for i in capped.items} == {"cheap": 5, "dear": 4}
    assert capped.meets_deadline and capped.wall_s <= deadline_days * 86400
    again = fleet_estimate(work, fleet_from_counts([cheap, dear], "v1.1", {"cheap": 5, "dear": 4}), "v1.1")
    assert capped.usd_total == pytest.approx(again.usd_total)
    spot = cheapest_mix(work, build_options([cheap, dear], "v1.1", spot=True), "v1.1", deadline_days)
    assert [(i.profile, i.pricing) for i in spot.items] == [("cheap", "spot")]
    short = cheapest_mix(work, build_options([cheap, dear], "v1.1", quotas={"cheap": 1, "dear": 1}), "v1.1", 1.0)
    assert not short.meets_deadline and short.note
    with pytest.raises(ArgumentError, match="nosuch"):
        build_options([cheap], "v1.1", quotas={"nosuch": 1})


def test_unpriced_profiles_are_rows_but_not_in_the_mix() -> None:
    """The L4 (no published price) shows its time, no cost, and joins the mix only once priced."""
    profiles = builtin_profiles()
    work = Work(10, 10 * 776_940, "test")
    l4 = next(r for r in cost_rows(work, profiles, "v1.1") if r.profile == "local-l4" and r.precision == "bf16")
    assert l4.usd_total is None and l4.seconds_per_tile == 276
    assert "local-l4" not in {o.profile.name for o in build_options(profiles, "v1.1")}
    report = _plan("--tile-count", "1000", "--price", "local-l4=0.05", "--deadline", "1", "--quota", "local-l4=100",
                   "--with-published")
    assert report["mix"]["items"][0]["profile"] == "local-l4" and report["mix"]["meets_deadline"]  # cheapest per tile
    assert "local-l4" not in {i["profile"] for i in _plan("--tile-count", "1000", "--deadline", "1")["mix"]["items"]}


def test_run_config_precisions_replace_the_policy(tmp_path: Path) -> None:
    """`plan --config run.yaml` prices each class at the precision the run config gives it, as `run` would run it."""
    config = tmp_path / "run.yaml"
    config.write_text("window: 2\nnode_types:\n  cuda-T4: {precision: fp16}\n")
    report = _plan("--tile-count", "100", "--config", str(config), "--machines", "t4=5")
    rows = report["rows"]
    assert _row(rows, "t4", "fp16")["policy"] and not _row(rows, "t4", "fp32")["policy"]
    assert [(i["family"], i["precision"]) for i in report["fleet"]["items"]] == [("t4", "fp16")]
    config.write_text("node_types:\n  cuda-T4: {precision: fp8}\n")
    result = CliRunner().invoke(cli, ["plan", "--tile-count", "1", "--config", str(config)])
    assert result.exit_code == 2 and "node_types.cuda-T4.precision" in result.output


def test_a_spot_quota_brings_spot_in() -> None:
    """`--quota NAME:spot=N` alone lets the mix use that many spot machines of the type, shared by its offerings."""
    report = _plan("--tile-count", "1000000", "--deadline", "1", "--quota", "l4:spot=10", "--quota", "h100=0",
                   "--quota", "h200=0")
    spot = [(i["family"], i["machines"]) for i in report["mix"]["items"] if i["pricing"] == "spot"]
    assert {f for f, _ in spot} == {"l4"} and sum(n for _, n in spot) == 10


def test_plan_flags_are_checked() -> None:
    """Region and --tile-count exclude each other; a malformed quota is a one-line error."""
    runner = CliRunner()
    for args in (["--tile-count", "5", "--global"], [], ["--tile-count", "5", "--deadline", "1", "--quota", "x"]):
        result = runner.invoke(cli, ["plan", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error:")


def test_plot_draws_pngs_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """`plan --plot DIR` writes the two charts as PNG files, and replaces them only with --overwrite."""
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(cli, ["plan", "--tile-count", "1593480", "--plot", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    for name in ("plan-ms-per-pixel.png", "plan-cost.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    again = CliRunner().invoke(cli, ["plan", "--tile-count", "3", "--plot", str(tmp_path)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert CliRunner().invoke(cli, ["plan", "--tile-count", "3", "--plot", str(tmp_path), "--overwrite"]).exit_code == 0


def test_small_costs_read_at_their_scale() -> None:
    """A small region's dollars are not rounded to "$0k": every label keeps two significant figures or more."""
    from tessera_pipeline.plan.plots import usd_label

    assert [usd_label(v) for v in (0.0042, 0.23, 3.5, 641, 12_345, 641_900, 1_234_000)] == [
        "$0.0042", "$0.23", "$3.50", "$641", "$12.3k", "$641.9k", "$1.23M"]
    assert usd_label(None) == "-"


def test_write_profile_merges_timings(tmp_path: Path) -> None:
    """Calibrating again into the same file replaces that model/precision's timing and keeps the rest."""
    from tessera_pipeline.bench.calibrate import write_profile

    out = tmp_path / "p.yaml"
    other = _profile("other", 5, 1.0)
    write_profile(other, out)
    first = _profile("here", 10, 0.0)
    write_profile(first, out)
    v10 = first.model_copy(update={"timings": [Timing(model="v1.0", precision="fp32", seconds=7, pixels=100)]})
    write_profile(v10, out)
    newer = _profile("here", 8, 0.0)
    write_profile(newer, out)
    profiles = {p.name: p for p in load_profiles(out)}
    assert set(profiles) == {"other", "here"}
    assert {(t.model, t.precision, t.seconds) for t in profiles["here"].timings} == {("v1.0", "fp32", 7), ("v1.1", "bf16", 8)}


def _small_model(version: str = "v1.1", seed: int = 0) -> LoadedModel:
    """A one-layer v1.1-shaped model with random weights: the calibration wiring at a fraction of the time."""
    torch.manual_seed(seed)
    cfg = v1_1_config(latent_dim=128, n_layers=1, d_ff=512)
    return LoadedModel(model=build_model(cfg).requires_grad_(False), config=cfg, checkpoint_sha256="random-weights",
                       source="small random v1.1")


def test_calibrated_profile_feeds_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench --calibrate --out` writes a profile of this machine that `plan --profiles` prices and times.

    The model is a one-layer v1.1 shape so the test stays fast; the command path, timings, start-up,
    store commit and the file format are the real ones.
    """
    monkeypatch.setattr(encoder_bench, "random_model", _small_model)
    out = tmp_path / "here.yaml"
    result = CliRunner().invoke(cli, ["bench", "--calibrate", "--size", "8x8", "--out", str(out), "--name", "here",
                                      "--price", "0.5"])
    assert result.exit_code == 0, result.output
    (profile,) = load_profiles(out)
    assert profile.name == "here" and profile.usd_per_hour == 0.5 and profile.startup_s > 0
    (timing,) = profile.timings
    assert timing.model == "v1.1" and timing.pixels == 64 and timing.seconds > 0
    assert profile.basis == "measured" and timing.tokens_per_pixel and profile.overhead_source
    assert profile.measured_on["kernels"] == encode_settings(detect()).kernels  # what `run`'s actors run
    report = _plan("--tile-count", "4", "--pixels-per-tile", "64", "--profiles", str(out), "--no-builtin",
                   "--machines", "here=1")
    expected = profile.startup_s + 4 * (timing.tile_seconds(64) + profile.tile_overhead_s)
    assert report["fleet"]["wall_s"] == pytest.approx(expected)
    assert np.isfinite(report["fleet"]["usd_total"])


def test_every_row_names_its_basis_and_the_h200_row_is_the_bench_figure() -> None:
    """Rows say measured / projected / published; the measured H200 row is docs/benchmarks.md's full-tile figure."""
    report = _plan("--tile-count", "1", "--pixels-per-tile", "776940", "--model", "v1.1")
    rows = report["rows"]
    assert {r["basis"] for r in rows} == {"measured", "projected", "published"}
    h200 = _row(rows, "h200", "bf16")
    assert h200["basis"] == "measured" and h200["policy"]
    assert h200["seconds_per_tile"] == pytest.approx(11.46, rel=0.05)  # steady state, one H200, 2026-11-28
    for name, sources in report["sources"].items():
        assert sources["basis"] and sources["price_source"], name
        assert all(t["source"] for t in sources["timings"].values()), name
    assert report["work"] == {"tiles": 1, "pixels": 776_940, "mean_pixels_per_tile": 776_940.0,
                              "source": "776,940 pixels per tile (given)"}


def test_a_projection_scales_by_datasheet_peak_and_bandwidth() -> None:
    """A card with twice the base's peak and bandwidth takes half its time; the built-in ones are all projected from the H200."""
    from tessera_pipeline.plan.profiles import Datasheet, Projection, project

    sheet = Datasheet(peak_tflops={"bf16": 100}, bandwidth_gbs=1000, source="test")
    base = Profile(name="base", hw_class="cuda-X", datasheet=sheet, startup_s=3,
                   timings=[Timing(model="v1.1", precision="bf16", seconds=10, pixels=100)])
    twice = Profile(name="twice", hw_class="cuda-Y", basis="projected",
                    datasheet=Datasheet(peak_tflops={"bf16": 200}, bandwidth_gbs=2000, source="test"),
                    projection=Projection(base="base", precisions={"bf16": "bf16"}, compute_share={"bf16": 0.6},
                                          efficiency=1.0, reason="test"))
    projected = project(base, twice)
    assert projected.timing("v1.1", "bf16").seconds == pytest.approx(5) and projected.startup_s == 3
    assert project(base, twice.model_copy(update={"projection": twice.projection.model_copy(
        update={"efficiency": 0.5})})).timing("v1.1", "bf16").seconds == pytest.approx(10)
    profiles = {p.name: p for p in builtin_profiles()}
    for name in ("l4", "l40s", "a10", "a100", "h100", "t4"):
        assert profiles[name].basis == "projected" and profiles[name].projection.base == "h200"
        assert all(t.source.startswith("projected: h200") for t in profiles[name].timings)
    assert profiles["d16s-v6-amx"].basis == "projected" and profiles["h200"].basis == "measured"


def test_t4_runs_fp32_and_fp16_is_a_projected_option() -> None:
    """The T4's run precision is fp32; its fp16 row is shown as an option (projected), never as the run's."""
    rows = _plan_json("--tile-count", "1")
    assert _row(rows, "t4", "fp32")["policy"] and _row(rows, T4, "fp32")["policy"]
    fp16 = _row(rows, "t4", "fp16")
    assert not fp16["policy"] and fp16["basis"] == "projected"


def test_a_profile_without_the_runs_precision_is_never_marked_as_the_runs(tmp_path: Path) -> None:
    """A T4 timed only in bf16: its row is an option, and fleets leave it out (no fallback priced as the run)."""
    path = tmp_path / "p.yaml"
    path.write_text(dump_profiles([Profile(name="t4-bf16", hw_class="cuda-T4", usd_per_hour=1.0,
                                           timings=[Timing(model="v1.1", precision="bf16", seconds=100, pixels=100)])]))
    report = _plan("--tile-count", "10", "--profiles", str(path), "--no-builtin", "--deadline", "1")
    assert [r["policy"] for r in report["rows"]] == [False]
    assert report["mix"]["items"] == [] and not report["mix"]["meets_deadline"]


def test_a_global_deadline_gives_the_cheapest_fleet_and_the_whole_bill() -> None:
    """`plan --global --deadline 30 --spot` with inputs in another region: compute, evictions, storage, requests,
    egress, each from a stated assumption carried in the JSON."""
    report = _plan("--global", "--deadline", "30", "--spot", "--input-region", "us-west-2", "--compute-region", "eu-west-1")
    mix, work, assumed = report["mix"], report["work"], report["assumptions"]
    assert mix["meets_deadline"] and mix["wall_days"] <= 30
    assert {i["basis"] for i in mix["items"]} <= {"measured", "projected"}
    assert work["tiles"] == 1_598_651 and work["pixels"] > 1.4e12
    bill = mix["bill"]
    assert bill["storage_tb"] == pytest.approx(work["pixels"] * assumed["output_bytes_per_pixel"] / 1e12)
    assert bill["storage_usd_per_month"] == pytest.approx(bill["storage_tb"] * 1e3 * assumed["storage_usd_per_gb_month"])
    assert bill["storage_usd"] == pytest.approx(12 * bill["storage_usd_per_month"])  # a year of storage
    assert bill["put_requests"] == work["tiles"] * assumed["output_objects_per_tile"]
    assert bill["egress_usd"] > 0 and bill["egress_usd"] == pytest.approx(bill["input_tb"] * 1e3 * assumed["egress_usd_per_gb"])
    assert any(i["pricing"] == "spot" and i["eviction_share"] > 0 for i in mix["items"]) and bill["eviction_usd"] > 0
    assert bill["total_usd"] == pytest.approx(
        bill["compute_usd"] + bill["storage_usd"] + bill["requests_usd"] + bill["egress_usd"])
    for key in ("price_source", "output_bytes_source", "input_bytes_source", "evictions_source", "tokens_per_pixel"):
        assert assumed[key], key
    local = _plan("--tile-count", "1000", "--deadline", "30")["mix"]["bill"]
    assert local["egress_usd"] == 0 and local["eviction_usd"] == 0


def test_assumed_observations_per_pixel_scale_the_time() -> None:
    """Time is linear in observations: twice the H200 bench tile's observations, twice its seconds per pixel."""
    rows = _plan_json("--tile-count", "1", "--pixels-per-tile", "776940", "--tokens-per-pixel", str(2 * 117.8))
    h200 = _row(rows, "h200", "bf16")
    assert h200["tokens_factor"] == pytest.approx(2) and h200["seconds_per_tile"] == pytest.approx(2 * 11.46)
    assert _row(rows, T4, "fp32")["tokens_factor"] == 1  # published timings do not record theirs


def test_plan_is_a_pure_cost_model_below_bench_and_run() -> None:
    """No module of plan/ imports bench/ or run/ (they sit above it: bench writes profiles, run passes precisions in)."""
    import ast

    import tessera_pipeline.plan

    for path in Path(tessera_pipeline.plan.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(("tessera_pipeline.bench", "tessera_pipeline.run")), f"{path.name} imports {name}"


HARDWARE = ("cuda-H100", "cuda-H200", "cuda-L40S", "cuda-L4", "cuda-A10", "cuda-A100", "cuda-T4", "cpu-amx", "cpu-avx512bf16")


def test_a_global_year_is_priced_per_cloud_offering_from_the_price_table() -> None:
    """`plan --global --model v1.1 --json`: every hardware class's own (measured or projected) row carries the price
    table's $/h (per machine: the instance's over its GPUs), spot where the table has it, with source and date;
    `mix` is the cheapest fleet of the priced rows, and the cheapest per cloud is named."""
    from tessera_pipeline.plan.prices import load_prices

    table = load_prices()
    report = _plan("--global", "--model", "v1.1")
    rows = [r for r in report["rows"] if r["basis"] in ("measured", "projected") and r["policy"]]
    for hw_class in HARDWARE:
        mine = [r for r in rows if r["hw_class"] == hw_class]
        assert mine and all(r["usd_per_hour"] is not None and r["cloud"] for r in mine), hw_class
        assert any(r["price_date"] for r in mine), hw_class
        for r in mine:
            o = next(o for o in table.offerings if (o.cloud, o.instance) == (r["cloud"], r["instance"]))
            assert r["usd_per_hour"] == pytest.approx(o.on_demand / o.units) and o.hw_class == hw_class
            assert r["usd_per_hour_spot"] == (None if o.spot is None else pytest.approx(o.spot / o.units))
            assert table.sources[o.source].text in r["price_source"]
            assert r["price_date"] == table.sources[o.source].date
    nebius_h100 = next(r for r in rows if r["instance"] == "gpu-h100-sxm_1gpu")
    assert (nebius_h100["usd_per_hour"], nebius_h100["usd_per_hour_spot"]) == (2.95, 1.25)
    lambda_h100 = next(r for r in rows if r["instance"] == "gpu_8x_h100_sxm5")
    assert lambda_h100["usd_per_hour"] == pytest.approx(31.92 / 8)
    assert not any(r["instance"] == "c3-standard-8" for r in rows)  # 4 cores: holds no 8-core actor
    cheapest = min(rows, key=lambda r: r["usd_total"])
    mix = report["mix"]
    assert mix["meets_deadline"] and mix["items"][0]["profile"] == cheapest["profile"]
    assert mix["items"][0]["price_source"] == cheapest["price_source"]
    by_cloud = {(c["cloud"], c["pricing"]): c for c in report["cheapest_by_cloud"]}
    assert {"AWS", "Azure", "GCP"} <= {cloud for cloud, _ in by_cloud}
    for (cloud, pricing), c in by_cloud.items():
        field = "usd_total" if pricing == "on-demand" else "usd_total_spot"
        assert c["usd_total"] == min(r[field] for r in rows if r["cloud"] == cloud and r[field] is not None)
    mixes = {(m["cloud"], m["pricing"]): m for m in report["mixes"]}
    assert mixes[("all", "on-demand")]["bill"]["compute_usd"] == pytest.approx(mix["bill"]["compute_usd"])
    assert mixes[("all", "spot")]["bill"]["compute_usd"] < mix["bill"]["compute_usd"]
    text = CliRunner().invoke(cli, ["plan", "--tile-count", "1598651", "--model", "v1.1"]).output
    assert "cheapest per cloud" in text and all(cloud in text for cloud in ("AWS", "Azure", "GCP", "Nebius"))


def test_a_price_given_on_the_command_line_replaces_the_table() -> None:
    """`--price h100=1.0` prices the H100 at $1/h with no table offering left for it."""
    rows = [r for r in _plan("--tile-count", "10", "--price", "h100=1.0")["rows"] if r["family"] == "h100"]
    assert rows and all(r["usd_per_hour"] == 1.0 and r["cloud"] is None for r in rows)
    assert rows[0]["price_source"] == "given on the command line"


def test_published_rows_never_join_the_cheapest_fleet_beside_our_own_rows() -> None:
    """Upstream's published speed is not ours: even priced to be the cheapest of all, a published row of hardware we
    have a measured or projected row for stays out of every fleet `plan` names (overall and per cloud)."""
    report = _plan("--tile-count", "1598651", "--model", "v1.1", "--price", "azure-d16s-v6-amx=0.0001",
                   "--spot-price", "azure-nc8as-t4-v3=0.0001", "--spot")
    published = {r["profile"] for r in report["rows"] if r["basis"] == "published"}
    fleets = [report["mix"], *report["mixes"]]
    for fleet in fleets:
        assert fleet["items"], fleet
        assert not {i["profile"] for i in fleet["items"]} & published
        assert {i["basis"] for i in fleet["items"]} <= {"measured", "projected"}
    from tessera_pipeline.plan.prices import load_prices
    from tessera_pipeline.plan.profiles import price_profiles

    profiles = price_profiles([p.with_prices(0.0001, 0.0001) if p.basis == "published" else p for p in builtin_profiles()],
                              load_prices())
    options = build_options(profiles, "v1.1", spot=True)
    assert options and {o.profile.basis for o in options} <= {"measured", "projected"}
    mix = cheapest_mix(assumed_work(1_000_000), options, "v1.1", 30)
    assert mix.items and {i.basis for i in mix.items} <= {"measured", "projected"}


def test_cpu_rows_are_projected_from_upstreams_8_core_figure_for_both_models() -> None:
    """The AMX and AVX512-BF16 rows: upstream's published 8-core time x our per-FLOP ratio to upstream at 2 threads,
    the derivation in --json; v1.0 is priced and has a cheapest fleet too."""
    for model, upstream_s in (("v1.1", 1566), ("v1.0", 1051)):
        report = _plan("--tile-count", "1000", "--pixels-per-tile", "776940", "--model", model)
        for name in ("d16s-v6-amx", "avx512bf16-8c"):
            row = _row(report["rows"], name, "bf16")
            d = row["derivation"]
            assert row["basis"] == "projected" and row["policy"] and row["usd_per_hour"] and row["price_date"]
            assert d["upstream_8core_s"] == upstream_s
            assert row["seconds_per_tile"] == pytest.approx(upstream_s * d["ratio_ours_over_upstream"], rel=1e-3)
            assert report["sources"][row["profile"]]["timings"][f"{model} bf16"]["derivation"] == d
        assert report["mix"]["meets_deadline"] and report["mix"]["items"]
